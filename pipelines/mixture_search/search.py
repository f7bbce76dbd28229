"""The search, as four functions the dvc stage and the Airflow DAG share.

``prepare`` (domains, token streams, held-out docs) -> per round: ``propose``
(candidates) -> ``run_proxy`` per candidate (a process pool under ``dvc repro``,
mapped tasks in the ``mixture_search`` DAG) -> ``finalize`` (fit the predictors,
write ``mixture.json``).
Round 1 samples a Dirichlet over the domains (plus the ``anchors``: uniform over
domains and the pool's natural shares, so the search starts from the obvious
priors); later rounds sample many candidates around the predicted best and run
the ones the predictor ranks best. The phase-1 weights are the mean of the
``final.k`` best measured candidates (``final.method: top_k_mean``): one proxy
score is noisy, and the single best of many is biased low (winner's curse);
``best`` takes it anyway, ``predicted`` takes the predictor's optimum of a pool
around the best candidates. The predictor (``mixture.predictor``) is one of
``predictors.PREDICTORS``; every candidate stays within ``max_repeat`` x its
domain's natural share (``caps``).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import stages
from pipelines.config import resolve, section
from pipelines.core.atomic import write_json_atomic
from pipelines.core.shards import read_all, write_shard
from pipelines.mixture_search import domains as dom
from pipelines.mixture_search import predictors as pred
from pipelines.mixture_search.proxy import train_and_score

log = logging.getLogger(__name__)
IN_DIR = stages.output("select")
OUT_DIR = stages.output("mixture_search")
MIXTURE = "mixture.json"
REPLICATE_STRIDE = 100_003  # a candidate's extra seeds: far from the report's fresh seeds (seed + 1000 + k)
ASSIGN = "domains.parquet"  # id -> domain (curated source name or cluster_<k>)
DEFAULTS = {
    "enabled": False, "embedder": "tfidf", "clusters": 6, "min_cluster_quality": 0.0, "curated_sources":
    ["wikipedia", "books", "news", "code", "math"], "rounds": 2, "candidates_per_round": 8, "dirichlet_alpha": 1.0,
    "local_concentration": 20.0, "pool_samples": 2000, "vocab_size": 2048, "max_stream_tokens": 400000,
    "heldout_docs_per_source": 16, "eval_tokens_per_doc": 256, "anchors": ["uniform", "natural"],
    "final": {"method": "top_k_mean", "k": 3}, "target": "mean", "max_repeat": 4.0, "predictor": "lightgbm",
    "seeds_per_candidate": 1,
    "proxy": {"preset": "tiny", "steps": 40, "seq_len": 128, "micro_batch": 8, "lr": 0.001, "threads": 1},
}


def config(params: dict) -> dict:
    cfg = {**DEFAULTS, **(params.get("mixture") or {})}
    cfg["proxy"] = {**DEFAULTS["proxy"], **(cfg.get("proxy") or {}), "eval_tokens_per_doc": cfg["eval_tokens_per_doc"]}
    cfg["seed"] = int(params.get("seed", 0))
    cfg["heldout_fraction"] = float(section(params, "mix").get("heldout_fraction", 0.05))
    cfg["min_heldout"] = int(section(params, "mix").get("min_heldout_per_source", 0))
    if int(cfg["rounds"]) < 1 or int(cfg["candidates_per_round"]) < 2:
        raise ValueError("mixture.rounds must be >= 1 and mixture.candidates_per_round >= 2")
    cfg["final"] = {**DEFAULTS["final"], **(cfg.get("final") or {})}
    if cfg["final"]["method"] not in ("top_k_mean", "best", "predicted") or int(cfg["final"]["k"]) < 1:
        raise ValueError(f"mixture.final must be {{method: top_k_mean|best|predicted, k: >=1}}, got {cfg['final']}")
    if int(cfg["seeds_per_candidate"]) < 1:
        raise ValueError(f"mixture.seeds_per_candidate must be >= 1, got {cfg['seeds_per_candidate']!r}")
    if cfg["predictor"] not in pred.PREDICTORS:
        raise ValueError(f"mixture.predictor must be one of {sorted(pred.PREDICTORS)}, got {cfg['predictor']!r}")
    if cfg["max_repeat"] is not None and not float(cfg["max_repeat"]) >= 1:
        raise ValueError(f"mixture.max_repeat must be null or >= 1, got {cfg['max_repeat']!r}")
    bad = set(cfg["anchors"] or []) - {"uniform", "natural"}
    if bad:
        raise ValueError(f"mixture.anchors may hold uniform and natural, got {sorted(bad)}")
    return cfg


def work_dir() -> Path:
    return resolve(OUT_DIR) / "work"


# ---------------------------------------------------------------- prepare

def prepare(params: dict) -> dict:
    """Domains per record, a tokenizer, one token stream per domain, held-out docs per source."""
    from pipelines.mix.plan import heldout_mask
    from pipelines.pack.tokenizer import sample_texts, save_tokenizer, train_tokenizer
    from transformers import PreTrainedTokenizerFast

    cfg = config(params)
    table = read_all(resolve(IN_DIR), ["id", "source", "text", "quality_score"])
    if not table.num_rows:
        raise FileNotFoundError(f"{resolve(IN_DIR)} holds no records (run select first)")
    ids, sources = table.column("id").to_pylist(), table.column("source").to_pylist()
    texts = table.column("text").to_pylist()
    quality = pc.fill_null(table.column("quality_score"), 0.0).to_numpy(zero_copy_only=False).astype(np.float64)
    held = heldout_mask(ids, sources, cfg["heldout_fraction"], cfg["min_heldout"])
    curated = set(cfg["curated_sources"])
    domain = np.asarray([s if s in curated else "" for s in sources], dtype=object)
    web = np.flatnonzero(domain == "")
    clusters, embed_stats = {}, {"cached": 0, "embedded": 0}
    if len(web):
        emb, embed_stats = dom.embed_records([ids[i] for i in web], [texts[i] for i in web], cfg["embedder"],
                                             cache=resolve(dom.EMBED_CACHE), seed=cfg["seed"])
        labels, clusters = dom.cluster(emb, quality[web], cfg["clusters"], float(cfg["min_cluster_quality"]), cfg["seed"])
        domain[web] = [f"cluster_{c}" if c >= 0 else "" for c in labels]
    out = resolve(OUT_DIR)
    write_shard(out / ASSIGN, pa.table({"id": ids, "source": sources, "domain": [d or None for d in domain]}),
                conform_schema=False)
    wd = work_dir()
    wd.mkdir(parents=True, exist_ok=True)
    train_rows = [i for i in np.argsort(np.asarray(ids, dtype=object).astype(str)) if not held[i] and domain[i]]
    sample = list(sample_texts([ids[i] for i in train_rows], [texts[i] for i in train_rows], 3_000_000))
    save_tokenizer(train_tokenizer(sample, int(cfg["vocab_size"])), wd / "tokenizer")
    tok = PreTrainedTokenizerFast.from_pretrained(str(wd / "tokenizer"))
    streams, natural = {}, {}
    for d in sorted(set(domain[train_rows]) - {""}):
        rows = [i for i in train_rows if domain[i] == d]
        enc = tok([texts[i] for i in rows], add_special_tokens=False)["input_ids"]
        natural[d] = int(sum(len(e) + 1 for e in enc))  # the pool's own token share
        toks = np.fromiter((t for e in enc for t in (*e, tok.eos_token_id)), dtype=np.int32)
        streams[d] = toks[: int(cfg["max_stream_tokens"])]
    np.savez(wd / "streams.npz", **streams)
    heldout: dict[str, list[str]] = {}
    for i in sorted(np.flatnonzero(held), key=lambda i: (sources[i], ids[i])):
        docs = heldout.setdefault(sources[i], [])
        if texts[i] and len(docs) < int(cfg["heldout_docs_per_source"]):
            docs.append(texts[i])
    info = {"domains": sorted(streams), "natural_tokens": natural, "clusters": clusters, "embeddings": embed_stats,
            "heldout_docs": {s: len(v) for s, v in heldout.items()}}
    write_json_atomic(wd / "heldout.json", heldout)
    write_json_atomic(wd / "prepared.json", info)
    log.info("mixture: %d domains, %s", len(streams), natural)
    return info


def load_work() -> dict:
    wd = work_dir()
    with np.load(wd / "streams.npz") as z:
        streams = {k: z[k] for k in z.files}
    return {"streams": streams, "heldout": json.loads((wd / "heldout.json").read_text()),
            "tokenizer_dir": str(wd / "tokenizer"), **json.loads((wd / "prepared.json").read_text())}


# ---------------------------------------------------------------- candidates

def _normalise(w: np.ndarray) -> np.ndarray:
    w = np.maximum(w, 0)
    return w / w.sum()


def caps(cfg: dict, info: dict) -> np.ndarray:
    """Each domain's largest weight: ``max_repeat`` x its natural token share (at most 1).

    Mix realises a share s by repeating the domain's records s / natural share times. Without a cap
    the search learned to repeat a 2,000-token code domain ~350x: it lowers held-out code bpb at
    proxy scale and costs every other source (reports/mixture_uncapped.md). Repeats beyond ~4 epochs are worth
    little more than fresh data is (Muennighoff et al., 2023, Scaling Data-Constrained Language Models).
    """
    names = info["domains"]
    if cfg["max_repeat"] is None:
        return np.ones(len(names))
    total = sum(info["natural_tokens"][d] for d in names) or 1
    # max_repeat >= 1 (config) keeps the caps summing to >= 1: every capped simplex is non-empty.
    return np.minimum(1.0, float(cfg["max_repeat"]) * np.asarray([info["natural_tokens"][d] / total for d in names]))


def within_caps(W: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """Each row (a mixture) moved into {w <= cap, sum w = 1}: capped domains sit at their cap and the
    rest grow in proportion (water-filling); a row already inside is unchanged."""
    out = np.atleast_2d(np.asarray(W, dtype=np.float64)).copy()
    for w in out:
        w[:] = _normalise(w)
        for _ in range(len(w)):
            over = w > cap
            if not over.any():
                break
            free = ~over & (w < cap)
            w[over] = cap[over]
            room = 1.0 - w.sum()
            if free.any() and w[free].sum() > 0:
                w[free] += room * w[free] / w[free].sum()
            elif free.any():
                w[free] += room / free.sum()
    return out


def propose(params: dict, round_index: int, results: list[dict]) -> list[dict]:
    """Candidates of one round (dicts with name, weights, seed)."""
    cfg = config(params)
    info = json.loads((work_dir() / "prepared.json").read_text())
    names = info["domains"]
    rng = np.random.default_rng([cfg["seed"], round_index])
    n = int(cfg["candidates_per_round"])
    cap = caps(cfg, info)
    if round_index == 0 or not results:
        anchors = [anchor_weights(a, info, cap) for a in (cfg["anchors"] or [])][:n]
        W = rng.dirichlet(np.full(len(names), float(cfg["dirichlet_alpha"])), size=n - len(anchors))
        W = np.concatenate([np.asarray(anchors, dtype=np.float64).reshape(-1, len(names)), within_caps(W, cap)])
    else:
        model = pred.PREDICTORS[cfg["predictor"]](results, names)
        best = np.asarray([results[int(np.argmin([r["bpb_mean"] for r in results]))]["weights"][d] for d in names])
        pool = within_caps(rng.dirichlet(float(cfg["local_concentration"]) * _normalise(best) + 0.1,
                                         size=int(cfg["pool_samples"])), cap)
        W = pool[np.argsort(model.predict(pool))[:n]]
    return [{"name": f"r{round_index}_c{j}", "round": round_index, "seed": cfg["seed"],
             "weights": {d: float(x) for d, x in zip(names, w)}} for j, w in enumerate(W)]


def anchor_weights(kind: str, info: dict, cap: np.ndarray | None = None) -> list[float]:
    """``uniform`` over the domains (moved within ``cap``: equal shares where the caps allow) or ``natural``
    (the pool's own token shares, always within the caps)."""
    names = info["domains"]
    if kind == "uniform":
        w = np.full(len(names), 1.0 / len(names))
        return [float(x) for x in (within_caps(w, cap)[0] if cap is not None else w)]
    total = sum(info["natural_tokens"][d] for d in names) or 1
    return [info["natural_tokens"][d] / total for d in names]


def run_proxy(params: dict, candidate: dict) -> dict:
    """Train and score one candidate: the unit of work of the pool and of each mapped task.

    ``bpb_mean`` is the search target: the mean over held-out sources (``mixture.target: mean``)
    or one named held-out source's bits per byte. With ``seeds_per_candidate`` n > 1 the candidate
    trains at n seeds and its scores are their means: one seed's data draws (shared by every candidate
    through common random numbers) can favour a mixture that no other seed favours."""
    cfg = config(params)
    work, seed = load_work(), int(candidate.get("seed", cfg["seed"]))
    seeds = [seed + REPLICATE_STRIDE * k for k in range(int(cfg["seeds_per_candidate"]))]
    runs = [train_and_score(work, candidate["weights"], cfg["proxy"], s) for s in seeds]
    bpb = {src: float(np.mean([r["bpb"][src] for r in runs])) for src in runs[0]["bpb"]}
    score = {"bpb": bpb, "bpb_mean": float(np.mean(list(bpb.values()))),
             "final_loss": float(np.mean([r["final_loss"] for r in runs])), "seeds": seeds}
    if cfg["target"] != "mean":
        if cfg["target"] not in score["bpb"]:
            raise ValueError(f"mixture.target {cfg['target']!r} is not a held-out source: {sorted(score['bpb'])}")
        score["bpb_mean"] = score["bpb"][cfg["target"]]
    return {**candidate, **score, "target": cfg["target"]}


# ---------------------------------------------------------------- finalize / entry point

def final_weights(cfg: dict, results: list[dict], names: list[str], model,
                  cap: np.ndarray | None = None) -> dict[str, float]:
    ranked = sorted(results, key=lambda r: (r["bpb_mean"], r["name"]))
    method, k = cfg["final"]["method"], int(cfg["final"]["k"])
    if method == "best":
        w = np.asarray([ranked[0]["weights"][d] for d in names])
    elif method == "top_k_mean":
        w = np.mean([[r["weights"][d] for d in names] for r in ranked[:k]], axis=0)
    else:  # predicted: the predictor's best of a pool around the k best measured
        rng = np.random.default_rng([cfg["seed"], 10_000])
        centre = np.mean([[r["weights"][d] for d in names] for r in ranked[:k]], axis=0)
        pool = rng.dirichlet(float(cfg["local_concentration"]) * _normalise(centre) + 0.1, size=int(cfg["pool_samples"]))
        pool = within_caps(pool, cap) if cap is not None else pool
        w = pool[int(np.argmin(model.predict(pool)))]
    w = _normalise(np.asarray(w, dtype=np.float64))
    return {d: float(x) for d, x in zip(names, w)}


def finalize(params: dict, results: list[dict]) -> dict:
    cfg = config(params)
    info = json.loads((work_dir() / "prepared.json").read_text())
    names = info["domains"]
    results = sorted(results, key=lambda r: (r["round"], r["name"]))
    model = pred.PREDICTORS[cfg["predictor"]](results, names)
    X, _ = pred.xy(results, names)
    for r, p in zip(results, model.predict(X)):
        r["predicted_bpb_mean"] = float(p)
    best = min(results, key=lambda r: r["bpb_mean"])
    cap = caps(cfg, info)
    phase1 = final_weights(cfg, results, names, model, cap)
    comparison = pred.compare(results, names)
    natural_total = sum(info["natural_tokens"].values()) or 1
    doc = {
        "target": ("bpb_mean over held-out sources" if cfg["target"] == "mean"
                   else f"bpb of the held-out source {cfg['target']}") + " (lower is better)",
        "phase1_weights": phase1,
        "final": cfg["final"],
        "best_candidate": best["name"],
        "natural_weights": {d: info["natural_tokens"][d] / natural_total for d in names},
        "uniform_weights": dict(zip(names, anchor_weights("uniform", info, cap))),
        "caps": dict(zip(names, map(float, cap))),
        "domains": names,
        "clusters": info["clusters"],
        "candidates": results,
        "predictor": {"kind": cfg["predictor"], "features": names, "trained_on": len(results),
                      "comparison": {k: {"spearman_loo": v["spearman_loo"]} for k, v in comparison.items()}},
        "config": {k: cfg[k] for k in ("embedder", "clusters", "rounds", "candidates_per_round", "anchors", "target",
                                       "proxy", "predictor", "max_repeat", "seeds_per_candidate")},
    }
    write_json_atomic(resolve(OUT_DIR) / MIXTURE, doc)
    log.info("mixture: best %s bpb %.4f", best["name"], best["bpb_mean"])
    return doc


def run(params: dict) -> dict:
    """``dvc repro``: the whole search with the proxies in a process pool."""
    from pipelines.core.executor import get_executor

    cfg = config(params)
    out = resolve(OUT_DIR)
    out.mkdir(parents=True, exist_ok=True)
    if not cfg["enabled"]:
        # Search off (the fast demo): an empty result that mix.phase1.source = weights ignores.
        doc = {"enabled": False, "phase1_weights": {}, "candidates": []}
        write_json_atomic(out / MIXTURE, doc)
        return {"stage": "mixture_search", "enabled": False}
    prepare(params)
    executor = get_executor(params.get("executor"))
    results: list[dict] = []
    for r in range(int(cfg["rounds"])):
        cands = propose(params, r, results)
        results += executor.map(_proxy_job, [(params, c) for c in cands])
    doc = finalize(params, results)
    return {"stage": "mixture_search", "enabled": True, "best": doc["best_candidate"],
            "candidates": len(results), "predictor": doc["predictor"]["comparison"]}


def _proxy_job(job: tuple[dict, dict]) -> dict:
    return run_proxy(*job)
