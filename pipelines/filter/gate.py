"""check_filter: the standard record checks, a floor on the keep rate, a ceiling on any one rule's drop
rate, the fastText percentile keeping its target share of the web input, and no record left that a
removal request (filter.takedown) names."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipelines import stages
from pipelines.checks import inputs
from pipelines.checks.gx_runner import import_gx
from pipelines.checks.suites import Batch, GatePlan, recorded, stage_checks, standard_plan, totals_batch
from pipelines.core.manifest import MANIFEST
from pipelines.filter import takedown


def plan(params: dict, root: Path) -> GatePlan:
    E = import_gx().expectations
    cfg = stage_checks(params, "filter")
    gate, stats = standard_plan("filter", params, root)
    if stats is not None:
        def rates(totals):
            out = []
            if cfg.get("min_keep_rate") is not None:
                out.append(E.ExpectColumnMinToBeBetween(column="keep_rate", min_value=float(cfg["min_keep_rate"])))
            if cfg.get("max_rule_rate") is not None:
                out += [E.ExpectColumnMaxToBeBetween(column=c, max_value=float(cfg["max_rule_rate"]))
                        for c in totals.columns if c.startswith("rule_rate__")]
            return out
        gate.batches.append(totals_batch(stats, rates))
    _quality_keep(gate, params, stages.output_dir("filter", root), root)
    takedown.check_none_remain(gate, [stages.output_dir("filter", root)], params, root)
    return gate


def _quality_keep(gate: GatePlan, params: dict, stage_dir: Path, root: Path) -> None:
    """The fastText percentile keeps its target share of the web records that reach it (those the rules kept):
    |achieved - target| <= tolerance + 1 / records + the sketch's rank error."""
    qcfg = ((params.get("filter") or {}).get("quality_model")) or {}
    tolerance = stage_checks(params, "filter").get("quality_keep_tolerance")
    if not qcfg.get("enabled", True) or tolerance is None:
        return
    quality = (inputs.load_json(stage_dir / MANIFEST) or {}).get("quality")
    if quality is None:
        return  # output written without the model (no web records, or by another filter): nothing to check
    if quality.get("achieved_keep_fraction") is None:
        recorded(gate, "quality_recorded", stage_dir / MANIFEST, root, "no quality.achieved_keep_fraction in the manifest")
        return
    target = float(quality["target_keep_fraction"])
    # Beyond the tolerance: one record of granularity (n records keep in steps of 1/n) and the sketch's rank error.
    bound = float(tolerance) + 1.0 / max(int(quality.get("web_records") or 1), 1) + float(quality.get("rank_error_bound") or 0)
    frame = pd.DataFrame([{"rule": "quality_fasttext", "achieved_keep_fraction": float(quality["achieved_keep_fraction"])}])
    gate.batches.append(Batch("quality_keep", frame, [import_gx().expectations.ExpectColumnValuesToBeBetween(
        column="achieved_keep_fraction", min_value=target - bound, max_value=target + bound)], ["rule"]))
