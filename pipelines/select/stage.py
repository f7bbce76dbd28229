"""Select stage: ``data/dedup`` -> ``data/select``.

1. Train the quality classifier on this run's input: positives = records of
   ``select.positive_sources``, negatives = web records (sources outside
   ``select.keep_sources``); at most ``max_train_per_class`` each, chosen by a
   seeded hash of the id (independent of shard layout). Saved as
   ``data/select/quality_model.{npy,json}``.
2. Pass 1 (parallel): score the web records of every shard; the threshold is
   the ``1 - web_keep_fraction`` quantile of those scores over the whole input.
3. Pass 2 (parallel, resumable): every record gets ``quality_score`` (float32);
   web records scoring below the threshold are dropped as ``low_quality``;
   ``keep_sources`` records are always kept.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import resolve, section
from pipelines.core.executor import get_executor
from pipelines.core.hashing import params_hash, sha256_file
from pipelines.core.manifest import load_fragment
from pipelines.core.shards import list_shards, read_shard
from pipelines.core.stage import ShardResult, ShardTask, removed_table, run_shard_stage
from pipelines.core.stats import ShardStats, totals
from pipelines.select.classifier import QualityModel, train

log = logging.getLogger(__name__)
STAGE = "select"
INPUT_DIR = "data/dedup"
OUTPUT_DIR = "data/select"
MODEL_STEM = "quality_model"  # -> quality_model.npy + quality_model.json in the output dir
REASON = "low_quality"
DEFAULT_MAX_TRAIN = 20000


def _config(params: dict) -> dict:
    cfg = dict(section(params, STAGE))
    frac = cfg.get("web_keep_fraction")
    if not isinstance(frac, (int, float)) or not 0 < frac <= 1:
        raise ValueError(f"select.web_keep_fraction must be in (0, 1], got {frac!r}")
    if not cfg.get("positive_sources"):
        raise ValueError("select.positive_sources must name at least one curated source")
    for key in ("features", "ngram_max"):
        if not isinstance(cfg.get(key), int) or cfg[key] < 1:
            raise ValueError(f"select.{key} must be a positive integer, got {cfg.get(key)!r}")
    cfg["max_train_per_class"] = int(cfg.get("max_train_per_class", DEFAULT_MAX_TRAIN))
    cfg["seed"] = int(params.get("seed", 0))
    return cfg


def _sample_key(seed: int, record_id: str) -> bytes:
    return hashlib.sha1(f"{seed}\x00{record_id}".encode()).digest()


def _training_texts(shards: list[Path], cfg: dict) -> tuple[list[str], list[str]]:
    """Positive and negative texts, up to the cap each, chosen and ordered by seeded id hash."""
    positive, keep = set(cfg["positive_sources"]), set(cfg.get("keep_sources") or [])
    chosen: dict[str, list[tuple[bytes, int, int]]] = {"positive": [], "negative": []}
    for si, path in enumerate(shards):
        t = read_shard(path, ["id", "source"])
        for ri, (rid, src) in enumerate(zip(t.column("id").to_pylist(), t.column("source").to_pylist())):
            cls = "positive" if src in positive else ("negative" if src not in keep else None)
            if cls:
                chosen[cls].append((_sample_key(cfg["seed"], rid), si, ri))
    missing = [c for c, rows in chosen.items() if not rows]
    if missing:
        what = {"positive": f"records of select.positive_sources {sorted(positive)}",
                "negative": f"web records (sources not in select.keep_sources {sorted(keep)})"}
        raise ValueError(
            f"select: cannot train the quality classifier: no {' and no '.join(what[m] for m in missing)} in {INPUT_DIR}; "
            "change select.positive_sources / select.keep_sources or the ingest inputs")
    texts = {}
    for cls, rows in chosen.items():
        rows = sorted(rows)[: cfg["max_train_per_class"]]
        by_shard: dict[int, list[int]] = {}
        for _, si, ri in rows:
            by_shard.setdefault(si, []).append(ri)
        found = {}
        for si, idx in by_shard.items():
            col = read_shard(shards[si], ["text"]).column("text").take(pa.array(idx)).to_pylist()
            found.update({(si, ri): text for ri, text in zip(idx, col)})
        texts[cls] = [found[(si, ri)] for _, si, ri in rows]
    return texts["positive"], texts["negative"]


def _web_mask(table: pa.Table, keep_sources: list[str]) -> np.ndarray:
    return np.asarray(pc.invert(pc.is_in(table.column("source"), pa.array(keep_sources or [], pa.string()))))


def _score_web(job: tuple[str, str, list[str]]) -> np.ndarray:
    path, model_stem, keep_sources = job
    table = read_shard(path, ["source", "text"])
    web = table.filter(pa.array(_web_mask(table, keep_sources)))
    return QualityModel.load(Path(model_stem)).score(web.column("text").to_pylist())


def process_shard(task: ShardTask) -> ShardResult:
    table = read_shard(task.inputs[0])
    model = QualityModel.load(Path(task.context["model_stem"]))
    threshold = float(task.context["threshold"])
    scores = model.score(table.column("text").to_pylist())
    web = _web_mask(table, task.params.get("keep_sources"))
    keep = ~web | (scores >= threshold)
    table = table.append_column(pa.field("quality_score", pa.float32()), pa.array(scores.astype(np.float32)))
    mask = pa.array(keep)
    kept, dropped = table.filter(mask), table.filter(pc.invert(mask))
    details = [json.dumps({"score": float(s), "threshold": threshold}, sort_keys=True)
               for s in scores[~keep]]
    stats = ShardStats(shard=task.shard, records_in=table.num_rows)
    stats.bytes_in = int(pc.sum(pc.binary_length(table.column("text"))).as_py() or 0) if table.num_rows else 0
    stats.drop(REASON, dropped.num_rows)
    stats.extra.update({"web_in": int(web.sum()), "web_kept": int((web & keep).sum()),
                        "kept_sources": int((~web).sum())})
    return ShardResult(kept, removed_table(dropped, [REASON] * dropped.num_rows, details), stats)


def run(params: dict) -> dict:
    cfg = _config(params)
    in_dir, out_dir = resolve(INPUT_DIR), resolve(OUTPUT_DIR)
    shards = list_shards(in_dir)
    if not shards:
        raise FileNotFoundError(f"{in_dir} holds no part-*.parquet shards (run the dedup stage first)")
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / MODEL_STEM

    positives, negatives = _training_texts(shards, cfg)
    model = train(positives, negatives, features=cfg["features"], ngram_max=cfg["ngram_max"], seed=cfg["seed"])
    train_info = {"positives": len(positives), "negatives": len(negatives)}
    model.save(stem, {"train": train_info})

    # Pass 1: the global threshold over every web record of the input.
    executor = get_executor(params.get("executor"))
    web_scores = executor.map(_score_web, [(str(p), str(stem), cfg.get("keep_sources") or []) for p in shards])
    web_scores = np.concatenate(web_scores) if web_scores else np.zeros(0)
    frac = float(cfg["web_keep_fraction"])
    threshold = float(np.quantile(web_scores, 1.0 - frac)) if web_scores.size else 0.0
    web_kept = int((web_scores >= threshold).sum())
    quality = {
        "threshold": threshold,
        "web_keep_fraction": frac,
        "web_records": int(web_scores.size),
        "web_kept": web_kept,
        "web_keep_rate": web_kept / web_scores.size if web_scores.size else 0.0,
        "train": train_info,
    }
    meta = model.save(stem, {"train": train_info, "threshold": threshold})

    # Pass 2: score, tag and drop, shard by shard. The model hash and threshold are part of every
    # shard's fingerprint: a shard depends on the whole input through them.
    ph = params_hash(cfg)
    tasks = [
        ShardTask(stage=STAGE, shard=p.name, inputs=[str(p)], out_dir=str(out_dir), params=cfg, params_hash=ph,
                  fingerprints={p.name: sha256_file(p), "model": meta["coef_sha256"], "threshold": repr(threshold)},
                  context={"model_stem": str(stem), "threshold": threshold})
        for p in shards
    ]
    manifest = run_shard_stage(STAGE, tasks, process_shard, executor_params=params.get("executor"),
                               known_reasons=[REASON], extra_manifest={"quality": quality})
    all_stats = [ShardStats.from_dict(load_fragment(out_dir, t.shard)["stats"]) for t in tasks]
    summary = totals(all_stats)
    summary.update({"stage": STAGE, "shards": manifest["totals"]["shards"], **quality})
    log.info("select: threshold %.4f keeps %d/%d web records", threshold, web_kept, web_scores.size)
    return summary
