"""The one runner every data stage goes through (the contract is ``pipelines.core.contract``).

``run_stage(stage, params, out_dir, input_dir)``:

1. **Plan** the tasks and fingerprint the inputs (upstream manifests' sha256, or the files).
2. **Up to date?** The stage key (config + code + every input fingerprint) equals the one in
   the previous ``_manifest.json`` and every file it lists is intact: nothing to do.
3. **Global inputs** (e.g. the filter's threshold) go into the shard hash; tasks whose
   fragment matches their inputs and that hash, with intact files, are skipped (resume).
4. **Prepare** the pending tasks (whole-input decisions), then run them on the executor:
   each writes its kept shard, ``removed/`` shard and further files to the stage's store,
   then its fragment (last: it marks the shard complete).
5. **Finish**: per dataset ``_stats.parquet`` and ``_manifest.json`` (sorted, no timestamps:
   the same input gives the same bytes), the stage's own manifest fields, the summary.
"""
from __future__ import annotations

import contextlib
import logging
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pyarrow as pa

from pipelines.core.atomic import atomic_path, write_json_atomic
from pipelines.core.contract import DataStage, ShardResult, ShardTask
from pipelines.core.executor import get_executor
from pipelines.core.faults import fault_point
from pipelines.core.hashing import canonical_json, params_hash, sha256_bytes, sha256_file, stage_hash
from pipelines.core.manifest import FRAGMENTS, MANIFEST, load_manifest_if_any, write_manifest
from pipelines.core.shards import ShardRef, stage_shards, write_parquet
from pipelines.core.stats import ShardStats, length_histogram, read_stats, write_stats
from pipelines.core.store import Store, stage_store, sub_store

log = logging.getLogger(__name__)
REMOVED = "removed"
WORK = "_work"  # scratch of the run in progress
STATS = "_stats.parquet"


class StageRun:
    """One run of a stage, on the driver: its settings, directories, store and executor."""

    def __init__(self, stage: DataStage, params: dict, out_dir: Path, input_dir: Path | None):
        self.stage = stage
        self.params = params
        self.cfg = stage.config(params)
        self.out_dir = Path(out_dir)
        self.input_dir = Path(input_dir) if input_dir is not None else None
        self.store = stage_store(params.get("storage"), self.out_dir, stage.name)
        self.executor_params = params.get("executor")
        self.artifacts: dict[str, dict] = {}  # files the driver wrote beside the shards (models, reports)
        self._inputs: dict[str, list[ShardRef]] = {}
        self.extra_stats: list[ShardStats] = []  # accounting rows of work done outside the tasks (pack's encoding)
        self.tasks: list[ShardTask] = []  # this run's tasks, once planned and prepared
        self.notes: dict = {}  # what the stage's whole-input passes found, for its finish()
        self.key = ""  # the stage key (config + code + inputs), once planned
        self.complete: dict[str, bool] = {}  # task rel -> its output is complete, when prepare runs
        self._scratch: Store | None = None
        # wall seconds inside executor maps, by map function: the rest of a run is driver work, which is what
        # adding nodes cannot speed up (logged at the end of the run, read by bench/bench_scale.py)
        self.map_seconds: dict[str, float] = {}

    @property
    def name(self) -> str:
        return self.stage.name

    def input_shards(self, dataset: str = "") -> list[ShardRef]:
        """The upstream stage's shards (from its manifest; ``dataset``: one of its sub-datasets), in a stable
        order; a missing input is a clear error."""
        if dataset not in self._inputs:
            if self.input_dir is None:
                raise ValueError(f"{self.name}: the stage has no input stage")
            where = self.input_dir / dataset if dataset else self.input_dir
            self._inputs[dataset] = stage_shards(where, self.stage.input or "previous")
        return self._inputs[dataset]

    def map(self, fn: Callable, jobs: Sequence) -> list:
        """Run ``fn`` over ``jobs`` on the stage's executor (results in job order)."""
        started = time.perf_counter()
        try:
            return get_executor(self.executor_params).map(fn, list(jobs))
        finally:
            name = getattr(fn, "__name__", "map")
            self.map_seconds[name] = self.map_seconds.get(name, 0.0) + time.perf_counter() - started

    @property
    def scratch(self) -> Store:
        """A store for this run's intermediate files (key files, shuffle pieces), visible to every worker.
        The runner removes it when the stage ends; a crash leaves it for the next run to remove."""
        if self._scratch is None:
            self.store.remove(WORK)  # what a crashed run left (one run of a stage at a time)
            self._scratch = sub_store(self.store, f"{WORK}/{uuid.uuid4().hex[:12]}")
        return self._scratch

    def drop_scratch(self) -> None:
        if self._scratch is not None:
            self.store.remove(WORK)
            self._scratch = None

    def write_artifact(self, rel: str, write: Callable[[Path], None]) -> dict:
        """A file the driver writes into the stage directory (a model, a report), listed with its hash in the
        manifest; when shards live in a shared store it is copied there too, so workers can read it (``uri``)."""
        path = self.out_dir / rel
        with atomic_path(path) as tmp:
            write(tmp)
        entry = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        if self.store.content_addressed:
            shared = self.store.put_data(rel, lambda tmp: tmp.write_bytes(path.read_bytes()), Path(rel).suffix)
            entry["uri"] = shared["uri"]
        self.artifacts[rel] = entry
        return entry

    def share(self, path: Path) -> str:
        """Where workers read a driver-side file (a model): the path itself, or its copy in the shared store."""
        if not self.store.content_addressed:
            return str(path)
        return self.store.put_data(Path(path).name, lambda tmp: tmp.write_bytes(Path(path).read_bytes()),
                                   Path(path).suffix)["uri"]

    def add_artifact(self, rel: str) -> dict:
        """Register a file the driver already wrote under the stage directory as an artifact."""
        path = self.out_dir / rel
        return self.write_artifact(rel, lambda tmp: tmp.write_bytes(path.read_bytes()))

    def artifact_uri(self, rel: str) -> str:
        """Where a worker reads an artifact: its shared copy, or the file in the stage directory."""
        return self.artifacts[rel].get("uri") or str(self.out_dir / rel)




def fragment_rel(dataset: str, shard: str) -> str:
    return f"{dataset}/{FRAGMENTS}/{shard}.json" if dataset else f"{FRAGMENTS}/{shard}.json"


def _in_dataset(dataset: str, name: str) -> str:
    return f"{dataset}/{name}" if dataset else name


# ---------------------------------------------------------------- worker side

def _table_writer(table: pa.Table) -> Callable[[Path], None]:
    return lambda path: write_parquet(path, table)


def finish_stats(stats: ShardStats, kept: pa.Table | None) -> ShardStats:
    """Fill out-side numbers from the kept table (records/bytes out, length histogram)."""
    import pyarrow.compute as pc

    if kept is not None and "text" in kept.column_names and kept.num_rows:
        lengths = pc.utf8_length(kept.column("text")).to_numpy(zero_copy_only=False)
        stats.len_hist = length_histogram(lengths)
        stats.bytes_out = int(pc.sum(pc.binary_length(kept.column("text"))).as_py() or 0)
    else:
        stats.len_hist = length_histogram([])
    if kept is not None:
        stats.records_out = kept.num_rows
    return stats


def write_outputs(task: ShardTask, result: ShardResult) -> dict:
    """Write a shard's kept and removed tables and files, then its fragment (last: it marks completion)."""
    store, files = task.store, {}
    if result.kept is not None and result.publish_kept:
        entry = store.put_data(task.rel, _table_writer(result.kept), ".parquet")
        files[task.shard] = {**entry, "rows": result.kept.num_rows}
    if result.removed is not None and result.removed.num_rows:
        name = f"{REMOVED}/{task.shard}"
        entry = store.put_data(_in_dataset(task.dataset, name), _table_writer(result.removed), ".parquet")
        files[name] = {**entry, "rows": result.removed.num_rows}
    for name, data in sorted(result.files.items()):
        files[name] = store.put_data(_in_dataset(task.dataset, name), lambda tmp, d=data: tmp.write_bytes(d),
                                     Path(name).suffix)
    stats = result.stats
    if stats.records_in != stats.records_out + stats.records_dropped:
        raise AssertionError(
            f"{task.stage}/{task.rel}: records do not balance: in={stats.records_in} != "
            f"out={stats.records_out} + dropped={stats.records_dropped}")
    fragment = {"shard": task.shard, "inputs": task.fingerprints, "params_hash": task.params_hash, "files": files,
                "stats": stats.to_dict()}
    store.write_json(fragment_rel(task.dataset, task.shard), fragment)
    fault_point("shard_done")
    return fragment


def run_task(job: tuple[DataStage, ShardTask]) -> dict:
    stage, task = job
    result = stage.process(task)
    finish_stats(result.stats, result.kept)
    return write_outputs(task, result)


def complete_fragment(task: ShardTask) -> dict | None:
    """The task's fragment when its output needs no work: same inputs and hash, every file intact."""
    fragment = task.store.read_json(fragment_rel(task.dataset, task.shard))
    if not fragment or fragment.get("inputs") != task.fingerprints or fragment.get("params_hash") != task.params_hash:
        return None
    for name, entry in fragment.get("files", {}).items():
        if not task.store.intact(_in_dataset(task.dataset, name), entry):
            return None
    return fragment


# ---------------------------------------------------------------- driver side

def stage_key(run: StageRun, tasks: list[ShardTask]) -> str:
    """Config + code + every input: equal keys mean equal outputs (every step is deterministic)."""
    inputs = {t.rel: t.fingerprints for t in tasks}
    return params_hash({"config": run.cfg, "code": _code_hash(run), "inputs": inputs,
                        "upstream": run.stage.input_fingerprints(run), "external": run.stage.external_inputs(run)})


def _code_hash(run: StageRun) -> str:
    return stage_hash(run.stage.code_packages, {})


def _up_to_date(run: StageRun, key: str) -> dict | None:
    """The previous top manifest when it was made with this key and every file it lists is intact."""
    top = load_manifest_if_any(run.out_dir)
    if not top or top.get("stage_key") != key:
        return None
    manifests = {"": top, **{d: load_manifest_if_any(run.out_dir / d) for d in run.stage.datasets}}
    checks = []
    for dataset, m in manifests.items():
        if m is None:
            return None
        for shard, entry in m.get("shards", {}).items():
            checks += [(run.store, _in_dataset(dataset, name), fe) for name, fe in entry.get("files", {}).items()]
    for rel, entry in (top.get("artifacts") or {}).items():
        p = run.out_dir / rel
        if not p.is_file() or p.stat().st_size != entry["bytes"] or sha256_file(p) != entry["sha256"]:
            return None
    if not all(run.map(_intact, checks)):
        return None
    run.artifacts = dict(top.get("artifacts") or {})
    return top


def _intact(check: tuple[Store, str, dict]) -> bool:
    store, rel, entry = check
    return store.intact(rel, entry)


def clean_stale(run: StageRun, tasks: list[ShardTask]) -> None:
    """Remove shards and fragments a previous run with another layout left, and crash leftovers."""
    run.store.clean_temps()
    wanted = {(t.dataset, t.shard) for t in tasks}
    for dataset in ("", *run.stage.datasets):
        for rel in run.store.list(_in_dataset(dataset, FRAGMENTS)):
            shard = Path(rel).name[: -len(".json")]
            if (dataset, shard) not in wanted:
                run.store.remove(rel)
        if run.store.content_addressed:
            continue  # objects are never deleted: an older data version may still list them
        for sub in (dataset, _in_dataset(dataset, REMOVED)):
            base = run.out_dir / sub if sub else run.out_dir
            for p in base.glob("part-*.parquet") if base.is_dir() else []:
                if (dataset, p.name) not in wanted:
                    p.unlink()


def _remove_stale_removed(run: StageRun, dataset: str, fragments: list[dict]) -> None:
    """A shard's removed file may be gone from its fragment when a later run of it kept everything."""
    if run.store.content_addressed:
        return
    for f in fragments:
        name = f"{REMOVED}/{f['shard']}"
        if name not in f["files"]:
            run.store.remove(_in_dataset(dataset, name))


def run_stage(stage: DataStage, params: dict, out_dir: Path, input_dir: Path | None = None) -> dict:
    run = StageRun(stage, params, out_dir, input_dir)
    started = time.perf_counter()
    try:
        return _run(run)
    finally:
        run.drop_scratch()
        wall, mapped = time.perf_counter() - started, sum(run.map_seconds.values())
        log.info("%s: %.1fs, of which %.1fs in executor maps and %.1fs on the driver alone", run.name, wall, mapped,
                 wall - mapped)


def _run(run: StageRun) -> dict:
    stage = run.stage
    run.out_dir.mkdir(parents=True, exist_ok=True)
    tasks = stage.plan(run)
    key = run.key = stage_key(run, tasks)
    previous = _up_to_date(run, key)
    if previous is not None:
        log.info("%s: every output is up to date with its inputs, params and code; nothing to do", run.name)
        return stage.summarize(run, previous, read_stats(run.out_dir / STATS))
    old_artifacts = set(((load_manifest_if_any(run.out_dir) or {}).get("artifacts") or {}))

    global_values = stage.global_inputs(run, tasks)
    phash = stage_hash(stage.code_packages, {"config": stage.shard_settings(run.cfg), "global": global_values})
    done = _check(run, tasks, phash, {})
    if not tasks or any(f is None for f in done.values()) or stage.needs_prepare(run):
        run.complete = {rel: f is not None for rel, f in done.items()}
        tasks = stage.prepare(run, tasks)
        done = _check(run, tasks, phash, done)
    if not tasks:
        raise ValueError(f"{run.name}: no input shards/files to process")
    run.tasks = tasks
    for t in tasks:
        if done[t.rel] is not None:
            log.info("%s: %s already complete, skipped", run.name, t.rel)
    pending = [t for t in tasks if done[t.rel] is None]
    clean_stale(run, tasks)
    for t, fragment in zip(pending, run.map(run_task, [(stage, t) for t in pending])):
        done[t.rel] = fragment
    log.info("%s: %d shards, %d skipped as complete", run.name, len(tasks), len(tasks) - len(pending))

    by_dataset: dict[str, list[dict]] = {d: [] for d in ("", *stage.datasets)}
    for t in sorted(tasks, key=lambda t: (t.dataset, t.shard)):
        by_dataset.setdefault(t.dataset, []).append(done[t.rel])
    manifest = _finalize(run, phash, key, by_dataset)
    for rel in old_artifacts - set(run.artifacts):  # e.g. an embedding cache the new settings do not write
        (run.out_dir / rel).unlink(missing_ok=True)
    return stage.summarize(run, manifest, read_stats(run.out_dir / STATS))


def _check(run: StageRun, tasks: list[ShardTask], phash: str, known: dict) -> dict:
    """rel -> the complete fragment, or None when the task must run (checked on the executor: it hashes files)."""
    for t in tasks:
        t.store, t.params, t.params_hash = run.store, run.cfg, phash
    new = [t for t in tasks if t.rel not in known]
    found = dict(zip((t.rel for t in new), run.map(complete_fragment, new))) if new else {}
    return {t.rel: known.get(t.rel, found.get(t.rel)) for t in tasks}


def _finalize(run: StageRun, phash: str, key: str, by_dataset: dict[str, list[dict]]) -> dict:
    """Stats and manifest of every dataset (sub-datasets first: the top manifest records their hashes)."""
    for dataset, fragments in by_dataset.items():
        _remove_stale_removed(run, dataset, fragments)
    outputs = {}
    for dataset in run.stage.datasets:
        d = run.out_dir / dataset
        write_stats(d / STATS, [ShardStats.from_dict(f["stats"]) for f in by_dataset[dataset]], [])
        m = write_manifest(d, f"{run.name}/{dataset}", phash, by_dataset[dataset])
        outputs[dataset] = {"manifest_sha256": sha256_file(d / MANIFEST), "rows": m["totals"]["rows"],
                            "shards": m["totals"]["shards"]}
    top = by_dataset[""]
    write_stats(run.out_dir / STATS, [ShardStats.from_dict(f["stats"]) for f in top] + run.extra_stats,
                list(run.stage.drop_reasons))
    finished = run.stage.finish(run, by_dataset)  # may write artifacts: before they are listed
    extra = {"stage_key": key, **({"outputs": outputs} if outputs else {}),
             **({"artifacts": dict(sorted(run.artifacts.items()))} if run.artifacts else {}), **finished}
    return write_manifest(run.out_dir, run.name, phash, top, extra)
