"""mix: ``data/select`` -> ``data/mix/{heldout,phase1,phase2}`` plus ``blend.json``.

1. Held-out split per source by a hash of the id (never trained on).
2. Phase 1 (diverse): every other record repeated per ``mix.phase1.weights``.
3. Phase 2 (anneal): high-quality slices upsampled plus a replay slice of phase-1 rows
   (each joins with probability ``replay_fraction``). A phase-2 weight multiplies the phase-1
   share (``plan.anneal_weights``): phase 2 holds as many characters as phase 1, a source with
   ``mix.phase2.weights`` w > 1 gets w x its phase-1 characters, and every other record fills the
   rest in proportion to its phase-1 weight x (its source's weight + ``top_quality.weight`` when its
   quality_score is in the top ``top_quality.fraction`` of its group (web sources by default)
   + with the searched phase-1 mixture, ``clusters.weight`` when its web cluster is one of
   the ``clusters.top`` clusters the search weighted most (the target-domain clusters)).
   With the searched mixture, every blend row carries its domain (``mix_domain``) and
   ``blend.json`` holds realised vs target shares per source and per domain for both phases.

The plan (``plan.py``) reads ids, sources, lengths and scores only; the blends are written
by a distributed shuffle (``shuffle.py``). Each blend is a dataset of its own (shards,
``_manifest.json``, ``_stats.parquet``), shuffled by a seeded hash and cut into shards of at
most ``max_rows_per_shard`` rows. ``data/mix`` itself holds the accounting: per input shard,
``records_in = records_out`` (the training pool) ``+ drop__heldout + drop__excluded_source +
drop__subsampled``; ``removed/`` keeps every excluded/subsampled record whole (held-out
records live in ``heldout/``).
"""
from __future__ import annotations

import logging
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import resolve
from pipelines.core.atomic import write_json_atomic
from pipelines.core.contract import DataStage, ShardResult, ShardTask, removed_table
from pipelines.core.hashing import sha256_file
from pipelines.core.shards import read_schema, read_shard, shard_name
from pipelines.core.stats import ShardStats
from pipelines.mix.config import mix_config
from pipelines.mix.plan import DROP_REASONS, HELDOUT, PHASES, REMOVED_REASONS, heldout_mask, plan, shuffle_order
from pipelines.mix.report import blend_report
from pipelines.mix.searched import MIXTURE_DIR, searched_weights
from pipelines.mix.shuffle import gather, piece_rel, scatter

log = logging.getLogger(__name__)
BLEND = "blend.json"
PLAN_COLUMNS = ["id", "source", "quality_score"]


def _plan_columns(uri: str) -> dict:
    """What the plan reads of one input shard: ids, sources, text lengths, quality scores (never texts)."""
    names = read_schema(uri).names
    missing = [c for c in ("id", "source", "text") if c not in names]
    if missing:
        raise ValueError(f"mix: input shard {uri} lacks column(s) {missing}")
    t = read_shard(uri, [c for c in PLAN_COLUMNS if c in names] + ["text"])
    chars = pc.fill_null(pc.utf8_length(t.column("text")), 0).cast(pa.int64())
    return {"table": t.drop_columns(["text"]).append_column("chars", chars), "schema": read_schema(uri)}


def _blend_layout(decided: dict, cfg: dict) -> dict[str, dict]:
    """Per blend: global row, copy and origin of every output position, in output order."""
    ids = decided["ids"]
    held = np.flatnonzero(decided["heldout"])
    order = shuffle_order([ids[r] for r in held], np.zeros(len(held), np.int32), cfg["seed"], HELDOUT)
    out = {HELDOUT: {"rows": held[order], "copy": None, "replay": None}}
    for phase in PHASES:
        rows, copy, replay = decided[phase]
        order = shuffle_order([ids[r] for r in rows], copy, cfg["seed"], phase)
        out[phase] = {"rows": rows[order], "copy": copy[order], "replay": replay[order]}
    return out


class MixStage(DataStage):
    name = "mix"
    input = "select"
    drop_reasons = tuple(DROP_REASONS)
    datasets = (HELDOUT, *PHASES)

    def config(self, params: dict) -> dict:
        return mix_config(params)

    def external_inputs(self, run) -> dict[str, str]:
        if run.cfg["phase1_source"] != "searched":
            return {}
        return {"mixture": sha256_file(resolve(MIXTURE_DIR) / "mixture.json")}  # the searched mixture is an input too

    def plan(self, run) -> list[ShardTask]:
        return []  # the output layout comes from the plan: see prepare

    def prepare(self, run, tasks: list[ShardTask]) -> list[ShardTask]:
        cfg = run.cfg
        refs = run.input_shards()
        everything = {ref.name: ref.fingerprint for ref in refs}
        everything.update(self.external_inputs(run))
        parts = run.map(_plan_columns, [ref.uri for ref in refs])
        schema = pa.unify_schemas([p["schema"] for p in parts])
        table = pa.concat_tables([p["table"] for p in parts], promote_options="default")
        sizes = np.array([p["table"].num_rows for p in parts], dtype=np.int64)
        offsets = np.cumsum(sizes) - sizes
        shard_of = np.repeat(np.arange(len(refs)), sizes)
        chars = table.column("chars").to_numpy(zero_copy_only=False).astype(np.int64)
        held = None
        if cfg["phase1_source"] == "searched":
            ids = table.column("id").to_pylist()
            held = heldout_mask(ids, table.column("source").to_pylist(), cfg["heldout_fraction"], cfg["min_heldout"])
            cfg = {**cfg, "searched": searched_weights(ids, chars, ~held)}
        decided = plan(table, cfg, held)  # reuses the searched path's held-out mask
        run.notes["blend"] = blend_report(chars, decided, cfg)
        run.notes["records_in"] = table.num_rows
        layout = _blend_layout(decided, cfg)

        # Scatter: every input shard writes its rows of each blend, in output order, to scratch.
        max_rows = cfg["max_rows"]
        pieces: list[dict] = [{} for _ in refs]
        for dataset, lay in layout.items():
            pos = np.arange(len(lay["rows"]))
            src = shard_of[lay["rows"]]
            for s in range(len(refs)):
                mine = src == s
                pieces[s][dataset] = (lay["rows"][mine] - offsets[s], (pos[mine] // max_rows).astype(np.int32))
        scratch = run.scratch
        index = run.map(scatter, [(ref.uri, s, pieces[s], schema, scratch) for s, ref in enumerate(refs)])

        n = len(decided["ids"])
        p1, p2 = decided["phase1"], decided["phase2"]
        counts = {"phase1_rows": np.bincount(p1[0], minlength=n), "phase2_rows": np.bincount(p2[0], minlength=n),
                  "replay_rows": np.bincount(p2[0][p2[2]], minlength=n)}
        tasks = []
        for s, ref in enumerate(refs):
            rows = range(int(offsets[s]), int(offsets[s] + sizes[s]))
            context = {"reasons": [decided["reasons"][i] or "" for i in rows],
                       "details": [decided["details"][i] for i in rows],
                       **{k: int(v[rows.start:rows.stop].sum()) for k, v in counts.items()}}
            tasks.append(ShardTask(self.name, ref.name, [ref.uri], everything, context))
        domain_of = cfg["searched"]["domain"] if cfg.get("searched") else None
        for dataset, lay in layout.items():
            n = len(lay["rows"])
            for k in range(max(1, math.ceil(n / max_rows))):  # at least one shard, maybe empty
                sl = slice(k * max_rows, (k + 1) * max_rows)
                src = shard_of[lay["rows"][sl]].astype(np.int32)
                reads = [(s, scratch.uri(piece_rel(dataset, s)), index[s][dataset][k])
                         for s in sorted(set(src.tolist()))]
                context = {"src": src, "reads": reads, "schema": schema, "blend": dataset in PHASES}
                if dataset in PHASES:
                    context.update(copy=lay["copy"][sl], origin=np.where(lay["replay"][sl], "replay", dataset))
                    if domain_of is not None:
                        context["domain"] = [domain_of.get(decided["ids"][r]) or None for r in lay["rows"][sl]]
                tasks.append(ShardTask(self.name, shard_name(k), [], everything, context, dataset=dataset))
        return tasks

    def process(self, task: ShardTask) -> ShardResult:
        return _blend_shard(task) if task.dataset else _accounting(task)

    def finish(self, run, fragments: dict[str, list[dict]]) -> dict:
        run.write_artifact(BLEND, lambda tmp: write_json_atomic(tmp, run.notes["blend"]))
        top = fragments[""]
        rows = {d: sum(f["files"][f["shard"]]["rows"] for f in fragments[d]) for d in self.datasets}
        return {"totals": {
            "shards": len(top),
            "records_in": run.notes["records_in"],
            "rows": int(sum(f["stats"]["records_out"] for f in top)),  # the training pool (unique records in any blend)
            "heldout": rows[HELDOUT],
            "dropped": {r: int(sum(f["stats"]["drops"].get(r, 0) for f in top)) for r in REMOVED_REASONS},
            **{f"{phase}_rows": rows[phase] for phase in PHASES},
        }}

    def summarize(self, run, manifest: dict, stats: list[ShardStats]) -> dict:
        return {"stage": "mix", **manifest["totals"]}


def _accounting(task: ShardTask) -> ShardResult:
    """One input shard: where each record went (pool, held out, dropped) and removed/ for the dropped."""
    table = read_shard(task.inputs[0])
    reasons = np.asarray(task.context["reasons"], dtype=object)
    stats = ShardStats(shard=task.shard, records_in=table.num_rows,
                       bytes_in=int(pc.sum(pc.binary_length(table.column("text"))).as_py() or 0) if table.num_rows else 0)
    for reason in DROP_REASONS:
        stats.drops[reason] = int((reasons == reason).sum())
    stats.extra = {"heldout": float(stats.drops["heldout"]), "phase1_rows": float(task.context["phase1_rows"]),
                   "phase2_rows": float(task.context["phase2_rows"]), "replay_rows": float(task.context["replay_rows"])}
    removed_rows = np.flatnonzero(np.isin(reasons, REMOVED_REASONS))
    removed = None
    if len(removed_rows):
        removed = removed_table(table.take(pa.array(removed_rows, pa.int64())),
                                [task.context["reasons"][r] for r in removed_rows],
                                [task.context["details"][r] for r in removed_rows])
    pool = table.take(pa.array(np.flatnonzero(reasons == ""), pa.int64()))
    # The pool itself is not written (the blends are the datasets): the fragment holds the accounting.
    return ShardResult(pool, removed, stats, publish_kept=False)


def _blend_shard(task: ShardTask) -> ShardResult:
    """One output shard of a blend (or of the held-out split), gathered from the scattered pieces."""
    c = task.context
    out = gather(c["src"], c["reads"], c["schema"])
    if c["blend"]:
        out = out.append_column(pa.field("blend_copy", pa.int32(), nullable=False), pa.array(c["copy"], pa.int32()))
        out = out.append_column(pa.field("blend_origin", pa.string()), pa.array(list(c["origin"]), pa.string()))
        if "domain" in c:  # searched mixture: the domain (curated source / web cluster) of every row
            out = out.append_column(pa.field("mix_domain", pa.string()), pa.array(c["domain"], pa.string()))
    stats = ShardStats(shard=task.shard, records_in=out.num_rows)
    stats.bytes_in = int(pc.sum(pc.binary_length(out.column("text"))).as_py() or 0) if out.num_rows else 0
    return ShardResult(out, None, stats)
