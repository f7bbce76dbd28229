"""Connected components of the duplicate graph, distributed: alternating large-star / small-star rounds.

Nodes are keep ranks (0 = kept first), so the smallest node of a component is
the record the component keeps. Edges live in scratch files (pipelines.dedup.spill)
keyed by one endpoint and partitioned by node range; a round is one executor
map, one task per node range, each reading its range's slice of every file of
the previous round and writing one file for the next (Kiveris et al., 2014,
"Connected Components in MapReduce and Beyond"):

- large-star at node u (all its neighbours): link every neighbour larger than u
  to the smallest of u and its neighbours;
- small-star at node u (its neighbours smaller than u): link them and u to the
  smallest of them.

Both keep every component connected and only ever link a node to a smaller
one; alternated they end in a star forest, each component one star around its
smallest node (O(log^2 n) rounds; a duplicate graph, mostly stars already,
takes a few). A large-star task checks its nodes: every node either has no
smaller neighbour (a centre) or exactly one neighbour, smaller (a leaf). When
every task finds that, the graph is that star forest, and the tasks' per-node
results (leaf -> centre, centre -> size) are the components. No process ever
holds more than one node range's edges.
"""
from __future__ import annotations

import logging

import numpy as np

from pipelines.dedup import spill
from pipelines.dedup.timing import PhaseClock

EDGE_DTYPE = np.dtype([("a", "<i8"), ("b", "<i8")])  # an edge as seen from node a (the key) to its neighbour b
NODE_DTYPE = np.dtype([("node", "<i8"), ("label", "<i8"), ("size", "<i8")])  # label: the component's smallest node
LARGE, SMALL = "large", "small"
MAX_ROUNDS = 64
log = logging.getLogger(__name__)


def write_edges(store, rel: str, x: np.ndarray, y: np.ndarray, mode: str, bounds: np.ndarray) -> np.ndarray:
    """Write undirected edges (x, y) keyed for a ``mode`` round: both ways (large), from the larger end (small)."""
    x, y = np.asarray(x, np.int64), np.asarray(y, np.int64)
    loop = x == y
    x, y = x[~loop], y[~loop]
    if mode == LARGE:
        a, b = np.r_[x, y], np.r_[y, x]
    else:
        a, b = np.maximum(x, y), np.minimum(x, y)
    order = np.lexsort((b, a))
    rec = np.empty(len(a), EDGE_DTYPE)
    rec["a"], rec["b"] = a[order], b[order]
    rec = rec[spill.group_starts(np.stack([rec["a"], rec["b"]], 1))] if len(rec) else rec
    return spill.write_partitioned(store, rel, rec, rec["a"], bounds)


def star_step(job: dict) -> dict:
    """One node range's share of a round: read its edges, apply the star operation, write the next round's file."""
    clock = PhaseClock()
    with clock("read"):
        rec = spill.read_parts(job["store"], EDGE_DTYPE, job["parts"])
    with clock("stars"):
        rec = rec[np.lexsort((rec["b"], rec["a"]))]
        a, b = rec["a"], rec["b"]
        if len(a):
            keep = spill.group_starts(np.stack([a, b], 1))
            a, b = a[keep], b[keep]
        first = spill.group_starts(a)  # a node's smallest neighbour comes first
        group = np.cumsum(first) - 1
        node, low = a[first], b[first]
        centre = np.minimum(node, low)[group]  # the smallest of the node and its neighbours, per edge
        if job["mode"] == LARGE:
            big = b > a
            x, y = b[big], centre[big]
            degree = np.bincount(group, minlength=len(node))
            is_centre, is_leaf = low > node, (degree == 1) & (low < node)
            stars = bool((is_centre | is_leaf).all())
        else:
            x, y = np.r_[b, node], np.r_[centre, np.minimum(node, low)]
            stars = False
    with clock("write"):
        offsets = write_edges(job["store"], job["out"], x, y, SMALL if job["mode"] == LARGE else LARGE, job["bounds"])
        if stars:
            nodes = np.empty(len(node), NODE_DTYPE)
            nodes["node"] = node
            nodes["label"] = np.where(is_centre, node, low)
            nodes["size"] = np.where(is_centre, degree + 1, 0)  # a leaf's size is its centre's
            spill.save_array(job["store"], job["out"] + ".nodes.npy", nodes)
    return {"offsets": offsets, "stars": stars, "edges": len(a), "phases": clock.phases,
            **({"nodes": len(node), "centres": int(is_centre.sum())} if stars else {})}


def load_nodes(store, rels: list[str]) -> np.ndarray:
    """Every clustered node with its label and component size, in one array (tests and benchmarks: a run's
    finalize tasks read one node range each)."""
    nodes = [spill.load_array(store, rel) for rel in rels]
    nodes = np.concatenate(nodes) if nodes else np.zeros(0, NODE_DTYPE)
    centres = nodes[nodes["label"] == nodes["node"]]
    leaf = nodes["size"] == 0
    nodes["size"][leaf] = centres["size"][np.searchsorted(centres["node"], nodes["label"][leaf])]
    return nodes


def components(run_map, store, inputs: list[tuple[str, np.ndarray]], bounds: np.ndarray, clock: PhaseClock) -> dict:
    """The components of the edges in ``inputs`` ((rel, node-range offsets) files keyed for a large-star round).

    Returns ``nodes``: per node range, the file (NODE_DTYPE, by node) of every node in it that has an edge:
    its label (its component's smallest node) and, for a centre, the component's size (a leaf's is its
    centre's: ``load_nodes`` joins it); and the counts of ``clustered`` nodes and ``clusters``.
    """
    parts = len(bounds) + 1
    files, mode = inputs, LARGE
    for rnd in range(2 * MAX_ROUNDS):
        outs = [f"cc/r{rnd:03d}/q{q:05d}.bin" for q in range(parts)]
        jobs = [{"mode": mode, "store": store, "parts": spill.slices(files, q), "out": outs[q], "bounds": bounds}
                for q in range(parts)]
        results = run_map(star_step, jobs)
        for res in results:
            clock.add(res["phases"], prefix="cc_worker_")
        if mode == LARGE and all(res["stars"] for res in results):
            clustered, clusters = sum(r["nodes"] for r in results), sum(r["centres"] for r in results)
            log.info("dedup: %d clustered records in %d components after %d star rounds", clustered, clusters, rnd + 1)
            return {"nodes": [out + ".nodes.npy" for out in outs], "clustered": clustered, "clusters": clusters}
        if rnd:
            store.remove(f"cc/r{rnd - 1:03d}")
        files = list(zip(outs, (res["offsets"] for res in results)))
        mode = SMALL if mode == LARGE else LARGE
    raise RuntimeError(f"dedup: connected components did not converge in {MAX_ROUNDS} rounds")
