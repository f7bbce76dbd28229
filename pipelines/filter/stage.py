"""Filter stage: ``data/ingest`` -> ``data/filter``, shard to shard.

The rules run in order (url_filter, language, gopher_quality, gopher_repetition,
c4_quality, fineweb_quality); the first rule that fails drops the record, with the
rule name as ``drop_reason`` and the failed sub-check with its value as
``drop_detail``. Records of ``filter.exempt_sources`` (curated text) skip the rules.
Before all of them, removal requests (``filter.takedown``, ``takedown.py``) drop every
matching record of any source, with reason ``takedown``.

With the fastText quality model on, in two passes, as DCLM applies its classifier:
pass 1 runs the takedown list and the rules on every shard of the whole input, once,
scores the web records that pass them (on the text the rules left) with the model
(``fasttext_quality.py``) and merges per-shard quantile sketches (``quantile_sketch.py``)
of those scores into one; its outcome waits in the run's scratch store. The threshold is
the (1 - web_keep_fraction) quantile of the survivors' scores, so the knob keeps that
share of the web records that reach the classifier. Pass 2 (per shard) drops the
survivors scored below it (``quality_fasttext``). Without the model: one pass.

Kept records carry ``quality_fasttext`` (their score; None where no model scored them)
and ``c4_lines_removed``, and the text C4 left; removed records stay as they came in.
Stats: ``drops`` per rule; ``extra`` counts each sub-check
(``gopher_quality.gopher_short_doc``), the lines C4 removed per reason, the exempt
records, and the web records scored / at or above the threshold (the achieved keep rate
among them). The manifest's ``quality`` block holds the threshold, the target and
achieved keep rates and the sketch's rank-error bound.
"""
from __future__ import annotations

import json
import logging
from functools import lru_cache

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import resolve, section
from pipelines.core.contract import DataStage, ShardResult, ShardTask, removed_table
from pipelines.core.hashing import sha256_file
from pipelines.core.shards import read_shard, write_parquet
from pipelines.core.store import fetch_uri
from pipelines.core.stats import ShardStats, totals
from pipelines.core.store import Store
from pipelines.filter import fasttext_quality
from pipelines.filter.quantile_sketch import QuantileSketch
from pipelines.filter.rules import RULE_NAMES, Doc, build_rules
from pipelines.filter.takedown import REASON as TAKEDOWN, Takedown, takedown_files
from pipelines.filter.words import english_splitter

log = logging.getLogger(__name__)
STAGE = "filter"
QUALITY_RULE = "quality_fasttext"
ALL_REASONS = [TAKEDOWN] + RULE_NAMES + [QUALITY_RULE]
SKETCH_K = 4096
INPUT_TEXT = "_input_text"  # pass 1 keeps a survivor's text as it came in, for pass 2's removed record


def _inc(stats: ShardStats, key: str, n: int = 1) -> None:
    stats.extra[key] = stats.extra.get(key, 0) + n


@lru_cache(maxsize=2)
def _scorer(model_path: str, model_sha: str, max_chars: int) -> fasttext_quality.QualityScorer:
    return fasttext_quality.QualityScorer(fetch_uri(model_path), max_chars)  # one load per worker process and model


def filter_table(table: pa.Table, rules: list, exempt: frozenset[str], stats: ShardStats,
                 takedown: Takedown | None = None) -> tuple[pa.Table, pa.Table]:
    """Split a record table into (kept, removed-with-reasons) by the takedown list and the rules, counting into
    ``stats``; ``quality_fasttext`` is left empty (pass 1 scores the survivors)."""
    n = table.num_rows
    ids = table.column("id").to_pylist()
    texts = table.column("text").to_pylist()
    sources = table.column("source").to_pylist()
    col = lambda name: table.column(name).to_pylist() if name in table.column_names else [None] * n  # noqa: E731
    langs, lang_scores, urls = col("lang"), col("lang_score"), col("url")
    keep = [True] * n
    reasons, details = [], []
    new_texts = list(texts)
    c4_lines = [0] * n
    for i, (text, source, lang, lscore, url) in enumerate(zip(texts, sources, langs, lang_scores, urls)):
        removal = takedown.match(ids[i], url) if takedown else None
        if removal is not None:  # any source, before any rule: a removal request is not a quality judgement
            kind, _, entry = removal.partition(":")
            keep[i] = False
            stats.drop(TAKEDOWN)
            _inc(stats, f"{TAKEDOWN}.{kind}")
            reasons.append(TAKEDOWN)
            details.append(json.dumps({"check": kind, "entry": entry}, sort_keys=True, ensure_ascii=False))
            continue
        if source in exempt:
            _inc(stats, "exempt")
            continue
        doc = Doc(text, lang, lscore, source, url)
        failed = None
        for rule in rules:
            ok, detail = rule.check(doc)
            line_counts = getattr(rule, "last_line_counts", None)
            if line_counts is not None:
                # C4 removes lines from documents it keeps: count them per reason (audit of the rewrite).
                c4_lines[i] = sum(line_counts.values())
                if ok:
                    for k, v in line_counts.items():
                        _inc(stats, f"{rule.name}.lines_removed.{k}", v)
                    _inc(stats, f"{rule.name}.docs_modified", int(c4_lines[i] > 0))
            if not ok:
                failed = (rule.name, detail)
                break
        if failed is None:
            new_texts[i] = doc.text
            continue
        name, detail = failed
        keep[i] = False
        stats.drop(name)
        _inc(stats, f"{name}.{detail['check']}")
        reasons.append(name)
        details.append(json.dumps(detail, sort_keys=True, ensure_ascii=False))
    extra_cols = {QUALITY_RULE: pa.nulls(n, pa.float32()), "c4_lines_removed": pa.array(c4_lines, pa.int32())}
    # Kept records carry the text the rules left (C4 drops lines); removed records stay as they came in.
    kept_t = table.set_column(table.column_names.index("text"), "text", pa.array(new_texts, pa.string()))
    removed_t = table
    for name, arr in extra_cols.items():
        kept_t, removed_t = kept_t.append_column(name, arr), removed_t.append_column(name, arr)
    mask = pa.array(keep, pa.bool_())
    return kept_t.filter(mask), removed_table(removed_t.filter(pc.invert(mask)), reasons, details)


def rule_pass(path: str, shard: str, cfg: dict) -> tuple[pa.Table, pa.Table, ShardStats]:
    """The takedown list and the rules over one shard: (survivors, removed, stats)."""
    table = read_shard(path)
    stats = ShardStats(shard=shard, records_in=table.num_rows)
    stats.bytes_in = int(pc.sum(pc.binary_length(table.column("text"))).as_py() or 0) if table.num_rows else 0
    stats.extra["exempt"] = 0
    kept, removed = filter_table(table, build_rules(cfg), frozenset(cfg.get("exempt_sources") or []), stats,
                                 takedown=Takedown.from_config(cfg.get("takedown")))
    return kept, removed, stats


def process_shard(task: ShardTask) -> ShardResult:
    q = task.context.get("quality")
    if q is None:
        return ShardResult(*rule_pass(task.inputs[0], task.shard, task.params))
    return quality_pass(task, q)


def first_pass(job: dict) -> dict:
    """Pass 1 for one shard: rules, then the survivors' web records scored; the outcome into scratch, the
    scores' sketch returned."""
    cfg, q, store, shard = job["cfg"], job["quality"], job["store"], job["shard"]
    kept, removed, stats = rule_pass(job["path"], shard, cfg)
    exempt = frozenset(cfg.get("exempt_sources") or [])
    web = [s not in exempt for s in kept.column("source").to_pylist()]
    texts = kept.column("text").to_pylist()
    scored = _scorer(q["model_path"], q["model_sha256"], q["max_chars"]).score([t for t, w in zip(texts, web) if w])
    it = iter(scored)
    scores = [next(it) if w else None for w in web]
    kept = kept.set_column(kept.column_names.index(QUALITY_RULE), QUALITY_RULE, pa.array(scores, pa.float32()))
    original = read_shard(job["path"], columns=["id", "text"])
    by_id = dict(zip(original.column("id").to_pylist(), original.column("text").to_pylist()))
    kept = kept.append_column(INPUT_TEXT, pa.array([by_id[i] for i in kept.column("id").to_pylist()], pa.string()))
    sketch = QuantileSketch(SKETCH_K)
    for score in scored:
        sketch.add(score)
    for name, t in (("kept", kept), ("removed", removed)):
        with store.writer(f"pass1/{shard}.{name}.parquet") as tmp:
            write_parquet(tmp, t, conform_schema=False)
    store.write_json(f"pass1/{shard}.stats.json", stats.to_dict())
    return sketch.to_dict()


def quality_pass(task: ShardTask, q: dict) -> ShardResult:
    """Pass 2 for one shard: pass 1's survivors scored below the threshold are dropped (``quality_fasttext``)."""
    store: Store = task.context["scratch"]
    kept = read_shard(store.fetch(f"pass1/{task.shard}.kept.parquet"))
    removed = read_shard(store.fetch(f"pass1/{task.shard}.removed.parquet"))
    stats = ShardStats.from_dict(store.read_json(f"pass1/{task.shard}.stats.json"))
    threshold = q["threshold"]
    scores = kept.column(QUALITY_RULE).to_pylist()
    below = [s is not None and s < threshold for s in scores]
    _inc(stats, "quality_fasttext.web_scored", sum(s is not None for s in scores))
    _inc(stats, "quality_fasttext.web_at_or_above_threshold", sum(s is not None and s >= threshold for s in scores))
    _inc(stats, "quality_fasttext.below_percentile", sum(below))
    stats.drop(QUALITY_RULE, sum(below))
    gone = kept.filter(pa.array(below, pa.bool_()))
    # A removed record stays as it came in: its text before C4's line removal.
    gone = gone.set_column(gone.column_names.index("text"), "text", gone.column(INPUT_TEXT)).drop_columns([INPUT_TEXT])
    details = [json.dumps({"check": "below_percentile", "value": s}, sort_keys=True)
               for s in gone.column(QUALITY_RULE).to_pylist()]
    if gone.num_rows:
        removed = pa.concat_tables([removed, removed_table(gone, [QUALITY_RULE] * gone.num_rows, details).cast(removed.schema)])
    kept = kept.filter(pc.invert(pa.array(below, pa.bool_()))).drop_columns([INPUT_TEXT])
    return ShardResult(kept, removed, stats)


def quality_threshold(params: dict, run) -> dict | None:
    """Pass 1 over the whole input: the score threshold that keeps the top web_keep_fraction of the web records
    that pass the rules."""
    cfg = section(params, STAGE)
    qcfg = fasttext_quality.config(cfg)
    if not qcfg["enabled"]:
        return None
    model = resolve(fasttext_quality.MODEL_DIR) / fasttext_quality.MODEL_FILE
    if not model.exists():
        raise FileNotFoundError(f"{model}: no quality model (run the quality_model stage first)")
    q = {"model_path": run.share(model), "model_sha256": sha256_file(model), "max_chars": int(qcfg["max_chars"])}
    sketch = QuantileSketch(SKETCH_K)
    jobs = [{"path": ref.uri, "shard": ref.name, "cfg": cfg, "quality": q, "store": run.scratch}
            for ref in run.input_shards()]
    for d in run.map(first_pass, jobs):
        sketch.merge(QuantileSketch.from_dict(d))
    if sketch.n == 0:
        log.info("filter: no web records to score, quality threshold off")
        return None
    keep = float(qcfg["web_keep_fraction"])
    q.update(threshold=sketch.quantile(1.0 - keep), target_keep_fraction=keep, web_records=sketch.n,
             rank_error_bound=round(sketch.rank_error_bound(), 6))
    return q


class FilterStage(DataStage):
    name = STAGE
    input = "ingest"
    drop_reasons = tuple(ALL_REASONS)

    def config(self, params: dict) -> dict:
        cfg = section(params, STAGE)
        build_rules(cfg)  # bad params fail here, once (quality_threshold checks the quality_model section)
        Takedown.from_config(cfg.get("takedown"))
        return cfg

    def external_inputs(self, run) -> dict[str, str]:
        model = resolve(fasttext_quality.MODEL_DIR) / fasttext_quality.MODEL_FILE
        found = {"quality_model": sha256_file(model)} if model.exists() else {}
        # A takedown list file decides drops: its content is an input of every shard.
        return found | {f"takedown:{f}": sha256_file(resolve(f)) for f in takedown_files(run.cfg.get("takedown"))}

    def global_inputs(self, run, tasks: list[ShardTask]) -> dict:
        # The threshold and the model are inputs of every shard: a new model or threshold re-runs them.
        if (run.executor_params or {}).get("start_method", "fork") == "fork":
            import pandas  # noqa: F401  (pyarrow imports it on a shard's first table, ~2 s: once here, not per worker)

            english_splitter()  # the word splitter's compiled rules: forked workers inherit them
        q = quality_threshold(run.params, run)
        for t in tasks:
            t.context = {"quality": q, "scratch": run.scratch} if q else {"quality": None}
        return {k: v for k, v in (q or {}).items() if k != "model_path"}

    def process(self, task: ShardTask) -> ShardResult:
        return process_shard(task)

    def finish(self, run, fragments: dict[str, list[dict]]) -> dict:
        # The manifest carries the quality block: the achieved keep rate is known only now.
        quality = _quality_block(run.tasks[0].context.get("quality"), _checks(
            [ShardStats.from_dict(f["stats"]) for f in fragments[""]]))
        takedown = Takedown.from_config(run.cfg.get("takedown"))
        return ({"quality": quality} if quality else {}) | ({"takedown": takedown.describe()} if takedown else {})

    def summarize(self, run, manifest: dict, stats: list[ShardStats]) -> dict:
        summary = totals(stats)
        checks = _checks(stats)
        summary.update({
            "stage": STAGE,
            "shards": manifest["totals"]["shards"],
            "exempt": checks.pop("exempt", 0),
            "checks": dict(sorted(checks.items())),
            "keep_rate": round(summary["records_out"] / summary["records_in"], 6) if summary["records_in"] else 0.0,
            "quality": manifest.get("quality"),
        })
        log.info("filter: %d in, %d out, drops %s, quality %s", summary["records_in"], summary["records_out"],
                 summary["drops"], summary["quality"])
        return summary


def _checks(all_stats: list[ShardStats]) -> dict[str, int]:
    checks: dict[str, int] = {}
    for s in all_stats:
        for k, v in s.extra.items():
            checks[k] = checks.get(k, 0) + int(v)
    return checks


def _quality_block(q: dict | None, checks: dict[str, int]) -> dict | None:
    if not q:
        return None
    scored = checks.get("quality_fasttext.web_scored", 0)
    above = checks.get("quality_fasttext.web_at_or_above_threshold", 0)
    return {
        "model_sha256": q["model_sha256"], "threshold": q["threshold"],
        "target_keep_fraction": q["target_keep_fraction"], "web_records": q["web_records"],
        "achieved_keep_fraction": round(above / scored, 6) if scored else None,
        "rank_error_bound": q["rank_error_bound"],
    }
