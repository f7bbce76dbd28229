"""From duplicate clusters to each shard's drops, as executor tasks: the driver never holds a record.

After the components (pipelines.dedup.clusters) every node range has a file of
its clustered records: label (the cluster's best ranked record) and, for the
label itself, the cluster's size. Two maps over node ranges then give every
shard what its pass 3 needs, as small files partitioned by shard:

1. ``decide_range`` (per node range of this run's records): each record's code:
   kept alone, kept as a cluster's head (with the size), or dropped as an exact,
   URL or near duplicate (an exact copy of a better ranked record is an exact
   dup; else one whose URL another has is a URL dup; else a near dup) or as
   contaminated. A dropped duplicate needs its head's id and cluster size, which
   live in the head's node range: it asks there (a request file by node range).
   The range's survivors (rank order: ids, sources, where they are) and their
   positions among the kept feed the dedup index.
2. ``answer_range`` (per node range, the dedup index's too): answers the requests
   for its heads: id, cluster size and, for an index entry, the run that kept it.

Pass 3 of a shard reads its slice of every range's decisions and answers
(``shard_decisions``).
"""
from __future__ import annotations

import numpy as np

from pipelines.dedup import history, spill
from pipelines.dedup.pass1 import EXACT, URL, contamination_rel

KEPT, HEAD, EXACT_COPY, URL_COPY, NEAR, CONTAMINATED_CODE, SEMANTIC_CODE = range(7)
DEC_DTYPE = np.dtype([("shard", "<u4"), ("row", "<u4"), ("code", "u1"), ("size", "<i8")])
REQ_DTYPE = np.dtype([("head", "<i8"), ("shard", "<u4"), ("row", "<u4")])
SEM_DTYPE_FIELDS = [("shard", "<u4"), ("row", "<u4"), ("dropped", "u1"), ("size", "<i8")]


def answer_dtype(id_width: int, added_width: int) -> np.dtype:
    return np.dtype([("shard", "<u4"), ("row", "<u4"), ("size", "<i8"), ("head", f"S{max(id_width, 1)}"),
                     ("added", f"S{max(added_width, 1)}")])


def semantic_dtype(id_width: int) -> np.dtype:
    """A semantic decision: a dropped record (naming its kept record) or a kept one whose group grew."""
    return np.dtype([*SEM_DTYPE_FIELDS, ("head", f"S{max(id_width, 1)}")])


def survivor_dtype(id_width: int) -> np.dtype:
    return np.dtype([("shard", "<u4"), ("row", "<u4"), ("src", "<u2"), ("id", f"S{max(id_width, 1)}"),
                     ("rank", "<i8")])


def _ranks(store, parts: list[tuple[str, int, int]]) -> np.ndarray:
    return spill.read_parts(store, np.dtype("<i8"), parts)


def by_shard(store, rel: str, rec: np.ndarray, shards: int) -> np.ndarray:
    """Write entries (with shard, row fields) sorted by shard then row; returns the per-shard offsets."""
    rec = rec[np.lexsort((rec["row"], rec["shard"]))]
    return spill.write_partitioned(store, rel, rec, rec["shard"], np.arange(1, shards))


def decide_range(job: dict) -> dict:
    """Map 1 for one node range of this run's records: codes, requests, survivors and their kept positions."""
    store, lo, hi, out = job["store"], job["lo"], job["hi"], job["out"]
    table = spill.load_array(store, job["table"])  # the range's records in rank order (pipelines.dedup.rank)
    nodes = spill.load_array(store, job["nodes"])
    code, size = np.zeros(hi - lo, np.uint8), np.zeros(hi - lo, np.int64)
    centre = nodes["label"] == nodes["node"]
    code[nodes["node"][centre] - lo], size[nodes["node"][centre] - lo] = HEAD, nodes["size"][centre]
    copies = {}
    for kind in (EXACT, URL):
        copies[kind] = np.zeros(hi - lo, bool)
        copies[kind][_ranks(store, job["nonheads"].get(kind, [])) - lo] = True
    leaf, head = nodes["node"][~centre] - lo, nodes["label"][~centre]
    code[leaf] = np.where(copies[EXACT][leaf], EXACT_COPY, np.where(copies[URL][leaf], URL_COPY, NEAR))
    code[_ranks(store, job["dropped"]) - lo] = CONTAMINATED_CODE  # they have no keys, so no cluster

    listed = np.flatnonzero(code != KEPT)
    dec = np.empty(len(listed), DEC_DTYPE)
    dec["shard"], dec["row"], dec["code"], dec["size"] = (table["shard"][listed], table["row"][listed],
                                                          code[listed], size[listed])
    req = np.empty(len(leaf), REQ_DTYPE)
    req["head"], req["shard"], req["row"] = head, table["shard"][leaf], table["row"][leaf]
    kept = np.flatnonzero(code <= HEAD)
    surv = np.empty(len(kept), survivor_dtype(table.dtype["id"].itemsize))
    for f in ("shard", "row", "src", "id"):
        surv[f] = table[f][kept]
    surv["rank"] = lo + kept
    spill.save_array(store, out + ".surv.npy", surv)
    position = np.full(hi - lo, -1, np.int64)  # among this range's kept records (the index's hid, less a base)
    position[kept] = np.arange(len(kept))
    spill.save_array(store, out + ".kept.npy", position)
    return {"dec": by_shard(store, out + ".dec.bin", dec, job["shards"]),
            "req": spill.write_partitioned(store, out + ".req.bin", req, req["head"], job["bounds"]),
            "kept": len(kept), "dropped": int((code > HEAD).sum())}


def answer_range(job: dict) -> dict:
    """Map 2 for one node range: each request's head id, cluster size (and the run that kept an index entry)."""
    store = job["store"]
    req = spill.read_parts(store, REQ_DTYPE, job["requests"])
    head, added = np.zeros(len(req), "S1"), np.zeros(len(req), "S1")
    if len(req) and job["table"] is not None:
        head = spill.load_array(store, job["table"])["id"][req["head"] - job["lo"]]
    elif len(req):  # the dedup index's entries: their ids and the run that kept them are in its records table
        records = history.take_records(job["index"]["store"], job["index"]["records"], req["head"], ["id", "added"])
        head = np.array([s.encode() for s in records["id"]], "S")
        added = np.array([s.encode() for s in records["added"]], "S")
    ans = np.empty(len(req), answer_dtype(head.dtype.itemsize, added.dtype.itemsize))
    ans["shard"], ans["row"], ans["head"], ans["added"] = req["shard"], req["row"], head, added
    if len(req):
        nodes = spill.load_array(store, job["nodes"])
        centres = nodes[nodes["label"] == nodes["node"]]
        ans["size"] = centres["size"][np.searchsorted(centres["node"], req["head"])]
    return {"ans": by_shard(store, job["out"], ans, job["shards"]), "dtype": ans.dtype.descr}


def shard_decisions(ctx: dict, rows: int) -> tuple[dict, dict, dict]:
    """(drops, heads, flags) of one shard, by row: drops[row] = (reason code, head id, cluster size, the index
    generation that kept the head or None); heads[row] = its cluster's size; flags[row] = benchmark indexes."""
    store = ctx["store"]
    drops, heads, flags = {}, {}, {}
    dec = spill.read_parts(store, DEC_DTYPE, ctx["dec"])
    ans = [spill.read_rows(store, rel, np.dtype(dtype), a, b) for rel, a, b, dtype in ctx["ans"]]
    answers = {int(r): (h.decode(), int(s), a.decode() or None) for part in ans for r, h, s, a in
               zip(part["row"], part["head"], part["size"], part["added"])}
    for row, code, size in zip(dec["row"].tolist(), dec["code"].tolist(), dec["size"].tolist()):
        if code == HEAD:
            heads[row] = size
        elif code == CONTAMINATED_CODE:
            drops[row] = (code, None, 1, None)
        else:
            head, cluster, added = answers[row]
            drops[row] = (code, head, cluster, added)
    if ctx.get("semantic"):
        sem = spill.read_parts(store, np.dtype(ctx["semantic_dtype"]), ctx["semantic"])
        for row, dropped, size, head in zip(sem["row"].tolist(), sem["dropped"].tolist(), sem["size"].tolist(),
                                            sem["head"]):
            if dropped:
                drops[row] = (SEMANTIC_CODE, head.decode(), size, None)
            else:
                heads[row] = max(heads.get(row, 1), size)
    if ctx["sets"]:  # decontamination on: pass 1 wrote the shard's flagged rows
        rec = spill.load_array(store, contamination_rel(ctx["shard"]))
        flags = {int(r): np.flatnonzero(f).tolist() for r, f in zip(rec["row"], rec["flags"])}
    if len(drops) + len(heads) > rows:
        raise RuntimeError(f"dedup: decisions for more records than the shard's {rows}")
    return drops, heads, flags
