"""check_pack: every file matches the manifest; per phase, the token arrays, index.json, lineage.parquet
and pack.json agree to the token (padding only as a tail, every document whole, no needless splits), the
fill ratio is above its floor, and each source's token share is near its share of the blend. A warning
(not a failure) when the mixture audit's inferred source shares are more than ``pack.mixture_audit.warn_at``
from the tokenizer sample's."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipelines import stages
from pipelines.checks import inputs
from pipelines.checks.gx_runner import import_gx
from pipelines.checks.suites import Batch, GatePlan, stage_checks
from pipelines.pack.config import mixture_audit_config
from pipelines.pack.measure import measure_phase, phase_summaries, token_share_rows
from pipelines.pack.mixture_audit import mixture_warning

PACK_PHASES = ("phase1", "phase2")

PHASE_COLUMNS = ["phase", "problem", "n_seq", "seq_len", "tokens_index", "tokens_counted", "fill_ratio",
                 "token_mismatch", "n_seq_mismatch", "lineage_mismatch", "summary_token_mismatch", "summary_fill_ratio",
                 "padding_mismatch", "pad_not_tail", "lineage_gaps", "incomplete_docs", "needless_splits"]
PACK_SHARE_TOLERANCE = 0.1  # token vs character share: sources differ in characters per token
SHARD_COLUMNS = ["phase", "file", "rows", "cols", "problem"]


def plan(params: dict, root: Path) -> GatePlan:
    E = import_gx().expectations
    cfg = stage_checks(params, "pack")
    pack_dir = stages.output_dir("pack", root)
    # The manifest lists every token shard, index, lineage and tokenizer file with its sha256.
    gate = GatePlan(file_checks=[inputs.file_exists(pack_dir / "pack.json", root),
                                 inputs.verify_manifest(pack_dir, root, params)])
    pack_summary = inputs.load_json(pack_dir / "pack.json")
    summaries = phase_summaries(pack_summary)
    phase_rows, shard_rows = [], []
    for phase in PACK_PHASES:
        row, shards = measure_phase(pack_dir / phase, phase, summaries.get(phase))
        phase_rows.append(row)
        shard_rows += shards
    phases = pd.DataFrame(phase_rows, columns=PHASE_COLUMNS)
    shards = pd.DataFrame(shard_rows, columns=SHARD_COLUMNS)
    floor = float(cfg.get("min_fill_ratio", 0.0))
    gate.batches.append(Batch("phases", phases, [
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
    blend = inputs.load_json(stages.output_dir("mix", root) / "blend.json")
    shares = token_share_rows(pack_dir, PACK_PHASES, blend) if blend is not None else []
    if shares:
        tolerance = float(cfg.get("share_tolerance", PACK_SHARE_TOLERANCE))
        gate.batches.append(Batch("token_shares", pd.DataFrame(shares), [
            E.ExpectColumnValuesToBeBetween(column="share_error", min_value=0, max_value=tolerance),
        ], ["phase", "source"]))
    mixture = pack_summary.get("mixture_audit") if isinstance(pack_summary, dict) else None
    warning = mixture_warning(mixture, mixture_audit_config((params.get("pack") or {}).get("mixture_audit"))["warn_at"])
    if warning:
        gate.warnings.append(warning)
    gate.batches.append(Batch("token_shards", shards, [
        E.ExpectTableRowCountToBeBetween(min_value=1),
        E.ExpectColumnValuesToBeNull(column="problem"),
    ], ["file"]))
    return gate
