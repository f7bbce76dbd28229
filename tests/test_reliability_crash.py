"""Crash anywhere, lose nothing: SIGKILL a real stage process at exact points, re-run, compare bytes.

The kill points are the core's test-only hooks (``PIPELINES_FAULT_KILL``, see
pipelines/core/faults.py): inside a shard write (temp file written, not yet
renamed), between shards (a shard and its fragment complete), and in dedup's
global phase (after pass 1, before any output). After each crash: no file under
a final name is partial (every part-*.parquet opens, every fragment parses);
the re-run skips exactly the finished shards, and its outputs and manifests
are byte-identical to an uninterrupted run. Also: ``dvc repro`` after a crash
resumes, and training SIGKILLed after a checkpoint resumes to the same loss curve.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.fixtures.crash_resume import SKIPPED, ingest_order, small_inputs
from tests.fixtures.outputs import snapshot
from tests.fixtures.project import copy_project


def stage(root: Path, name: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIPELINES_WORKSPACE": str(root), "PIPELINES_WORKERS": "1"}
    env.pop("PIPELINES_FAULT_KILL", None)
    if fault:
        env["PIPELINES_FAULT_KILL"] = fault
    return subprocess.run([sys.executable, "-m", "pipelines", name], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)


def assert_nothing_partial(out: Path) -> list[str]:
    """Every file under a final name is whole; returns the temp leftovers (which the next run removes)."""
    for p in out.rglob("part-*.parquet"):
        pq.ParquetFile(p).metadata  # raises on a torn file
    for p in out.rglob("*.json"):
        if not p.name.startswith(".tmp-"):
            json.loads(p.read_text())
    return [p.name for p in out.rglob(".tmp-*")]


def crash_then_resume(root: Path, name: str, fault: str, reference: dict[str, bytes]) -> tuple[list[str], list[str]]:
    """Run ``name`` killed at ``fault``, check the wreck, re-run; returns (temp leftovers, shards skipped)."""
    out = root / "data" / name
    crashed = stage(root, name, fault)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    assert not (out / "_manifest.json").exists()  # a crashed run never publishes a manifest
    leftovers = assert_nothing_partial(out)
    resumed = stage(root, name)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not list(out.rglob(".tmp-*")), "the re-run left temp files"
    assert snapshot(out) == reference
    return leftovers, SKIPPED.findall(resumed.stderr)


@pytest.fixture(scope="module")
def filtered(tmp_path_factory):
    """A workspace with ingest and dedup done on the small inputs: the uninterrupted reference outputs."""
    import yaml

    from tests.fixtures.project import REPO, SAMPLES

    root = tmp_path_factory.mktemp("crash") / "ws"
    root.mkdir()
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    (root / "samples").symlink_to(SAMPLES)
    params = small_inputs(yaml.safe_load((REPO / "params.yaml").read_text()))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    refs = {}
    for name in ("ingest", "dedup"):
        if name == "dedup":  # dedup's input, without depending on filter's models: the ingest shards as they are
            (root / "data/filter").mkdir()
            for p in sorted((root / "data/ingest").glob("part-*.parquet")):
                shutil.copy(p, root / "data/filter" / p.name)
        done = stage(root, name)
        assert done.returncode == 0, done.stderr[-3000:]
        refs[name] = snapshot(root / "data" / name)
    assert len([k for k in refs["ingest"] if re.fullmatch(r"part-[^/]+\.parquet", k)]) == 4
    return root, refs


def test_ingest_killed_during_a_shard_write_resumes_byte_identical(filtered):
    root, refs = filtered
    shutil.rmtree(root / "data" / "ingest")
    order = ingest_order(root)
    # The first shard writes its kept file (and its removed file, if any); the next write is the second's kept file.
    nth = 2 + (f"removed/{order[0]}" in refs["ingest"])
    leftovers, skipped = crash_then_resume(root, "ingest", f"shard_write:{nth}", refs["ingest"])
    assert any(n.startswith(f".tmp-{order[1]}") for n in leftovers), leftovers
    assert skipped == order[:1]


def test_ingest_killed_between_shards_resumes_without_redoing_them(filtered):
    root, refs = filtered
    shutil.rmtree(root / "data" / "ingest")
    leftovers, skipped = crash_then_resume(root, "ingest", "shard_done:2", refs["ingest"])
    assert leftovers == []
    assert skipped == ingest_order(root)[:2]


def test_rerun_over_a_damaged_shard_redoes_only_that_shard(filtered):
    root, refs = filtered
    out = root / "data" / "ingest"
    order = ingest_order(root)
    (out / order[2]).write_bytes(b"torn")  # as if a non-atomic writer had died mid-file
    done = stage(root, "ingest")
    assert done.returncode == 0, done.stderr[-2000:]
    assert SKIPPED.findall(done.stderr) == [order[0], order[1], order[3]]
    assert snapshot(out) == refs["ingest"]


def test_dedup_killed_in_its_global_phase_resumes_byte_identical(filtered):
    root, refs = filtered
    shutil.rmtree(root / "data" / "dedup")
    leftovers, skipped = crash_then_resume(root, "dedup", "map_done.hash_shard:1", refs["dedup"])
    assert leftovers == [] and skipped == []  # killed before any output: nothing to skip, nothing torn


def test_dedup_killed_while_writing_its_outputs_resumes_byte_identical(filtered):
    root, refs = filtered
    shutil.rmtree(root / "data" / "dedup")
    leftovers, skipped = crash_then_resume(root, "dedup", "shard_done:1", refs["dedup"])
    assert skipped == sorted(ingest_order(root))[:1]  # the global pass re-ran, the finished shard was kept


@pytest.mark.slow
def test_dvc_repro_after_a_crash_resumes_finished_shards(tmp_path):
    import yaml

    root = copy_project(tmp_path / "project")
    params = small_inputs(yaml.safe_load((root / "params.yaml").read_text()))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc = str(Path(sys.executable).parent / "dvc")
    env = {**os.environ, "PIPELINES_WORKSPACE": str(root), "PIPELINES_WORKERS": "1",
           "PIPELINES_FAULT_KILL": "shard_done:3"}
    crashed = subprocess.run([dvc, "repro", "ingest"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert crashed.returncode != 0
    out = root / "data" / "ingest"
    assert len(list((out / "_shards").glob("*.json"))) == 3 and not (out / "_manifest.json").exists()
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    del env["PIPELINES_FAULT_KILL"]
    resumed = subprocess.run([dvc, "repro", "ingest"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    log = resumed.stdout + resumed.stderr
    assert SKIPPED.findall(log) == ingest_order(root)[:3]
    assert all(out.joinpath(n).stat().st_mtime_ns == t for n, t in mtimes.items())  # finished shards untouched
    assert (out / "_manifest.json").exists() and (root / "dvc.lock").exists()


@pytest.mark.slow
def test_dvc_repro_after_a_code_change_recomputes_finished_shards(tmp_path):
    """Resuming keeps shards of the same params, inputs *and code*: DVC re-runs a stage whose code
    changed, and that re-run must not pass the old code's shards off as the new code's output."""
    import yaml

    root = copy_project(tmp_path / "project")
    params = small_inputs(yaml.safe_load((root / "params.yaml").read_text()))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc = str(Path(sys.executable).parent / "dvc")
    env = {**os.environ, "PIPELINES_WORKSPACE": str(root), "PIPELINES_WORKERS": "1"}
    first = subprocess.run([dvc, "repro", "ingest"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    out = root / "data" / "ingest"
    shards = sorted(p.name for p in out.glob("part-*.parquet"))
    before = {n: (out / n).read_bytes() for n in shards}
    manifest = json.loads((out / "_manifest.json").read_text())

    # The same code, forced: the runner finds every output current and does nothing; without the
    # manifest (as after a crash) every finished shard is reused one by one.
    forced = subprocess.run([dvc, "repro", "-f", "ingest"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert forced.returncode == 0 and "nothing to do" in forced.stdout + forced.stderr
    (out / "_manifest.json").unlink()
    forced = subprocess.run([dvc, "repro", "-f", "ingest"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert forced.returncode == 0 and sorted(SKIPPED.findall(forced.stdout + forced.stderr)) == shards

    # A code change (a comment is one too, for DVC): the stage re-runs and recomputes every shard.
    with open(root / "pipelines" / "ingest" / "stage.py", "a") as f:
        f.write("\n# a code change\n")
    changed = subprocess.run([dvc, "repro", "ingest"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    log = changed.stdout + changed.stderr
    assert changed.returncode == 0, log[-3000:]
    assert "Running stage 'ingest'" in log and SKIPPED.findall(log) == []
    assert json.loads((out / "_manifest.json").read_text())["params_hash"] != manifest["params_hash"]
    # The comment changes no output: the recomputed shards are byte-identical.
    assert {n: (out / n).read_bytes() for n in shards} == before


# ---------------------------------------------------------------- training


@pytest.mark.slow
def test_training_sigkilled_after_a_checkpoint_resumes_to_the_same_loss_curve(tmp_path, monkeypatch):
    import yaml

    from tests.fixtures.project import REPO
    from tests.fixtures.training import build_inputs

    root = tmp_path / "ws"
    root.mkdir()
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    build_inputs(root)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update({"threads": 1, "seq_len": 64, "micro_batch": 4, "grad_accum": 1, "phase1_steps": 14,
                            "warmup_steps": 4, "checkpoint_every": 4,
                            "model": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                                      "num_key_value_heads": 2, "intermediate_size": 176}})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PIPELINES_WORKSPACE": str(root), "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [sys.executable, "-m", "pipelines", "train"]

    from pipelines.train.stage import run_phase1

    monkeypatch.setenv("PIPELINES_WORKSPACE", str(root))
    run_phase1(params)  # the uninterrupted reference, in-process (same code, one interpreter start less)
    curve = (root / "metrics/train_phase1.csv").read_text()
    shutil.rmtree(root / "models")
    shutil.rmtree(root / "metrics")

    state = root / "models/phase1/trainer_state.pt"
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # right after the first checkpoint, in the middle of the next steps
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert not (root / "metrics/train_phase1.csv").exists()

    resumed = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    at = re.search(r"resuming at step (\d+)", resumed.stderr)
    assert at and 4 <= int(at.group(1)) < 14 and int(at.group(1)) % 4 == 0, resumed.stderr[-2000:]
    assert (root / "metrics/train_phase1.csv").read_text() == curve  # same loss curve, step for step
