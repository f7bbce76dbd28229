"""check_dedup: the standard record checks, a ceiling on the duplicate rate, no two kept records with the
same normalised text (every record, not a sample), no kept record matching an eval set, and the
decontamination coverage the manifest records (a warning naming each set with items too short to check;
a failure past ``checks.dedup.max_unchecked_share`` of a set's items)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from pipelines import stages
from pipelines.checks.gx_runner import import_gx
from pipelines.checks import inputs
from pipelines.checks.suites import Batch, GatePlan, readable, recorded, stage_checks, standard_plan, totals_batch
from pipelines.core.manifest import MANIFEST
from pipelines.core.shards import iter_batches, stage_shards
from pipelines.dedup.decontam import contaminated_records
from pipelines.dedup.normalize import normalize_text


def plan(params: dict, root: Path) -> GatePlan:
    E = import_gx().expectations
    cfg = stage_checks(params, "dedup")
    stage_dir = stages.output_dir("dedup", root)
    gate, stats = standard_plan("dedup", params, root)
    if stats is not None and cfg.get("max_dup_rate") is not None:
        # Every drop of the dedup stage is a duplicate (exact or near).
        gate.batches.append(totals_batch(stats, lambda totals: [
            E.ExpectColumnMaxToBeBetween(column="drop_rate", max_value=float(cfg["max_dup_rate"]))]))
    if not stage_dir.is_dir():
        return gate
    exact = ((params.get("dedup") or {}).get("exact")) or {}
    hashes = readable(gate, "records", stage_dir, root, lambda: text_hash_frame(
        stage_dir, bool(exact.get("lowercase", True)), bool(exact.get("strip_punctuation", True))))
    if hashes is not None:
        gate.batches.append(Batch("text_hashes", hashes, [E.ExpectColumnValuesToBeUnique(column="text_hash")], ["id"]))
    decontam = ((params.get("dedup") or {}).get("decontam")) or {}
    if decontam.get("enabled") and decontam.get("mode", "drop") == "drop":
        # Every kept record (not a sample) is re-matched against the eval sets: none may be contaminated.
        flagged = readable(gate, "records", stage_dir, root, lambda: contaminated_records(stage_dir, decontam, root))
        if flagged is not None:
            gate.batches.append(Batch("contamination", flagged,
                                      [E.ExpectColumnValuesToBeNull(column="contamination")], ["id"]))
    if decontam.get("enabled"):
        coverage_checks(gate, decontam, cfg, stage_dir, root)
    return gate


def coverage_checks(gate: GatePlan, decontam: dict, cfg: dict, stage_dir: Path, root: Path) -> None:
    """Per eval set, what decontamination could check (recorded by the stage in its manifest)."""
    E = import_gx().expectations
    sets = ((inputs.load_json(stage_dir / MANIFEST) or {}).get("decontam") or {}).get("sets") or {}
    missing = sorted(set(decontam.get("sets") or {}) - set(sets))
    if missing:
        recorded(gate, "decontam_coverage_recorded", stage_dir / MANIFEST, root,
                 f"no decontamination coverage for eval set(s) {missing}: the stage ran with other sets")
    if not sets:
        return
    frame = pd.DataFrame([{"benchmark": name, **{k: info[k] for k in ("items", "by_ngram", "by_whole", "too_short")}}
                          for name, info in sorted(sets.items())])
    frame["unchecked_share"] = frame["too_short"] / frame["items"].where(frame["items"] > 0, 1)
    ceiling = cfg.get("max_unchecked_share")
    gate.batches.append(Batch("decontam_coverage", frame, [E.ExpectColumnValuesToBeBetween(
        column="unchecked_share", min_value=0.0, max_value=1.0 if ceiling is None else float(ceiling))], ["benchmark"]))
    for row in frame[frame["too_short"] > 0].to_dict("records"):
        gate.warnings.append(f"decontamination of {row['benchmark']}: {row['too_short']} of {row['items']} items are "
                             f"too short to check (under dedup.decontam.min_words words)")


def text_hash_frame(stage_dir: Path, lowercase: bool = True, strip_punctuation: bool = True) -> pd.DataFrame:
    """``id`` and a hash of the normalised text of every record of the stage (not a sample).

    The normalisation is the dedup stage's own, so "duplicate" means what dedup promised to remove.
    """
    ids, hashes = [], []
    for ref in stage_shards(stage_dir, "dedup"):
        for batch in iter_batches(ref.uri, columns=["id", "text"]):
            ids.extend(batch.column("id").to_pylist())
            for text in batch.column("text").to_pylist():
                key = normalize_text(text or "", lowercase=lowercase, strip_punctuation=strip_punctuation)
                hashes.append(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest())
    return pd.DataFrame({"id": pd.Series(ids, dtype=object), "text_hash": pd.Series(hashes, dtype=object)})
