"""DSIR selection throughput vs the existing quality classifier's scoring, on the same real text.

ours: records/s to compute DSIR keys (hashed uni+bigram counts -> importance log-weight -> Gumbel key);
anchor: records/s of NgramQualityClassifier.score (the quality_topk method's per-record cost). Both in the
same run, so the ratio is meaningful on a shared machine. Also reports the known-answer precision
(share of the target source in a DSIR sample from a 4-source pool).
"""
from __future__ import annotations

import gzip
import json
import resource
import time
from pathlib import Path

import numpy as np

from pipelines.select import dsir
from pipelines.select.ngram_classifier import train
from pipelines.select.sampling import gumbel_top_k, sort_keys

HERE = Path(__file__).resolve().parent
TEXT = HERE.parent.parent / "shared" / "data" / "text"


def _corpus() -> dict[str, list[str]]:
    def lines(p, n):
        return [ln for ln in p.read_text(encoding="utf-8").splitlines() if len(ln) >= 150][:n]

    def jsonl(p, n, fields):
        with gzip.open(p, "rt", encoding="utf-8") as f:
            out = ["\n".join(json.loads(line)[k] for k in fields) for line in f]
        return [t for t in out if len(t) >= 50][:n]

    return {"news": lines(TEXT / "news" / "lee_background.cor", 600),
            "wikipedia": lines(TEXT / "wikipedia" / "wikitext-2_valid.txt", 600),
            "math": jsonl(TEXT / "math" / "gsm8k_train_lines0001-3737.jsonl.gz", 600, ["question", "answer"]),
            "web": jsonl(next((TEXT / "web_cc").glob("*.jsonl.gz")), 600, ["text"])}


def _best_rate(fn, n, repeats=3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def main() -> dict:
    c = _corpus()
    pool = [t for s in ("news", "wikipedia", "math", "web") for t in c[s][len(c[s]) // 2:]]
    labels = [s for s in ("news", "wikipedia", "math", "web") for _ in c[s][len(c[s]) // 2:]]
    ids = [f"{i}" for i in range(len(pool))]
    target = c["news"][: len(c["news"]) // 2]
    model = dsir.ImportanceModel.fit(dsir.bucket_counts(target), dsir.bucket_counts(pool))
    qm = train(target + c["wikipedia"][:300], c["web"][:300], features=262144, ngram_max=2, seed=1)
    ours = _best_rate(lambda: sort_keys(model.log_weights(pool), ids, 1, "select"), len(pool))
    anchor = _best_rate(lambda: qm.score(pool), len(pool))
    k = labels.count("news")
    mask = gumbel_top_k(model.log_weights(pool), ids, k, 1)
    precision = float((np.asarray(labels)[mask] == "news").mean())
    result = {"name": "dsir", "metric": "records/s scored (higher is better)", "ours": round(ours, 1),
              "anchor": round(anchor, 1), "anchor_name": "NgramQualityClassifier.score (hashed 2^18 logreg)",
              "ratio": round(ours / anchor, 3), "input": f"{len(pool)} real records, 4 sources (news target)",
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
              "known_answer_precision": round(precision, 3), "random_precision": round(k / len(pool), 3)}
    out = HERE / "results" / "dsir.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
