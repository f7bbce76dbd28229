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

A refresh (the previous input plus new shards, same settings and code; ``select.refresh: reuse``)
keeps the previous classifier and threshold and scores only the new shards
(pipelines.select.refresh).

``select.method`` picks how web records are chosen (the same share in every case):
``quality_topk`` (the threshold above), ``quality_temperature`` (a seeded
Gumbel-top-k sample with the quality logits / ``temperature`` as log-weights:
pure top-k hurts diversity), ``dsir`` (importance resampling towards the
``dsir.target_sources`` n-gram distribution, see ``dsir.py``) or ``zipfit`` (the records
most aligned, by gzip normalized compression distance, with a seeded sample of
``zipfit.target_docs`` records of ``dsir.target_sources``, see ``zipfit.py``). Every method
logs the KL reduction of the selected web set towards the target
(``metrics/details/select.json``, also in the manifest).
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
from pipelines.core.atomic import write_json_atomic
from pipelines.core.contract import DataStage, ShardResult, ShardTask, removed_table
from pipelines.core.shards import read_shard
from pipelines.core.store import fetch_uri
from pipelines.core.stats import ShardStats, totals
from pipelines.select import dsir, zipfit
from pipelines.select.ngram_classifier import NgramQualityClassifier, train
from pipelines.select.refresh import find_parent, refresh_key
from pipelines.select.sampling import kth_largest, quality_logits, sort_keys

log = logging.getLogger(__name__)
STAGE = "select"
MODEL_STEM = "quality_model"  # -> quality_model.npy + quality_model.json in the output dir
REASON = "low_quality"
SAMPLED_OUT = "not_sampled"  # dropped by a weighted sample, not by a hard threshold
LOW_ALIGNMENT = "low_alignment"  # zipfit: below the cut on alignment with the target sample
DEFAULT_MAX_TRAIN = 20000
METHODS = ("quality_topk", "quality_temperature", "dsir", "zipfit")
DSIR_STEM = "dsir_model"  # -> dsir_model.npy: log p_target - log p_raw per bucket
ZIPFIT_STEM = "zipfit_target"  # -> zipfit_target.json: the target sample (ids and truncated texts)
COUNTS_STEM = "ngram_counts"  # -> ngram_counts.npy: target, raw and selected bucket counts (a refresh adds to them)
METRICS_FILE = "metrics/details/select.json"  # the headline row: pipelines.core.headline


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
    cfg["method"] = cfg.get("method", "quality_topk")
    if cfg["method"] not in METHODS:
        raise ValueError(f"select.method must be one of {list(METHODS)}, got {cfg['method']!r}")
    cfg["refresh"] = cfg.get("refresh", "reuse")
    if cfg["refresh"] not in ("reuse", "retrain"):
        raise ValueError(f"select.refresh must be reuse or retrain, got {cfg['refresh']!r}")
    cfg["temperature"] = float(cfg.get("temperature", 1.0))
    if not cfg["temperature"] > 0:
        raise ValueError(f"select.temperature must be > 0, got {cfg['temperature']!r}")
    d = dict(cfg.get("dsir") or {})
    d["target_sources"] = list(d.get("target_sources") or cfg["positive_sources"])
    d["buckets"] = int(d.get("buckets", dsir.DEFAULT_BUCKETS))
    if d["buckets"] < 1:
        raise ValueError(f"select.dsir.buckets must be a positive integer, got {d['buckets']!r}")
    cfg["dsir"] = d
    z = dict(cfg.get("zipfit") or {})
    z["target_docs"] = z.get("target_docs", zipfit.DEFAULT_TARGET_DOCS)
    z["max_chars"] = z.get("max_chars", zipfit.DEFAULT_MAX_CHARS)
    for key in ("target_docs", "max_chars"):
        if not isinstance(z[key], int) or isinstance(z[key], bool) or z[key] < 1:
            raise ValueError(f"select.zipfit.{key} must be a positive integer, got {z[key]!r}")
    cfg["zipfit"] = z
    return cfg


def _sample_key(seed: int, record_id: str) -> bytes:
    return hashlib.sha1(f"{seed}\x00{record_id}".encode()).digest()


def _training_texts(shards: list[str], cfg: dict) -> tuple[list[str], list[str]]:
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
            f"select: cannot train the quality classifier: no {' and no '.join(what[m] for m in missing)} in data/dedup; "
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


def _zipfit_targets(shards: list[str], cfg: dict) -> dict:
    """The ZIP-FIT target sample: ``zipfit.target_docs`` records of ``dsir.target_sources``, the first by a
    seeded hash of the id (independent of shard layout), texts truncated to ``zipfit.max_chars``."""
    sources, z = pa.array(cfg["dsir"]["target_sources"], pa.string()), cfg["zipfit"]
    rows = []
    for si, path in enumerate(shards):
        t = read_shard(path, ["id", "source"])
        for ri in np.flatnonzero(np.asarray(pc.is_in(t.column("source"), sources))):
            rid = t.column("id")[int(ri)].as_py()
            rows.append((zipfit.target_key(cfg["seed"], rid), rid, si, int(ri)))
    rows = sorted(rows)[: z["target_docs"]]
    if not rows:
        raise ValueError(f"select: no records of select.dsir.target_sources {cfg['dsir']['target_sources']} in "
                         "data/dedup for the ZIP-FIT target sample")
    by_shard: dict[int, list[int]] = {}
    for _, _, si, ri in rows:
        by_shard.setdefault(si, []).append(ri)
    found = {}
    for si, idx in by_shard.items():
        col = read_shard(shards[si], ["text"]).column("text").take(pa.array(idx)).to_pylist()
        found.update({(si, ri): (text or "")[: z["max_chars"]] for ri, text in zip(idx, col)})
    return {"ids": [rid for _, rid, _, _ in rows], "texts": [found[(si, ri)] for _, _, si, ri in rows],
            "max_chars": z["max_chars"]}


def _load_aligner(path: str) -> zipfit.Aligner:
    target = json.loads(Path(fetch_uri(path)).read_text(encoding="utf-8"))
    return zipfit.Aligner(target["texts"], target["max_chars"])


def _web_mask(table: pa.Table, keep_sources: list[str]) -> np.ndarray:
    return np.asarray(pc.invert(pc.is_in(table.column("source"), pa.array(keep_sources or [], pa.string()))))


def selection_keys(cfg: dict, ids: list[str], texts: list[str], scores: np.ndarray,
                   dsir_path: str | None, zipfit_path: str | None = None) -> np.ndarray:
    """Per web record, the key the selection cuts at a global threshold (keep ``key >= threshold``)."""
    if cfg["method"] == "quality_topk":
        return np.asarray(scores, dtype=np.float64)
    if cfg["method"] == "zipfit":  # deterministic: the most aligned records are kept, no sampling noise
        return _load_aligner(zipfit_path).alignment(texts)
    if cfg["method"] == "quality_temperature":
        return sort_keys(quality_logits(scores, cfg["temperature"]), ids, cfg["seed"], STAGE)
    model = dsir.ImportanceModel(np.load(fetch_uri(dsir_path), allow_pickle=False))
    return sort_keys(model.log_weights(texts), ids, cfg["seed"], STAGE)


def _count_buckets(job: tuple[str, list[str], list[str], int]) -> tuple[np.ndarray, np.ndarray]:
    """Bucket counts of one shard's target-source records and of its web records."""
    path, target_sources, keep_sources, buckets = job
    table = read_shard(path, ["source", "text"])
    target = table.filter(pc.is_in(table.column("source"), pa.array(target_sources, pa.string())))
    web = table.filter(pa.array(_web_mask(table, keep_sources)))
    return (dsir.bucket_counts(target.column("text").to_pylist(), buckets),
            dsir.bucket_counts(web.column("text").to_pylist(), buckets))


def _load_model(model: dict) -> NgramQualityClassifier:
    return NgramQualityClassifier.from_files(model["meta"], fetch_uri(model["coef"]))


def _score_web(job: tuple[str, dict, dict, str | None, str | None]) -> np.ndarray:
    path, model, cfg, dsir_path, zipfit_path = job
    table = read_shard(path, ["id", "source", "text"])
    web = table.filter(pa.array(_web_mask(table, cfg.get("keep_sources"))))
    texts = web.column("text").to_pylist()
    scores = _load_model(model).score(texts)
    return selection_keys(cfg, web.column("id").to_pylist(), texts, scores, dsir_path, zipfit_path)


def _selected_buckets(job: tuple[str, list[str], int, np.ndarray, float]) -> np.ndarray:
    """Bucket counts of the web records of one shard that the selection keeps.

    ``keys`` are the shard's web-record keys from pass 1 (``_score_web``), in the same order, so
    nothing is scored again: only the texts the selection keeps are counted.
    """
    path, keep_sources, buckets, keys, threshold = job
    table = read_shard(path, ["source", "text"])
    web = table.filter(pa.array(_web_mask(table, keep_sources)))
    if web.num_rows != len(keys):
        raise RuntimeError(f"select: {path} has {web.num_rows} web records but pass 1 scored {len(keys)}")
    selected = web.filter(pa.array(np.asarray(keys) >= threshold))
    return dsir.bucket_counts(selected.column("text").to_pylist(), buckets)


def process_shard(task: ShardTask) -> ShardResult:
    table = read_shard(task.inputs[0])
    model = _load_model(task.context["model"])
    threshold = float(task.context["threshold"])
    texts = table.column("text").to_pylist()
    scores = model.score(texts)
    web = _web_mask(table, task.params.get("keep_sources"))
    keys = np.full(len(texts), np.inf)
    rows = np.flatnonzero(web)
    ids = table.column("id").to_pylist()
    keys[rows] = selection_keys(task.params, [ids[r] for r in rows], [texts[r] for r in rows], scores[rows],
                                task.context.get("dsir"), task.context.get("zipfit"))
    keep = ~web | (keys >= threshold)
    topk = task.params["method"] == "quality_topk"
    reason = REASON if topk else (LOW_ALIGNMENT if task.params["method"] == "zipfit" else SAMPLED_OUT)
    table = table.append_column(pa.field("quality_score", pa.float32()), pa.array(scores.astype(np.float32)))
    mask = pa.array(keep)
    kept, dropped = table.filter(mask), table.filter(pc.invert(mask))
    details = [json.dumps({"score": float(s), "threshold": threshold} if topk else
                          {"score": float(s), "key": float(k), "threshold": threshold, "method": task.params["method"]},
                          sort_keys=True)
               for s, k in zip(scores[~keep], keys[~keep])]
    stats = ShardStats(shard=task.shard, records_in=table.num_rows)
    stats.bytes_in = int(pc.sum(pc.binary_length(table.column("text"))).as_py() or 0) if table.num_rows else 0
    stats.drop(reason, dropped.num_rows)
    stats.extra.update({"web_in": int(web.sum()), "web_kept": int((web & keep).sum()),
                        "kept_sources": int((~web).sum())})
    return ShardResult(kept, removed_table(dropped, [reason] * dropped.num_rows, details), stats)


def _save_npy(array: np.ndarray):
    def write(path: Path) -> None:
        with open(path, "wb") as f:
            np.save(f, np.ascontiguousarray(array, dtype=np.float64), allow_pickle=False)
    return write


def train_and_select(run, cfg: dict) -> dict:
    """The whole-input pass: train the classifier, fit DSIR, score every web record, cut at a global threshold.
    In a refresh (pipelines.select.refresh) the previous classifier, DSIR model and threshold are kept and only
    the new shards are scored. Returns the context every shard needs; the quality and selection blocks go to
    ``run.notes``."""
    refs = run.input_shards()
    d = cfg["dsir"]
    kept_files = [MODEL_STEM + ".npy", MODEL_STEM + ".json", COUNTS_STEM + ".npy"] + \
        ([DSIR_STEM + ".npy"] if cfg["method"] == "dsir" else []) + \
        ([ZIPFIT_STEM + ".json"] if cfg["method"] == "zipfit" else [])
    parent = find_parent(run, kept_files)
    if parent is None:
        shards = [ref.uri for ref in refs]
        positives, negatives = _training_texts(shards, cfg)
        model = train(positives, negatives, features=cfg["features"], ngram_max=cfg["ngram_max"], seed=cfg["seed"])
        train_info = {"positives": len(positives), "negatives": len(negatives)}
        coef = run.write_artifact(MODEL_STEM + ".npy", _save_npy(model.coef))
        meta = model.describe(coef["sha256"], MODEL_STEM + ".npy", {"train": train_info})
        prior = {"counts": np.zeros((3, d["buckets"])), "web_records": 0, "web_kept": 0}
    else:
        shards = [ref.uri for ref in refs if ref.name not in parent.old_inputs]  # only the new shards are scored
        for rel in kept_files:
            run.add_artifact(rel)  # carried into this run's manifest
        meta = json.loads((run.out_dir / (MODEL_STEM + ".json")).read_text())
        quality = parent.manifest["quality"]
        train_info = quality["train"]
        prior = {"counts": np.load(run.out_dir / (COUNTS_STEM + ".npy"), allow_pickle=False),
                 "web_records": quality["web_records"], "web_kept": quality["web_kept"]}
        log.info("select: refresh: %d new shards scored with the previous classifier and threshold %.4f; %d input "
                 "shards keep their decisions", len(shards), quality["threshold"], len(parent.old_inputs))
    model_ref = {"meta": meta, "coef": run.artifact_uri(MODEL_STEM + ".npy")}

    # Bag-of-ngrams models of the target sources and of the raw web pool (DSIR; KL for every method).
    counts = run.map(_count_buckets, [(p, d["target_sources"], cfg.get("keep_sources") or [], d["buckets"])
                                      for p in shards])
    target_counts = prior["counts"][0] + np.sum([c[0] for c in counts], axis=0)
    raw_counts = prior["counts"][1] + np.sum([c[1] for c in counts], axis=0)
    dsir_path = run.artifact_uri(DSIR_STEM + ".npy") if parent is not None and cfg["method"] == "dsir" else None
    if parent is None and cfg["method"] == "dsir":
        if not target_counts.sum():
            raise ValueError(f"select: no records of select.dsir.target_sources {d['target_sources']} in data/dedup")
        importance = dsir.ImportanceModel.fit(target_counts, raw_counts)
        run.write_artifact(DSIR_STEM + ".npy", _save_npy(importance.log_ratio))
        dsir_path = run.artifact_uri(DSIR_STEM + ".npy")

    zipfit_path = None
    if cfg["method"] == "zipfit":  # the target sample: drawn once, kept by a refresh like the DSIR model
        if parent is None:
            target = _zipfit_targets(shards, cfg)
            run.write_artifact(ZIPFIT_STEM + ".json", lambda path: write_json_atomic(path, target))
        zipfit_path = run.artifact_uri(ZIPFIT_STEM + ".json")

    # Pass 1: the global threshold over the keys of every web record of the input (a refresh keeps its parent's).
    # The per-shard keys (map keeps job order) are kept for the selected-bucket counts below.
    shard_keys = run.map(_score_web, [(p, model_ref, cfg, dsir_path, zipfit_path) for p in shards])
    web_scores = np.concatenate(shard_keys) if shard_keys else np.zeros(0)
    frac = float(cfg["web_keep_fraction"])
    if parent is not None:
        threshold = float(parent.manifest["quality"]["threshold"])
    elif cfg["method"] == "quality_topk":
        threshold = float(np.quantile(web_scores, 1.0 - frac)) if web_scores.size else 0.0
    else:
        threshold = kth_largest(web_scores, int(round(frac * web_scores.size)))
    web_records = prior["web_records"] + int(web_scores.size)
    web_kept = prior["web_kept"] + int((web_scores >= threshold).sum())
    selected_jobs = [(p, cfg.get("keep_sources") or [], d["buckets"], keys, threshold)
                     for p, keys in zip(shards, shard_keys)]
    selected_counts = prior["counts"][2] + np.sum(run.map(_selected_buckets, selected_jobs) or [np.zeros(d["buckets"])],
                                                  axis=0)
    run.write_artifact(COUNTS_STEM + ".npy", _save_npy(np.stack([target_counts, raw_counts, selected_counts])))
    selection = {"method": cfg["method"], "target_sources": d["target_sources"], "buckets": d["buckets"],
                 **({"temperature": cfg["temperature"]} if cfg["method"] == "quality_temperature" else {}),
                 **({"zipfit": {**cfg["zipfit"], "target_records": len(json.loads(
                     Path(fetch_uri(zipfit_path)).read_text(encoding="utf-8"))["ids"])}}
                    if cfg["method"] == "zipfit" else {}),
                 **(dsir.kl_reduction(target_counts, raw_counts, selected_counts)
                    if target_counts.sum() and raw_counts.sum() else {"kl_reduction": None})}
    run.notes["quality"] = {
        "threshold": threshold,
        "web_keep_fraction": frac,
        "web_records": web_records,
        "web_kept": web_kept,
        "web_keep_rate": web_kept / web_records if web_records else 0.0,
        "train": train_info,
    }
    run.notes["selection"] = selection
    run.notes["refresh"] = {"scored_shards": len(shards), "kept_shards": len(refs) - len(shards)} if parent else None
    if parent is None:
        meta = model.describe(coef["sha256"], MODEL_STEM + ".npy", {"train": train_info, "threshold": threshold})
        run.write_artifact(MODEL_STEM + ".json", lambda path: write_json_atomic(path, meta))
    return {"model": model_ref, "threshold": threshold, "dsir": dsir_path, "zipfit": zipfit_path}


class SelectStage(DataStage):
    name = STAGE
    input = "dedup"
    drop_reasons = (REASON, SAMPLED_OUT, LOW_ALIGNMENT)

    def config(self, params: dict) -> dict:
        return _config(params)

    def global_inputs(self, run, tasks: list[ShardTask]) -> dict:
        # The model and threshold are part of every shard's hash: a shard depends on the whole input through them.
        context = train_and_select(run, run.cfg)
        for t in tasks:
            t.context = context
        return {"model": context["model"]["meta"]["coef_sha256"], "threshold": repr(context["threshold"]),
                **({"dsir": run.artifacts[DSIR_STEM + ".npy"]["sha256"]} if context["dsir"] else {}),
                **({"zipfit": run.artifacts[ZIPFIT_STEM + ".json"]["sha256"]} if context.get("zipfit") else {})}

    def process(self, task: ShardTask) -> ShardResult:
        return process_shard(task)

    def finish(self, run, fragments: dict[str, list[dict]]) -> dict:
        quality, selection = run.notes["quality"], run.notes["selection"]
        write_json_atomic(resolve(METRICS_FILE), {**selection, "web_records": quality["web_records"],
                                                  "web_kept": quality["web_kept"]})
        out = {"quality": quality, "selection": selection, "refresh_key": refresh_key(run)}
        return {**out, "refresh": run.notes["refresh"]} if run.notes.get("refresh") else out

    def summarize(self, run, manifest: dict, stats: list[ShardStats]) -> dict:
        summary = totals(stats)
        quality, selection = manifest["quality"], manifest["selection"]
        summary.update({"stage": STAGE, "shards": manifest["totals"]["shards"], **quality, "selection": selection})
        log.info("select (%s): KL reduction %s", quality and selection["method"], selection.get("kl_reduction"))
        log.info("select: threshold %.4f keeps %d/%d web records", quality["threshold"], quality["web_kept"],
                 quality["web_records"])
        return summary
