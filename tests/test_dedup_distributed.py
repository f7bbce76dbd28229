"""The distributed global pass: any partitioning, any worker count, local or S3 scratch gives the same bytes, and
the clusters a brute-force reference of the decision rules gives (planted exact, URL and near duplicates)."""
from __future__ import annotations

import json
import logging
import random
import re
import shutil
from collections import defaultdict

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipelines.core.shards import read_all
from pipelines.core.store import LocalStore, S3Store
from pipelines.dedup import spill
from pipelines.dedup.clusters import DUPLICATE_URL, EXACT_DUP, NEAR_DUP
from pipelines.dedup.components import LARGE, components, load_nodes, write_edges
from pipelines.dedup.minhash import MinHasher
from pipelines.dedup.normalize import normalize_text, words
from pipelines.dedup.timing import PhaseClock
from pipelines.dedup.urls import normalize_url
from pipelines.stages import runner
from tests.fixtures.dedup_inputs import dedup_record, near_dup_set, write_filter_output  # noqa: F401 (fixture)
from tests.fixtures.moto_s3 import moto_url, s3env  # noqa: F401 (fixtures)
from tests.fixtures.outputs import snapshot

run = runner("dedup")
COUNTS = re.compile(r"(\d+) records, (\d+) candidate pairs, (\d+) after verification, (\d+) clusters")


def _serial_map(fn, jobs):
    return [fn(j) for j in jobs]


@pytest.mark.parametrize("parts", [1, 3, 16])
def test_star_rounds_find_the_components_scipy_finds(tmp_path, parts):
    """Paths in rising and falling rank order, stars, cycles and random edges: labels = each component's smallest node."""
    rng = np.random.default_rng(parts)
    n = 3000
    chain = np.arange(0, 400)  # a path 0-1-...-399: the slowest case for min-label propagation
    back = np.arange(1399, 999, -1)  # a path visiting ranks downwards
    perm = rng.permutation(np.arange(2000, 2600))  # a path in random rank order
    src = np.r_[chain[:-1], back[:-1], perm[:-1], rng.integers(2600, n, 150), np.full(30, 2999)]
    dst = np.r_[chain[1:], back[1:], perm[1:], rng.integers(2600, n, 150), rng.integers(2600, 2999, 30)]
    store, bounds = LocalStore(tmp_path), spill.node_bounds(n, parts)
    half = len(src) // 2  # edges from two writers, as the bucket and pair tasks give them
    inputs = [(f"in{k}.bin", write_edges(store, f"in{k}.bin", s, d, LARGE, bounds))
              for k, (s, d) in enumerate([(src[:half], dst[:half]), (src[half:], dst[half:])])]
    nodes = load_nodes(store, components(_serial_map, store, inputs, bounds, PhaseClock())["nodes"])

    _, label = connected_components(coo_matrix((np.ones(len(src)), (src, dst)), shape=(n, n)), directed=False)
    smallest = np.full(label.max() + 1, n)
    np.minimum.at(smallest, label, np.arange(n))
    size = np.bincount(label)
    linked = np.unique(np.r_[src, dst][np.r_[src, dst] != np.r_[dst, src]])
    assert nodes["node"].tolist() == linked.tolist()
    assert nodes["label"].tolist() == smallest[label[linked]].tolist()
    assert nodes["size"].tolist() == size[label[linked]].tolist()


# ---------------------------------------------------------------- the stage against a brute-force reference

@pytest.fixture(scope="module")
def planted(near_dup_set) -> list[dict]:
    """near_dup_set (near copies, hard negatives) + exact copies, shared URLs, quality ties and gaps, and eval
    questions (contaminated: they take no part in dedup, their exact copy neither)."""
    rng = random.Random(4)
    records = [dict(r, quality_score=round(rng.random(), 1)) for r in near_dup_set]  # ties: id decides
    for r in records[::9]:
        r["quality_score"] = None
    for i, r in enumerate(records[:40:3]):  # exact copies: case and spacing changed
        copy = r["text"].upper() if i % 2 else "  " + r["text"].replace(" ", "   ")
        records.append(dict(dedup_record("web", f"copy-{i}", copy), quality_score=rng.choice([None, 0.9, 0.2])))
    for i, r in enumerate(records[5:60:6]):  # another page at the same URL (another spelling of it)
        text = " ".join(r["text"].split()[::-1])  # a text of its own (reversed words: no shared 5-gram)
        url = r["url"].replace("https://", "http://www.") + "/#top"
        records.append(dict(dedup_record("news", f"url-{i}", text), url=url, quality_score=0.95 if i % 2 else 0.05))
    with open("samples/eval/gsm8k_test_lines0001-0500.jsonl") as f:
        questions = [json.loads(line)["question"] for line in f][:3]
    for i, q in enumerate(questions + questions[:1]):
        records.append(dict(dedup_record("math", f"eval-{i}", q + " " + q), quality_score=0.5))
    rng.shuffle(records)
    return records


def brute_force(records: list[dict], excluded: set[str], threshold: float = 0.8) -> tuple[dict, int, int]:
    """The decision rules, spelled out: id -> (kept id, reason or None, cluster size); candidate and verified pairs."""
    def rank_key(r):
        return (r["quality_score"] is None, -(r["quality_score"] or 0.0), r["id"])

    recs = sorted((r for r in records if r["id"] not in excluded), key=rank_key)  # position = keep rank
    edges, nonhead = [], {"exact": set(), "url": set()}
    for kind, key in (("exact", lambda r: normalize_text(r["text"])), ("url", lambda r: normalize_url(r["url"]))):
        groups = defaultdict(list)
        for i, r in enumerate(recs):
            if key(r) is not None:
                groups[key(r)].append(i)
        for members in groups.values():
            edges += [(i, members[0]) for i in members[1:]]
            nonhead[kind] |= set(members[1:])
    hasher = MinHasher(5, 14, 8, 1)
    docs = [words(r["text"]) for r in recs]
    bands = hasher.band_hashes(hasher.signatures(docs))
    hashes, counts = hasher.shingle_hashes(docs)
    shingles = [set(s.tolist()) for s in np.split(hashes, np.cumsum(counts)[:-1])]
    candidates = set()
    for b in range(bands.shape[1]):
        groups = defaultdict(list)
        for i in range(len(recs)):
            if i not in nonhead["exact"]:
                groups[int(bands[i, b])].append(i)
        candidates |= {(members[0], i) for members in groups.values() for i in members[1:]}
    verified = [(u, v) for u, v in candidates if len(shingles[u] & shingles[v]) / len(shingles[u] | shingles[v]) >= threshold]
    parent = list(range(len(recs)))

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    for u, v in edges + verified:
        a, b = sorted((find(u), find(v)))
        parent[b] = a  # the smaller rank stays the root: a root is its component's best ranked record
    size = defaultdict(int)
    for i in range(len(recs)):
        size[find(i)] += 1
    out = {}
    for i, r in enumerate(recs):
        head = find(i)
        if size[head] > 1:
            reason = None if head == i else EXACT_DUP if i in nonhead["exact"] else \
                DUPLICATE_URL if i in nonhead["url"] else NEAR_DUP
            out[r["id"]] = (recs[head]["id"], reason, size[head])
    return out, len(candidates), len(verified)


def _stage_clusters(ws) -> tuple[dict, set[str]]:
    """id -> (kept id, reason, cluster size) of every clustered record; the ids dropped as contaminated."""
    out, excluded = {}, set()
    for r in read_all(ws.path("data", "dedup", "removed")).to_pylist():
        if r["drop_reason"] == "contaminated":
            excluded.add(r["id"])
        else:
            out[r["id"]] = (r["dup_of"], r["drop_reason"], json.loads(r["drop_detail"])["cluster_size"])
    sizes = {kept: size for kept, _, size in out.values()}
    for r in read_all(ws.path("data", "dedup"), columns=["id", "dup_cluster"]).to_pylist():
        if r["dup_cluster"] is not None:
            out[r["id"]] = (r["id"], None, sizes[r["id"]])
    return out, excluded


def _dedup(ws, caplog, monkeypatch, workers: int, chunk: int) -> tuple[dict, tuple]:
    monkeypatch.setenv("PIPELINES_WORKERS", str(workers))
    shutil.rmtree(ws.path("data", "dedup"), ignore_errors=True)  # from scratch: else an up-to-date run does nothing
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipelines.dedup.stage"):
        summary = run(ws.update("dedup.merge_chunk", chunk))
    counts = [COUNTS.search(m).groups() for m in caplog.messages if COUNTS.search(m)]
    return summary, tuple(int(c) for c in counts[-1])


def _shards(ws) -> dict:
    return {k: v for k, v in snapshot(ws.path("data", "dedup")).items() if k.endswith(".parquet")}


def test_partitions_and_workers_give_the_same_bytes_and_the_reference_clusters(workspace, planted, caplog, monkeypatch):
    workspace.update("dedup.exact.url", True)
    write_filter_output(workspace, planted, 3)
    one, counts = _dedup(workspace, caplog, monkeypatch, workers=1, chunk=1_000_000)  # one range per key kind
    reference = _shards(workspace)
    clusters, excluded = _stage_clusters(workspace)

    expected, candidates, verified = brute_force(planted, excluded)
    assert len(excluded) == 4 and all("/eval-" in r["url"] for r in planted if r["id"] in excluded)
    assert clusters == expected
    assert counts == (len(planted), candidates, verified, sum(1 for k, r, _ in expected.values() if r is None))
    assert min(one[EXACT_DUP], one[DUPLICATE_URL], one[NEAR_DUP]) > 0  # every reason occurs
    assert candidates > verified  # verification cut some candidates: the pair tasks really verified

    for workers, chunk in ((2, 7), (1, 7), (2, 40)):  # 20 and 4 hash ranges, node ranges
        summary, run_counts = _dedup(workspace, caplog, monkeypatch, workers=workers, chunk=chunk)
        assert (summary, run_counts) == (one, counts)
        assert _shards(workspace) == reference, (workers, chunk)


def test_s3_scratch_gives_the_bytes_of_a_local_run(workspace, near_dup_set, s3env, moto_url, monkeypatch):
    """storage.root on S3: the stage's store, and so its scratch (key, shingle, pair and edge files), is an S3Store."""
    s3, bucket = s3env
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    write_filter_output(workspace, near_dup_set, 3)
    workspace.update("dedup.merge_chunk", 40)  # a few ranges: ranged reads of several partitions per file
    run(workspace.params())
    local = json.loads(workspace.path("data", "dedup", "_manifest.json").read_text())

    import pipelines.dedup.stage as stage

    seen = {}
    real = stage.decide

    def decide_on_s3(run_map, store, *args, **kwargs):
        assert isinstance(store, S3Store)
        out = real(run_map, store, *args, **kwargs)
        seen["keys"] = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="lake/dedup/_work/")["Contents"]]
        return out

    monkeypatch.setattr(stage, "decide", decide_on_s3)
    shutil.rmtree(workspace.path("data", "dedup"))
    run(workspace.update("storage", {"root": f"s3://{bucket}/lake"}))
    remote = json.loads(workspace.path("data", "dedup", "_manifest.json").read_text())
    assert {re.sub(r"^.*?_work/[^/]+/", "", k).split("/")[0] for k in seen["keys"]} >= {"keys", "shingles", "pairs", "cc"}
    assert not s3.list_objects_v2(Bucket=bucket, Prefix="lake/dedup/_work/").get("Contents")  # scratch removed
    files = lambda m: {n: e["sha256"] for s in m["shards"].values() for n, e in s["files"].items()}  # noqa: E731
    assert files(remote) == files(local) and any(n.startswith("removed/") for n in files(local))
    for entry in (e for s in remote["shards"].values() for e in s["files"].values()):
        assert entry["uri"].startswith(f"s3://{bucket}/lake/dedup/objects/")
