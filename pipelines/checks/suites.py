"""What each gate expects: frames of a stage's output, each with a list of GX expectations.

A gate plan is a list of :class:`Batch` (a frame + its expectations, validated
by GX) and plain-Python file checks (manifest hashes, required files). All
thresholds come from ``params.checks``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa

from pipelines.checks import inputs
from pipelines.checks.blend import blend_rows
from pipelines.checks.gx_runner import import_gx
from pipelines.checks.packed import measure_phase, phase_summaries, token_share_rows
from pipelines.checks.results import CheckResult
from pipelines.core.manifest import MANIFEST
from pipelines.core.stage import STATS

STANDARD_STAGES = ("ingest", "filter", "dedup", "select")
REQUIRED_COLUMNS = ["id", "url", "source", "text"]
QUALITY_COLUMN = "quality_score"
MIX_SPLITS = ("phase1", "phase2", "heldout")
MIX_BLENDS = ("phase1", "phase2")
PACK_PHASES = ("phase1", "phase2")
DEFAULT_SHARE_TOLERANCE = 0.05


@dataclass
class Batch:
    name: str  # GX asset/suite name, e.g. "stats"
    frame: pd.DataFrame
    expectations: list
    index_columns: list[str] = field(default_factory=list)  # name failing rows by these columns


@dataclass
class GatePlan:
    batches: list[Batch] = field(default_factory=list)
    file_checks: list[CheckResult] = field(default_factory=list)


def stage_checks(params: dict, stage: str) -> dict:
    return ((params.get("checks") or {}).get(stage)) or {}


def sample_rows(params: dict) -> int:
    return int((params.get("checks") or {}).get("sample_rows", 500))


def _readable(plan: GatePlan, what: str, path: Path, root: Path, load):
    """Run ``load()``; an unreadable input becomes a failed check instead of a traceback."""
    try:
        return load()
    except (OSError, ValueError, KeyError, pa.ArrowException) as e:
        plan.file_checks.append(CheckResult(batch="files", type=f"{what}_readable", column=None,
                                            kwargs={"path": inputs.rel(path, root)}, success=False,
                                            observed=f"{type(e).__name__}: {e}"))
        return None


# --- shared expectation lists ----------------------------------------------------------------------

def stats_expectations(min_records=None, unique_shards: bool = True) -> list:
    gx = import_gx()
    E = gx.expectations
    out = [
        E.ExpectTableRowCountToBeBetween(min_value=1),
        # records_in == records_out + records_dropped on every shard.
        E.ExpectColumnValuesToBeBetween(column="unaccounted", min_value=0, max_value=0),
        E.ExpectColumnValuesToBeBetween(column="records_out", min_value=0),
    ]
    if unique_shards:
        out.append(E.ExpectColumnValuesToBeUnique(column="shard"))
    if min_records is not None:
        out.append(E.ExpectColumnSumToBeBetween(column="records_out", min_value=int(min_records)))
    return out


def record_expectations(columns, unique_ids: bool = True) -> list:
    gx = import_gx()
    E = gx.expectations
    out = [
        E.ExpectTableColumnsToMatchSet(column_set=REQUIRED_COLUMNS, exact_match=False),
        E.ExpectTableRowCountToBeBetween(min_value=1),
        E.ExpectColumnValuesToNotBeNull(column="id"),
        E.ExpectColumnValuesToNotBeNull(column="source"),
        E.ExpectColumnValuesToNotBeNull(column="text"),
        E.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1),
    ]
    if unique_ids:
        out.append(E.ExpectColumnValuesToBeUnique(column="id"))
    if "lang_score" in columns:
        out.append(E.ExpectColumnValuesToBeBetween(column="lang_score", min_value=0, max_value=1))
    return out


# --- ingest / filter / dedup / select --------------------------------------------------------------

def standard_plan(stage: str, params: dict, root: Path) -> GatePlan:
    gx = import_gx()
    E = gx.expectations
    cfg = stage_checks(params, stage)
    stage_dir = root / "data" / stage
    plan = GatePlan()
    if not stage_dir.is_dir():
        plan.file_checks.append(inputs.file_exists(stage_dir, root))
        return plan
    plan.file_checks.append(inputs.verify_manifest(stage_dir, root))

    stats = _readable(plan, "stats", stage_dir / STATS, root, lambda: inputs.stats_frame(stage_dir))
    if stats is not None:
        plan.batches.append(Batch("stats", stats, stats_expectations(cfg.get("min_records")), ["shard"]))
        totals = inputs.totals_frame(stats)
        rate_checks = []
        if stage == "filter":
            if cfg.get("min_keep_rate") is not None:
                rate_checks.append(E.ExpectColumnMinToBeBetween(column="keep_rate", min_value=float(cfg["min_keep_rate"])))
            if cfg.get("max_rule_rate") is not None:
                rate_checks += [E.ExpectColumnMaxToBeBetween(column=c, max_value=float(cfg["max_rule_rate"]))
                                for c in totals.columns if c.startswith("rule_rate__")]
        if stage == "dedup" and cfg.get("max_dup_rate") is not None:
            # Every drop of the dedup stage is a duplicate (exact or near).
            rate_checks.append(E.ExpectColumnMaxToBeBetween(column="drop_rate", max_value=float(cfg["max_dup_rate"])))
        if rate_checks:
            plan.batches.append(Batch("totals", totals, rate_checks))

    sample = _readable(plan, "records", stage_dir, root, lambda: inputs.sample_records([stage_dir], sample_rows(params)))
    if sample is not None:
        expectations = record_expectations(sample.columns)
        if stage == "select":
            expectations.append(E.ExpectColumnValuesToNotBeNull(column=QUALITY_COLUMN))
            expectations.append(E.ExpectColumnValuesToBeBetween(column=QUALITY_COLUMN, min_value=0, max_value=1))
        plan.batches.append(Batch("sample", sample, expectations, ["id"]))

    if stage == "select":
        _select_kl_gate(plan, params, stage_dir, root)
    if stage == "filter":
        _filter_quality_gate(plan, params, stage_dir, root)

    if stage == "dedup":
        # Artifacts beside the shards (the semantic-dedup embedding cache) are covered by the manifest hashes too.
        artifacts = (inputs.load_json(stage_dir / MANIFEST) or {}).get("artifacts") or {}
        if artifacts:
            plan.file_checks.append(inputs.verify_file_hashes(
                stage_dir, {name: (entry or {}).get("sha256") for name, entry in artifacts.items()},
                inputs.rel(stage_dir / MANIFEST, root), root))
        exact = ((params.get("dedup") or {}).get("exact")) or {}
        hashes = _readable(plan, "records", stage_dir, root, lambda: inputs.text_hash_frame(
            stage_dir, bool(exact.get("lowercase", True)), bool(exact.get("strip_punctuation", True))))
        if hashes is not None:
            plan.batches.append(Batch("text_hashes", hashes, [E.ExpectColumnValuesToBeUnique(column="text_hash")], ["id"]))
        decontam = ((params.get("dedup") or {}).get("decontam")) or {}
        if decontam.get("enabled") and decontam.get("mode", "drop") == "drop":
            # Every kept record (not a sample) is re-matched against the eval sets: none may be contaminated.
            from pipelines.dedup.decontam import contaminated_records

            flagged = _readable(plan, "records", stage_dir, root, lambda: contaminated_records(stage_dir, decontam, root))
            if flagged is not None:
                plan.batches.append(Batch("contamination", flagged,
                                          [E.ExpectColumnValuesToBeNull(column="contamination")], ["id"]))
    return plan


def _filter_quality_gate(plan: GatePlan, params: dict, stage_dir: Path, root: Path) -> None:
    """The fastText percentile keeps its target share of the web input: |achieved - target| <= tolerance."""
    qcfg = ((params.get("filter") or {}).get("quality_model")) or {}
    tolerance = stage_checks(params, "filter").get("quality_keep_tolerance")
    if not qcfg.get("enabled", True) or tolerance is None:
        return
    gx = import_gx()
    quality = (inputs.load_json(stage_dir / MANIFEST) or {}).get("quality")
    if quality is None:
        return  # output written without the model (no web records, or by another filter): nothing to check
    if quality.get("achieved_keep_fraction") is None:
        plan.file_checks.append(CheckResult(batch="files", type="quality_recorded", column=None,
                                            kwargs={"path": inputs.rel(stage_dir / MANIFEST, root)}, success=False,
                                            observed="no quality.achieved_keep_fraction in the manifest"))
        return
    target = float(quality["target_keep_fraction"])
    frame = pd.DataFrame([{"rule": "quality_fasttext", "achieved_keep_fraction": float(quality["achieved_keep_fraction"])}])
    plan.batches.append(Batch("quality_keep", frame, [gx.expectations.ExpectColumnValuesToBeBetween(
        column="achieved_keep_fraction", min_value=target - float(tolerance), max_value=target + float(tolerance))],
        ["rule"]))


def _select_kl_gate(plan: GatePlan, params: dict, stage_dir: Path, root: Path) -> None:
    """DSIR must move the selection towards its target: KL reduction > checks.select.min_kl_reduction."""
    if ((params.get("select") or {}).get("method")) != "dsir":
        return
    gx = import_gx()
    manifest = inputs.load_json(stage_dir / MANIFEST) or {}
    kl = (manifest.get("selection") or {}).get("kl_reduction")
    if kl is None:
        plan.file_checks.append(CheckResult(batch="files", type="selection_recorded", column=None,
                                            kwargs={"path": inputs.rel(stage_dir / MANIFEST, root)}, success=False,
                                            observed="no selection.kl_reduction in the manifest"))
        return
    floor = float(stage_checks(params, "select").get("min_kl_reduction", 0.0))
    frame = pd.DataFrame([{"method": "dsir", "kl_reduction": float(kl)}])
    plan.batches.append(Batch("selection", frame, [gx.expectations.ExpectColumnValuesToBeBetween(
        column="kl_reduction", min_value=floor, strict_min=True)], ["method"]))


# --- mix -------------------------------------------------------------------------------------------

def mix_plan(params: dict, root: Path) -> GatePlan:
    gx = import_gx()
    E = gx.expectations
    cfg = stage_checks(params, "mix")
    mix_dir = root / "data" / "mix"
    plan = GatePlan()
    plan.file_checks.append(inputs.file_exists(mix_dir / "blend.json", root))
    split_dirs = {s: mix_dir / s for s in MIX_SPLITS}
    present = {s: d for s, d in split_dirs.items() if d.is_dir()}
    if (mix_dir / MANIFEST).exists():
        plan.file_checks.append(inputs.verify_manifest(mix_dir, root))
    for split, d in split_dirs.items():
        plan.file_checks.append(inputs.verify_manifest(d, root) if d.is_dir() else inputs.file_exists(d, root))

    # data/mix/_stats.parquet: the accounting of every input record (pool + heldout + excluded).
    stats = _readable(plan, "stats", mix_dir / STATS, root, lambda: inputs.stats_frame(mix_dir))
    if stats is not None:
        plan.batches.append(Batch("stats", stats, stats_expectations(), ["shard"]))
    for split, d in sorted(present.items()):  # each split is a stage directory with its own stats
        if (d / STATS).exists():
            split_stats = _readable(plan, "stats", d / STATS, root, lambda d=d: inputs.stats_frame(d))
            if split_stats is not None:
                plan.batches.append(Batch(f"stats_{split}", split_stats, stats_expectations(), ["shard"]))

    splits = _readable(plan, "records", mix_dir, root, lambda: pd.DataFrame([
        {"split": s, "records": inputs.count_records(d),
         "blend_records": inputs.count_records(d) if s in MIX_BLENDS else None}
        for s, d in sorted(present.items())
    ], columns=["split", "records", "blend_records"]))
    if splits is not None:
        split_checks = [E.ExpectColumnValuesToBeBetween(column="records", min_value=1)]
        if cfg.get("min_records") is not None:
            split_checks.append(E.ExpectColumnValuesToBeBetween(column="blend_records", min_value=int(cfg["min_records"])))
        plan.batches.append(Batch("splits", splits, split_checks, ["split"]))

    ids = _readable(plan, "records", mix_dir, root, lambda: _heldout_vs_blend_ids(present))
    if ids is not None:
        plan.batches.append(Batch("heldout_vs_blend_ids", ids, [E.ExpectColumnValuesToBeUnique(column="id")], ["side"]))

    sample = _readable(plan, "records", mix_dir, root, lambda: inputs.sample_records(
        [present[s] for s in MIX_SPLITS if s in present], sample_rows(params)))
    if sample is not None:
        # A blend may repeat a record (upsampling), so ids need not be unique in its sample.
        plan.batches.append(Batch("sample", sample, record_expectations(sample.columns, unique_ids=False), ["id"]))

    blend = inputs.load_json(mix_dir / "blend.json")
    rows = blend_rows(blend) if blend is not None else []
    if rows:
        tolerance = float(cfg.get("share_tolerance", DEFAULT_SHARE_TOLERANCE))
        frame = pd.DataFrame(rows)
        plan.batches.append(Batch("blend_shares", frame, [
            E.ExpectColumnValuesToBeBetween(column="share", min_value=0, max_value=1),
            E.ExpectColumnValuesToBeBetween(column="share_error", min_value=0, max_value=tolerance),
        ], ["phase", "source"]))
    # Searched mixture: realised (char) shares per domain (curated source / web cluster) in each phase.
    phases = ((blend or {}).get("phases") or {}) if isinstance(blend, dict) else {}
    domain_rows = [{"phase": ph, "domain": d, "share": float(v["share"]), "target_share": float(v["target_share"]),
                    "share_error": abs(float(v["share"]) - float(v["target_share"]))}
                   for ph, info in sorted(phases.items()) if isinstance(info, dict)
                   for d, v in sorted((info.get("domains") or {}).items())]
    if domain_rows:
        tolerance = float(cfg.get("share_tolerance", DEFAULT_SHARE_TOLERANCE))
        plan.batches.append(Batch("domain_shares", pd.DataFrame(domain_rows), [
            E.ExpectColumnValuesToBeBetween(column="share_error", min_value=0, max_value=tolerance)],
            ["phase", "domain"]))
    return plan


def _heldout_vs_blend_ids(present: dict[str, Path]) -> pd.DataFrame:
    """Heldout ids must never be trained on: each distinct id listed once per side, so a repeat is a leak."""
    blend_ids = inputs.id_frame([present[s] for s in MIX_BLENDS if s in present])
    heldout_ids = inputs.id_frame([present["heldout"]]) if "heldout" in present else pd.Series([], dtype=object)
    return pd.DataFrame({
        "id": pd.concat([heldout_ids, blend_ids], ignore_index=True),
        "side": ["heldout"] * len(heldout_ids) + ["blend"] * len(blend_ids),
    })


# --- pack ------------------------------------------------------------------------------------------

PHASE_COLUMNS = ["phase", "problem", "n_seq", "seq_len", "tokens_index", "tokens_counted", "fill_ratio",
                 "token_mismatch", "n_seq_mismatch", "lineage_mismatch", "summary_token_mismatch", "summary_fill_ratio",
                 "padding_mismatch", "pad_not_tail", "lineage_gaps", "incomplete_docs", "needless_splits"]
PACK_SHARE_TOLERANCE = 0.1  # token vs character share: sources differ in characters per token
SHARD_COLUMNS = ["phase", "file", "rows", "cols", "problem"]


def pack_plan(params: dict, root: Path) -> GatePlan:
    gx = import_gx()
    E = gx.expectations
    cfg = stage_checks(params, "pack")
    pack_dir = root / "data" / "pack"
    plan = GatePlan()
    plan.file_checks.append(inputs.file_exists(pack_dir / "pack.json", root))
    summary = inputs.load_json(pack_dir / "pack.json")
    if isinstance(summary, dict) and isinstance(summary.get("files"), dict):
        # pack.json lists every output file with its sha256: pack's manifest.
        plan.file_checks.append(inputs.verify_file_hashes(pack_dir, summary["files"], inputs.rel(pack_dir / "pack.json", root), root))
    summaries = phase_summaries(summary)
    phase_rows, shard_rows = [], []
    for phase in PACK_PHASES:
        row, shards = measure_phase(pack_dir / phase, phase, summaries.get(phase))
        phase_rows.append(row)
        shard_rows += shards
    phases = pd.DataFrame(phase_rows, columns=PHASE_COLUMNS)
    shards = pd.DataFrame(shard_rows, columns=SHARD_COLUMNS)
    floor = float(cfg.get("min_fill_ratio", 0.0))
    plan.batches.append(Batch("phases", phases, [
        E.ExpectColumnValuesToBeNull(column="problem"),
        E.ExpectColumnValuesToBeBetween(column="n_seq", min_value=1),
        E.ExpectColumnValuesToBeBetween(column="fill_ratio", min_value=floor, max_value=1),
        E.ExpectColumnValuesToBeBetween(column="summary_fill_ratio", min_value=floor, max_value=1),
        # index.json tokens == non-pad tokens in the arrays == tokens covered by lineage == pack.json tokens
        E.ExpectColumnValuesToBeBetween(column="token_mismatch", min_value=0, max_value=0),
        E.ExpectColumnValuesToBeBetween(column="n_seq_mismatch", min_value=0, max_value=0),
        E.ExpectColumnValuesToBeBetween(column="lineage_mismatch", min_value=0, max_value=0),
        E.ExpectColumnValuesToBeBetween(column="summary_token_mismatch", min_value=0, max_value=0),
        # tokens in = tokens out + padding; padding only as a tail; lineage tiles every sequence's real tokens;
        # every document packed whole; no document cut except into seq_len chunks (best fit).
        *[E.ExpectColumnValuesToBeBetween(column=c, min_value=0, max_value=0)
          for c in ("padding_mismatch", "pad_not_tail", "lineage_gaps", "incomplete_docs", "needless_splits")],
    ], ["phase"]))
    blend = inputs.load_json(root / "data" / "mix" / "blend.json")
    shares = token_share_rows(pack_dir, PACK_PHASES, blend) if blend is not None else []
    if shares:
        tolerance = float(cfg.get("share_tolerance", PACK_SHARE_TOLERANCE))
        plan.batches.append(Batch("token_shares", pd.DataFrame(shares), [
            E.ExpectColumnValuesToBeBetween(column="share_error", min_value=0, max_value=tolerance),
        ], ["phase", "source"]))
    plan.batches.append(Batch("token_shards", shards, [
        E.ExpectTableRowCountToBeBetween(min_value=1),
        E.ExpectColumnValuesToBeNull(column="problem"),
    ], ["file"]))
    return plan


def build_plan(stage: str, params: dict, root: Path) -> GatePlan:
    if stage in STANDARD_STAGES:
        return standard_plan(stage, params, root)
    if stage == "mix":
        return mix_plan(params, root)
    if stage == "pack":
        return pack_plan(params, root)
    raise ValueError(f"no gate for stage {stage!r}; known: {', '.join(STANDARD_STAGES + ('mix', 'pack'))}")
