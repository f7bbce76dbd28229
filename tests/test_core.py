"""Core seams: schema, atomic shard writes, manifests/fragments, resume, stats balance."""
from __future__ import annotations

import json
import time

import pyarrow as pa
import pytest

from pipelines.core.contract import DataStage, ShardResult, ShardTask, removed_table
from pipelines.core.runner import run_stage
from pipelines.core.schema import CORE_COLUMNS, conform, make_record_id
from pipelines.core.shards import list_shards, read_shard, write_shard
from pipelines.core.stats import ShardStats
from pipelines.core.storage import expand_inputs


def _records(n, source="web"):
    return pa.Table.from_pylist([
        {"id": make_record_id(source, str(i)), "url": f"http://ex.org/{i}", "source": source, "text": "word " * (i + 1)}
        for i in range(n)
    ])


def drop_odd_lengths(task: ShardTask) -> ShardResult:
    table = read_shard(task.inputs[0])
    words = [t.count("word") for t in table.column("text").to_pylist()]
    keep = pa.array([w % 2 == 0 for w in words])
    kept = table.filter(keep)
    dropped = table.filter(pa.compute.invert(keep))
    stats = ShardStats(shard=task.shard, records_in=table.num_rows)
    stats.drop("odd_length", dropped.num_rows)
    return ShardResult(kept, removed_table(dropped, ["odd_length"] * dropped.num_rows, [None] * dropped.num_rows), stats)


CALLS: list[str] = []  # shards processed in this process (workers=1 runs them inline)


class DropOdd(DataStage):
    """A minimal stage: its input is a directory of shards, it drops records with an odd word count."""

    name = "t"
    input = "raw"
    drop_reasons = ("odd_length",)

    def config(self, params):
        return dict(params.get("t") or {})

    def process(self, task):
        CALLS.append(task.shard)
        return drop_odd_lengths(task)


def run_t(in_dir, out_dir, params, workers=1):
    return run_stage(DropOdd(), {"t": params, "executor": {"workers": workers}}, out_dir, in_dir)


def test_ids_stable_and_schema_order():
    assert make_record_id("web", "x") == make_record_id("web", "x")
    assert make_record_id("web", "x") != make_record_id("books", "x")
    t = conform(pa.table({"text": ["a"], "extra": [1], "id": ["i"], "source": ["s"]}))
    assert t.column_names[: len(CORE_COLUMNS)] == CORE_COLUMNS
    assert t.column_names[-1] == "extra"
    with pytest.raises(ValueError, match="text"):
        conform(pa.table({"id": ["i"], "source": ["s"]}))


def test_shard_stage_accounts_for_every_record_and_is_byte_identical(tmp_path):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    for i in range(3):
        write_shard(in_dir / f"part-{i:05d}.parquet", _records(7 + i, source=f"s{i}"))
    params = {"x": 1}
    summary = run_t(in_dir, out_dir, params, workers=2)
    kept = sum(read_shard(p).num_rows for p in list_shards(out_dir))
    removed = sum(read_shard(p).num_rows for p in list_shards(out_dir / "removed"))
    assert kept + removed == 7 + 8 + 9
    assert summary["records_out"] == kept and summary["drops"]["odd_length"] == removed
    assert json.loads((out_dir / "_manifest.json").read_text())["totals"]["rows"] == kept
    stats = read_shard(out_dir / "_stats.parquet").to_pandas()
    assert (stats.records_in == stats.records_out + stats.records_dropped).all()
    assert stats.drop__odd_length.sum() == removed
    before = {p.relative_to(out_dir): p.read_bytes() for p in out_dir.rglob("*") if p.is_file()}
    # Re-run from scratch: byte-identical outputs.
    import shutil

    shutil.rmtree(out_dir)
    run_t(in_dir, out_dir, params)
    after = {p.relative_to(out_dir): p.read_bytes() for p in out_dir.rglob("*") if p.is_file()}
    assert before == after


def test_resume_skips_complete_shards_and_redoes_damaged_ones(tmp_path):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    for i in range(2):
        write_shard(in_dir / f"part-{i:05d}.parquet", _records(5))
    CALLS.clear()
    run_t(in_dir, out_dir, {})
    assert len(CALLS) == 2
    CALLS.clear()
    run_t(in_dir, out_dir, {})
    assert CALLS == []
    # Damage one output: only that shard is redone (also when the manifest is gone: a crashed run).
    (out_dir / "part-00001.parquet").write_bytes(b"garbage")
    (out_dir / "_manifest.json").unlink()
    run_t(in_dir, out_dir, {})
    assert CALLS == ["part-00001.parquet"]
    # Changed params: everything is redone.
    CALLS.clear()
    run_t(in_dir, out_dir, {"y": 2})
    assert len(CALLS) == 2
    m = json.loads((out_dir / "_manifest.json").read_text())
    assert set(m["shards"]) == {"part-00000.parquet", "part-00001.parquet"}


def test_stale_shards_from_a_larger_previous_run_are_removed(tmp_path):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    for i in range(3):
        write_shard(in_dir / f"part-{i:05d}.parquet", _records(4))
    run_t(in_dir, out_dir, {})
    (in_dir / "part-00002.parquet").unlink()
    run_t(in_dir, out_dir, {})
    assert [p.name for p in list_shards(out_dir)] == ["part-00000.parquet", "part-00001.parquet"]
    assert not (out_dir / "_shards" / "part-00002.parquet.json").exists()


def test_expand_inputs_sorted_and_globbed(tmp_path):
    for n in ["b.warc.gz", "a.warc.gz", "c.txt"]:
        (tmp_path / n).write_bytes(b"x")
    got = expand_inputs(["*.warc.gz"], root=tmp_path)
    assert [p.split("/")[-1] for p in got] == ["a.warc.gz", "b.warc.gz"]


def test_headline_metrics_keep_the_shared_columns(workspace):
    """`dvc metrics show` has one column per distinct key across files: a new key is refused, not added."""
    from pipelines.core.headline import write_headline

    assert write_headline("x", {"loss": 1.234567, "tokens": 5}) == {"loss": 1.2346, "tokens": 5}
    assert json.loads(workspace.path("metrics/x.json").read_text()) == {"loss": 1.2346, "tokens": 5}
    with pytest.raises(ValueError, match="kl_reduction"):
        write_headline("select", {"records_in": 1, "kl_reduction": 0.1})


class SlowDropOdd(DropOdd):
    def process(self, task):
        time.sleep(0.3)  # a task long enough to be measured in a log line of tenths of seconds
        return super().process(task)


def test_a_run_logs_its_driver_time_apart_from_its_executor_maps(tmp_path, caplog):
    """What adding nodes cannot speed up is the driver's own work between maps: every run says how much."""
    write_shard(tmp_path / "in" / "part-00000.parquet", _records(5))
    with caplog.at_level("INFO", logger="pipelines.core.runner"):
        run_stage(SlowDropOdd(), {"t": {}, "executor": {"workers": 1}}, tmp_path / "out", tmp_path / "in")
    line = next(r.getMessage() for r in caplog.records if "in executor maps" in r.getMessage())
    wall, mapped, alone = (float(w.rstrip("s,")) for w in line.split() if w.rstrip("s,").replace(".", "").isdigit())
    assert mapped >= 0.3 and wall >= mapped and abs(wall - mapped - alone) <= 0.11
