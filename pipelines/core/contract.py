"""The data-stage contract: what a stage supplies; ``pipelines.core.runner`` does the rest.

A stage is a subclass of :class:`DataStage` registered in ``pipelines/stages.py``. It
says what it reads (``input``: the upstream stage) and how it drops records
(``drop_reasons``), validates its ``config``, optionally runs whole-input passes, and
turns one task into a :class:`ShardResult` in ``process``. Everything else is the
runner's, identical for every stage: planning, input fingerprints, the stage hash,
skip-if-complete, atomic writes to the stage's store, ``removed/``, the manifest
fragments, ``_stats.parquet``, ``_manifest.json``, and the executor (a local process
pool or a Ray cluster) that runs ``process``.

Two hooks cover whole-input work, and they differ in what a re-run may skip:

- ``shard_settings(cfg)``: the part of the config a shard's output depends on (default: all of it).
- ``global_inputs(run, tasks)``: a value every shard depends on (the filter's quality
  threshold, select's trained classifier). It is folded into the hash that each
  finished shard is checked against, so it runs whenever the stage is not entirely
  up to date.
- ``prepare(run, tasks)``: decisions for the shards that still need work (dedup's
  duplicate clusters, mix's blend plan, pack's tokenizer and bin packing). It runs
  only when some task is pending; it may also create the tasks (when the output
  layout depends on the whole input).

``process`` runs on a worker (another process, perhaps another machine): it gets
only its task, reads its inputs by URI and returns tables and files; the runner
writes them. Tasks and contexts must be small and picklable: keys and decisions,
never texts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import pyarrow as pa

from pipelines.core.schema import DROP_FIELDS
from pipelines.core.stats import ShardStats

if TYPE_CHECKING:
    from pipelines.core.runner import StageRun
    from pipelines.core.store import Store


@dataclass
class ShardTask:
    stage: str
    shard: str  # output file name inside its dataset, e.g. part-00000.parquet
    inputs: list[str]  # URIs it reads (upstream shards, raw files)
    fingerprints: dict[str, str] = field(default_factory=dict)  # identity of everything its output depends on
    context: dict = field(default_factory=dict)  # stage-specific, small: decisions and keys, not texts
    dataset: str = ""  # "" = the stage directory itself; else a sub-dataset (mix's "phase1")
    store: "Store | None" = None  # set by the runner
    params: dict = field(default_factory=dict)  # the stage's validated config (set by the runner)
    params_hash: str = ""  # config + code + global inputs (set by the runner)

    @property
    def rel(self) -> str:
        """The shard's path inside the stage's store."""
        return f"{self.dataset}/{self.shard}" if self.dataset else self.shard


@dataclass
class ShardResult:
    kept: pa.Table | None  # records that go on (None: nothing record-shaped, e.g. pack's token shards)
    removed: pa.Table | None  # dropped records, each with drop_reason / drop_detail
    stats: ShardStats
    files: dict[str, bytes] = field(default_factory=dict)  # further files this shard produced: name -> content
    publish_kept: bool = True  # False: ``kept`` only feeds the stats (mix's training pool is not a dataset)


def removed_table(records: pa.Table, reasons: list[str], details: list[str | None]) -> pa.Table:
    """Attach a reason (and JSON detail) to each dropped record; the record itself stays whole."""
    t = records.append_column(DROP_FIELDS[0], pa.array(reasons, pa.string()))
    return t.append_column(DROP_FIELDS[1], pa.array(details, pa.string()))


class DataStage:
    """One data stage. Class attributes describe it; methods are the hooks the runner calls."""

    name: ClassVar[str]
    input: ClassVar[str | None] = None  # the upstream stage whose shards it reads (registry name)
    drop_reasons: ClassVar[tuple[str, ...]] = ()
    datasets: ClassVar[tuple[str, ...]] = ()  # sub-datasets written besides the stage directory itself
    code: ClassVar[tuple[str, ...]] = ()  # packages besides pipelines/core and its own whose code decides its output

    @property
    def code_packages(self) -> tuple[str, ...]:
        """The ``pipelines/<package>`` trees whose code decides the output (its own, plus ``code``)."""
        parts = type(self).__module__.split(".")
        own = (parts[1],) if parts[0] == "pipelines" and len(parts) > 2 else ()
        return own + tuple(self.code)

    def config(self, params: dict) -> dict:
        """The validated settings; the stage hash covers all of them (but see ``shard_settings``). Raise on a
        bad value, naming it."""
        return dict(params.get(self.name) or {})

    def shard_settings(self, cfg: dict) -> dict:
        """The part of the config that decides what a shard's task writes (its params hash). Settings that only
        choose which tasks exist (ingest's input lists) stay out: each task's fingerprints name its input, so
        adding an input leaves the other shards complete."""
        return cfg

    def input_fingerprints(self, run: "StageRun") -> dict[str, str]:
        """Every upstream shard's identity (the stage key covers them even when tasks are made later)."""
        return {ref.name: ref.fingerprint for ref in run.input_shards()} if self.input else {}

    def external_inputs(self, run: "StageRun") -> dict[str, str]:
        """Fingerprints of inputs besides the upstream shards (a model file, eval sets): a change re-runs the stage."""
        return {}

    def plan(self, run: "StageRun") -> list[ShardTask]:
        """The tasks, before any whole-input pass. Default: one per upstream shard, same name."""
        return [ShardTask(self.name, ref.name, [ref.uri], {ref.name: ref.fingerprint}) for ref in run.input_shards()]

    def global_inputs(self, run: "StageRun", tasks: list[ShardTask]) -> dict:
        """A whole-input value every shard depends on (folded into the shard hash); may fill task contexts."""
        return {}

    def prepare(self, run: "StageRun", tasks: list[ShardTask]) -> list[ShardTask]:
        """Whole-input decisions, run only when a task is pending; returns the tasks with their contexts."""
        return tasks

    def needs_prepare(self, run: "StageRun") -> bool:
        """True when ``prepare`` must run even though every shard is complete (it writes an artifact)."""
        return False

    def process(self, task: ShardTask) -> ShardResult:
        raise NotImplementedError

    def finish(self, run: "StageRun", fragments: dict[str, list[dict]]) -> dict:
        """Extra fields of the stage's ``_manifest.json``, from every dataset's fragments (known only at the end)."""
        return {}

    def headline(self, out_dir: Path) -> dict:
        """The stage's row in ``dvc metrics show`` (pipelines.core.headline): records in, out and dropped."""
        from pipelines.core.runner import STATS
        from pipelines.core.stats import read_stats, totals

        t = totals(read_stats(Path(out_dir) / STATS))
        return {"records_in": t["records_in"], "records_out": t["records_out"], "dropped": t["records_dropped"]}

    def summarize(self, run: "StageRun", manifest: dict, stats: list[ShardStats]) -> dict:
        """What the CLI prints (and Airflow logs) after the stage; ``stats`` are the top-level shards' rows."""
        from pipelines.core.stats import totals

        return {"stage": self.name, "shards": manifest["totals"]["shards"], **totals(stats)}
