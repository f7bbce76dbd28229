"""Dedup correctness on a labelled near-duplicate set from real text: precision / recall per Jaccard bucket.

Set: real base documents (news lines, web crawl docs, Shakespeare scenes), each with one variant
edited by word substitution to a target shingle Jaccard (0.5 ... 0.95, cycling; fixed seed), plus
the First Folio spelling of every modern Shakespeare scene (naturally related text, low Jaccard).
Ground truth is the exact Jaccard of word 5-gram sets for *every* pair (sparse matrix product).
Predicted: two records are in the same duplicate cluster. Systems: our stage (LSH 14x8; and with
verify_threshold 0.8, the default params: the headline), our LSH alone, and datasketch MinHashLSH
(same 14x8) as the anchor. The 0.7-0.8 bucket holds the hard negatives: LSH pairs many of them,
verification must not.
Target: precision >= 0.95 and recall >= 0.90 for pairs with J >= 0.8.
"""
from __future__ import annotations

import gzip
import json
import os
import random
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml
from scipy.sparse import csr_matrix

REPO = Path(__file__).resolve().parents[1]
TEXT = REPO.parent / "shared" / "data" / "text"
RESULTS = REPO / "bench" / "results"
NGRAM = 5
LEVELS = [0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
BUCKETS = [0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0001]
PLAYS = ["hamlet", "julius_caesar", "lear", "macbeth", "merchant_of_venice"]


def _words(text):
    from pipelines.dedup.normalize import words

    return words(text)


def shingles(text: str) -> set:
    w = _words(text)
    return {" ".join(w[i:i + NGRAM]) for i in range(len(w) - NGRAM + 1)} if len(w) >= NGRAM else {" ".join(w)}


def scenes(play: str, folio: bool, max_words: int = 1500) -> list[str]:
    path = TEXT / "books" / "open-shakespeare" / f"{play}_gut{'_f' if folio else ''}.txt"
    pattern = r"^\s*(?:Actus|Scena|Scoena|Scene)\b.*$" if folio else r"^\s*SCENE [IVXL]+\..*$"
    parts = re.split(pattern, path.read_text(encoding="utf-8"), flags=re.M | (0 if folio else re.I))
    return [" ".join(p.split()[:max_words]) for p in parts if len(p.split()) >= 200]


def bases(n_news: int = 120, n_web: int = 200) -> list[tuple[str, str]]:
    lines = (TEXT / "news" / "lee_background.cor").read_text(encoding="utf-8").splitlines()
    out = [("news", t) for t in dict.fromkeys(l for l in lines if len(l.split()) >= 100)][:n_news]
    with gzip.open(next((TEXT / "web_cc").glob("*.jsonl.gz")), "rt", encoding="utf-8") as f:
        web = [json.loads(line)["text"] for line in f]
    out += [("web", t) for t in web if 150 <= len(t.split()) <= 2000][:n_web]
    for play in PLAYS:
        out += [("books", t) for t in scenes(play, False)]
    return out


def edit_to_jaccard(text: str, target: float, rng: random.Random, vocab: list[str]) -> str:
    """The most random word substitutions that keep the shingle Jaccard >= target (binary search)."""
    tokens = text.split()
    order = rng.sample(range(len(tokens)), len(tokens))
    repl = [rng.choice(vocab) for _ in order]
    base = shingles(text)

    def edited(k):
        t = list(tokens)
        for pos, w in zip(order[:k], repl[:k]):
            t[pos] = w
        return " ".join(t)

    def j(k):
        s = shingles(edited(k))
        return len(base & s) / len(base | s)

    lo, hi = 1, len(tokens)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if j(mid) >= target else (lo, mid - 1)
    return edited(lo)


def labelled_set(seed: int = 7) -> list[dict]:
    from pipelines.core.schema import make_record_id

    rng = random.Random(seed)
    base = bases()
    vocab = sorted({w for _, t in base for w in t.split() if w.isalpha()})
    records = []
    for i, (source, text) in enumerate(base):
        records.append({"id": make_record_id(source, f"base-{i}"), "source": source, "text": text, "kind": "base"})
        level = LEVELS[i % len(LEVELS)]
        records.append({"id": make_record_id(source, f"var-{i}"), "source": source, "kind": f"edit@{level}",
                        "text": edit_to_jaccard(text, level, rng, vocab)})
    for play in PLAYS:
        records += [{"id": make_record_id("books", f"folio-{play}-{k}"), "source": "books", "kind": "folio", "text": t}
                    for k, t in enumerate(scenes(play, True))]
    for r in records:
        r["url"] = f"https://example.org/{r['id']}"
    return records


def exact_jaccard_pairs(records: list[dict], min_j: float = 0.0) -> dict[tuple[int, int], float]:
    """Exact Jaccard of every pair with at least one shared shingle (a sparse product)."""
    vocab, rows, cols = {}, [], []
    for i, r in enumerate(records):
        for s in shingles(r["text"]):
            rows.append(i)
            cols.append(vocab.setdefault(s, len(vocab)))
    m = csr_matrix((np.ones(len(rows), np.int32), (rows, cols)), shape=(len(records), len(vocab)))
    m.data[:] = 1
    sizes = np.asarray(m.sum(axis=1)).ravel()
    inter = (m @ m.T).tocoo()
    out = {}
    for a, b, v in zip(inter.row, inter.col, inter.data):
        if a < b:
            j = v / (sizes[a] + sizes[b] - v)
            if j >= min_j:
                out[(int(a), int(b))] = float(j)
    return out


def ours_clusters(records: list[dict], verify: float | None) -> list[int]:
    from pipelines.core.shards import read_all, shard_name, write_shard

    root = Path(tempfile.mkdtemp(prefix="dedup-quality-"))
    old = os.environ.get("PIPELINES_WORKSPACE")
    try:
        os.environ["PIPELINES_WORKSPACE"] = str(root)
        for s in range(3):
            write_shard(root / "data" / "filter" / shard_name(s),
                        pa.Table.from_pylist([{k: r[k] for k in ("id", "url", "source", "text")} for r in records[s::3]]))
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params["dedup"]["decontam"]["enabled"] = False
        params["dedup"]["minhash"]["verify_threshold"] = verify
        from pipelines.stages import runner
        run = runner("dedup")

        run(params)
        head = {i: i for i in read_all(root / "data" / "dedup", columns=["id"]).column("id").to_pylist()}
        removed = read_all(root / "data" / "dedup" / "removed", columns=["id", "dup_of"])
        head.update(zip(removed.column("id").to_pylist(), removed.column("dup_of").to_pylist()))
    finally:
        if old is None:
            os.environ.pop("PIPELINES_WORKSPACE", None)
        else:
            os.environ["PIPELINES_WORKSPACE"] = old
        shutil.rmtree(root, ignore_errors=True)
    return [head[r["id"]] for r in records]


def datasketch_clusters(records: list[dict]) -> list[int]:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(num_perm=112, params=(14, 8))
    sigs = []
    for i, r in enumerate(records):
        m = MinHash(num_perm=112, seed=1)
        m.update_batch([s.encode() for s in shingles(r["text"])])
        lsh.insert(i, m)
        sigs.append(m)
    parent = list(range(len(records)))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, m in enumerate(sigs):
        for j in lsh.query(m):
            a, b = find(i), find(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return [find(i) for i in range(len(records))]


def score(cluster: list, jac: dict[tuple[int, int], float]) -> dict:
    """P/R at J >= 0.8 and the merge rate per Jaccard bucket (pairs with no shared shingle: bucket 0, never merged)."""
    groups = {}
    for i, c in enumerate(cluster):
        groups.setdefault(c, []).append(i)
    merged = {(a, b) for g in groups.values() for k, a in enumerate(g) for b in g[k + 1:]}
    merged = {(min(p), max(p)) for p in merged}
    truth = {p for p, j in jac.items() if j >= 0.8}
    tp = len(truth & merged)
    buckets = []
    for lo, hi in zip(BUCKETS[:-1], BUCKETS[1:]):
        pairs = [p for p, j in jac.items() if lo <= j < hi]
        n_merged = sum(p in merged for p in pairs)
        buckets.append({"jaccard": [lo, min(hi, 1.0)], "pairs": len(pairs), "merged": n_merged,
                        "merge_rate": round(n_merged / len(pairs), 4) if pairs else None})
    return {"precision_j>=0.8": round(tp / len(merged), 4) if merged else 1.0,
            "recall_j>=0.8": round(tp / len(truth), 4) if truth else 1.0,
            "merged_pairs": len(merged), "true_pairs": len(truth), "buckets": buckets}


def main() -> dict:
    started = time.perf_counter()
    records = labelled_set()
    jac = exact_jaccard_pairs(records, min_j=0.05)
    systems = {
        "ours": score(ours_clusters(records, 0.8), jac),  # the default params: LSH + Jaccard verification at 0.8
        "ours_lsh_only": score(ours_clusters(records, None), jac),
        "datasketch": score(datasketch_clusters(records), jac),
    }
    f1 = {k: 2 * v["precision_j>=0.8"] * v["recall_j>=0.8"] / max(v["precision_j>=0.8"] + v["recall_j>=0.8"], 1e-9)
          for k, v in systems.items()}
    import psutil

    result = {
        "name": "dedup_quality",
        "metric": "F1 of same-cluster pairs vs exact Jaccard >= 0.8 (targets: precision >= 0.95, recall >= 0.90)",
        "ours": round(f1["ours"], 4),
        "anchor": round(f1["datasketch"], 4),
        "anchor_name": "datasketch MinHashLSH, 14x8, same shingles",
        "ratio": round(f1["ours"] / f1["datasketch"], 4) if f1["datasketch"] else None,
        "input": f"{len(records)} records: {sum(r['kind'] == 'base' for r in records)} real bases + one edited variant each "
                 f"at J in {LEVELS} (seed 7), {sum(r['kind'] == 'folio' for r in records)} First Folio scenes",
        "peak_rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
        "meets_target": {k: v["precision_j>=0.8"] >= 0.95 and v["recall_j>=0.8"] >= 0.90 for k, v in systems.items()},
        "systems": systems,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dedup_quality.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "systems"}, indent=2))
    return result


if __name__ == "__main__":
    main()
