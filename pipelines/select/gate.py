"""check_select: the standard record checks, a quality score in [0, 1] on every record, and (with DSIR)
a selection that moved towards its target distribution."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipelines import stages
from pipelines.checks import inputs
from pipelines.checks.gx_runner import import_gx
from pipelines.checks.suites import Batch, GatePlan, recorded, stage_checks, standard_plan
from pipelines.core.manifest import MANIFEST

QUALITY_COLUMN = "quality_score"


def plan(params: dict, root: Path) -> GatePlan:
    E = import_gx().expectations
    gate, _ = standard_plan("select", params, root, record_checks=(
        E.ExpectColumnValuesToNotBeNull(column=QUALITY_COLUMN),
        E.ExpectColumnValuesToBeBetween(column=QUALITY_COLUMN, min_value=0, max_value=1)))
    _kl_reduction(gate, params, stages.output_dir("select", root), root)
    return gate


def _kl_reduction(gate: GatePlan, params: dict, stage_dir: Path, root: Path) -> None:
    """DSIR must move the selection towards its target: KL reduction > checks.select.min_kl_reduction."""
    if ((params.get("select") or {}).get("method")) != "dsir":
        return
    kl = ((inputs.load_json(stage_dir / MANIFEST) or {}).get("selection") or {}).get("kl_reduction")
    if kl is None:
        recorded(gate, "selection_recorded", stage_dir / MANIFEST, root, "no selection.kl_reduction in the manifest")
        return
    floor = float(stage_checks(params, "select").get("min_kl_reduction", 0.0))
    frame = pd.DataFrame([{"method": "dsir", "kl_reduction": float(kl)}])
    gate.batches.append(Batch("selection", frame, [import_gx().expectations.ExpectColumnValuesToBeBetween(
        column="kl_reduction", min_value=floor, strict_min=True)], ["method"]))
