"""Filter stage: ``data/ingest`` -> ``data/filter``, shard to shard.

Each record goes through the rules in order (language, gopher_quality,
gopher_repetition); the first rule that fails drops it, with the rule name as
``drop_reason`` and the failed sub-check with its value as ``drop_detail``.
Records of ``filter.exempt_sources`` (curated text) skip the rules. Stats:
``drops`` per rule; ``extra`` counts each sub-check (``gopher_quality.gopher_short_doc``)
and the exempt records (``exempt``).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import resolve, section
from pipelines.core.hashing import params_hash, sha256_file
from pipelines.core.manifest import load_fragment
from pipelines.core.shards import list_shards, read_shard
from pipelines.core.stage import ShardResult, ShardTask, removed_table, run_shard_stage
from pipelines.core.stats import ShardStats, totals
from pipelines.filter.rules import RULE_NAMES, Doc, build_rules

log = logging.getLogger(__name__)
STAGE = "filter"
INPUT_DIR = "data/ingest"
OUTPUT_DIR = "data/filter"


def filter_table(table: pa.Table, rules: list, exempt: frozenset[str], stats: ShardStats) -> tuple[pa.Table, pa.Table]:
    """Split a record table into (kept, removed-with-reasons), counting into ``stats``."""
    texts = table.column("text").to_pylist()
    sources = table.column("source").to_pylist()
    langs = table.column("lang").to_pylist() if "lang" in table.column_names else [None] * table.num_rows
    scores = table.column("lang_score").to_pylist() if "lang_score" in table.column_names else [None] * table.num_rows
    keep = [True] * table.num_rows
    reasons, details = [], []
    for i, (text, source, lang, score) in enumerate(zip(texts, sources, langs, scores)):
        if source in exempt:
            stats.extra["exempt"] = stats.extra.get("exempt", 0) + 1
            continue
        doc = Doc(text, lang, score, source)
        for rule in rules:
            ok, detail = rule.check(doc)
            if not ok:
                keep[i] = False
                stats.drop(rule.name)
                key = f"{rule.name}.{detail['check']}"
                stats.extra[key] = stats.extra.get(key, 0) + 1
                reasons.append(rule.name)
                details.append(json.dumps(detail, sort_keys=True, ensure_ascii=False))
                break
    mask = pa.array(keep, pa.bool_())
    kept = table.filter(mask)
    removed = removed_table(table.filter(pc.invert(mask)), reasons, details)
    return kept, removed


def process_shard(task: ShardTask) -> ShardResult:
    table = read_shard(task.inputs[0])
    stats = ShardStats(shard=task.shard, records_in=table.num_rows)
    stats.bytes_in = int(pc.sum(pc.binary_length(table.column("text"))).as_py() or 0) if table.num_rows else 0
    stats.extra["exempt"] = 0
    rules = build_rules(task.params)
    kept, removed = filter_table(table, rules, frozenset(task.params.get("exempt_sources") or []), stats)
    return ShardResult(kept, removed, stats)


def make_tasks(params: dict, in_dir: Path, out_dir: Path) -> list[ShardTask]:
    cfg = section(params, STAGE)
    build_rules(cfg)  # bad params fail here, once, before any worker starts
    ph = params_hash(cfg)
    shards = list_shards(in_dir)
    if not shards:
        raise FileNotFoundError(f"{in_dir} holds no part-*.parquet shards (run the ingest stage first)")
    return [
        ShardTask(stage=STAGE, shard=p.name, inputs=[str(p)], out_dir=str(out_dir), params=cfg, params_hash=ph,
                  fingerprints={p.name: sha256_file(p)})
        for p in shards
    ]


def run(params: dict) -> dict:
    in_dir, out_dir = resolve(INPUT_DIR), resolve(OUTPUT_DIR)
    tasks = make_tasks(params, in_dir, out_dir)
    manifest = run_shard_stage(STAGE, tasks, process_shard, executor_params=params.get("executor"),
                               known_reasons=RULE_NAMES)
    all_stats = [ShardStats.from_dict(load_fragment(out_dir, t.shard)["stats"]) for t in tasks]
    summary = totals(all_stats)
    checks: dict[str, int] = {}
    for s in all_stats:
        for k, v in s.extra.items():
            checks[k] = checks.get(k, 0) + int(v)
    summary.update({
        "stage": STAGE,
        "shards": manifest["totals"]["shards"],
        "exempt": checks.pop("exempt", 0),
        "checks": dict(sorted(checks.items())),
        "keep_rate": round(summary["records_out"] / summary["records_in"], 6) if summary["records_in"] else 0.0,
    })
    log.info("filter: %d in, %d out, drops %s", summary["records_in"], summary["records_out"], summary["drops"])
    return summary
