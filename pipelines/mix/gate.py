"""check_mix: every split's manifest and balanced stats, enough records in each blend, no held-out id in a
blend, a sane record sample, and realised shares within tolerance of the targets (per source and, with the
searched mixture, per domain); no record a removal request (filter.takedown) names."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipelines import stages
from pipelines.checks import inputs
from pipelines.checks.gx_runner import import_gx
from pipelines.checks.suites import (
    Batch, GatePlan, readable, record_expectations, sample_rows, stage_checks, stats_expectations,
)
from pipelines.core.runner import STATS
from pipelines.filter import takedown
from pipelines.mix.report import blend_rows

MIX_SPLITS = ("phase1", "phase2", "heldout")
MIX_BLENDS = ("phase1", "phase2")
DEFAULT_SHARE_TOLERANCE = 0.05


def plan(params: dict, root: Path) -> GatePlan:
    E = import_gx().expectations
    cfg = stage_checks(params, "mix")
    mix_dir = stages.output_dir("mix", root)
    gate = GatePlan()
    gate.file_checks.append(inputs.file_exists(mix_dir / "blend.json", root))
    split_dirs = {s: mix_dir / s for s in MIX_SPLITS}
    present = {s: d for s, d in split_dirs.items() if d.is_dir()}
    # The stage's manifest covers the accounting, every split's shards and blend.json.
    gate.file_checks.append(inputs.verify_manifest(mix_dir, root, params))

    # data/mix/_stats.parquet: the accounting of every input record (pool + heldout + excluded).
    stats = readable(gate, "stats", mix_dir / STATS, root, lambda: inputs.stats_frame(mix_dir))
    if stats is not None:
        gate.batches.append(Batch("stats", stats, stats_expectations(), ["shard"]))
    for split, d in sorted(present.items()):  # each split is a stage directory with its own stats
        if (d / STATS).exists():
            split_stats = readable(gate, "stats", d / STATS, root, lambda d=d: inputs.stats_frame(d))
            if split_stats is not None:
                gate.batches.append(Batch(f"stats_{split}", split_stats, stats_expectations(), ["shard"]))

    splits = readable(gate, "records", mix_dir, root, lambda: pd.DataFrame([
        {"split": s, "records": inputs.count_records(d),
         "blend_records": inputs.count_records(d) if s in MIX_BLENDS else None}
        for s, d in sorted(present.items())
    ], columns=["split", "records", "blend_records"]))
    if splits is not None:
        split_checks = [E.ExpectColumnValuesToBeBetween(column="records", min_value=1)]
        if cfg.get("min_records") is not None:
            split_checks.append(E.ExpectColumnValuesToBeBetween(column="blend_records", min_value=int(cfg["min_records"])))
        gate.batches.append(Batch("splits", splits, split_checks, ["split"]))

    ids = readable(gate, "records", mix_dir, root, lambda: _heldout_vs_blend_ids(present))
    if ids is not None:
        gate.batches.append(Batch("heldout_vs_blend_ids", ids, [E.ExpectColumnValuesToBeUnique(column="id")], ["side"]))

    sample = readable(gate, "records", mix_dir, root, lambda: inputs.sample_records(
        [present[s] for s in MIX_SPLITS if s in present], sample_rows(params)))
    if sample is not None:
        # A blend may repeat a record (upsampling), so ids need not be unique in its sample.
        gate.batches.append(Batch("sample", sample, record_expectations(sample.columns, unique_ids=False), ["id"]))

    blend = inputs.load_json(mix_dir / "blend.json")
    rows = blend_rows(blend) if blend is not None else []
    if rows:
        tolerance = float(cfg.get("share_tolerance", DEFAULT_SHARE_TOLERANCE))
        frame = pd.DataFrame(rows)
        gate.batches.append(Batch("blend_shares", frame, [
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
        gate.batches.append(Batch("domain_shares", pd.DataFrame(domain_rows), [
            E.ExpectColumnValuesToBeBetween(column="share_error", min_value=0, max_value=tolerance)],
            ["phase", "domain"]))
    # What training reads must not hold a taken-down record (the filter removed them; this proves it).
    takedown.check_none_remain(gate, [present[s] for s in MIX_SPLITS if s in present], params, root)
    return gate


def _heldout_vs_blend_ids(present: dict[str, Path]) -> pd.DataFrame:
    """Heldout ids must never be trained on: each distinct id listed once per side, so a repeat is a leak."""
    blend_ids = inputs.id_frame([present[s] for s in MIX_BLENDS if s in present])
    heldout_ids = inputs.id_frame([present["heldout"]]) if "heldout" in present else pd.Series([], dtype=object)
    return pd.DataFrame({
        "id": pd.concat([heldout_ids, blend_ids], ignore_index=True),
        "side": ["heldout"] * len(heldout_ids) + ["blend"] * len(blend_ids),
    })
