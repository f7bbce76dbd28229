"""Disk full and an unusable output path: the stage fails with a clear error and leaves nothing half-written.

Tests run as root (chmod does not stop root), so "disk full" is a real ``EFBIG`` from the kernel:
the stage runs in a child with ``RLIMIT_FSIZE`` (max file size) below its shard size, SIGXFSZ ignored.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

import pyarrow.parquet as pq

from tests.fixtures.crash_resume import ingest_order

WARC = "samples/warc/cc-main-2020-34_resiliparse-sample.warc.gz"


# The language-ID model unpacks itself to a temp file when loaded: load it first, then shrink the disk.
CHILD = """
import resource, signal, sys
from pipelines.ingest import langid
langid.identifier()
if {limit}:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
from pipelines.cli import main
sys.exit(main(["ingest"]))
"""


def _ingest(workspace, limit_bytes: int = 0) -> subprocess.CompletedProcess:
    params = workspace.params()
    params["ingest"].update(warc=[WARC], wet=[], curated={})
    workspace.set_params(params)
    # No bytecode writes: under the file-size limit a .pyc would be cut short and break later imports.
    env = {**os.environ, "PIPELINES_WORKSPACE": str(workspace.root), "PIPELINES_WORKERS": "1",
           "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-c", CHILD.format(limit=limit_bytes)], cwd=workspace.root, env=env,
                          text=True, capture_output=True, timeout=300)


def test_disk_full_fails_clearly_and_leaves_nothing_partial(workspace):
    full = _ingest(workspace, limit_bytes=16 * 1024)  # the shard is larger than this
    assert full.returncode != 0
    last = full.stderr.strip().splitlines()[-1]
    assert "File too large" in last and "data/ingest/.tmp-" not in last, last
    first = ingest_order(workspace.root)[0]  # the shard of the first input file (one worker: written first)
    assert f"cannot write {workspace.path('data/ingest', first)}" in last  # names the output
    out = workspace.path("data/ingest")
    assert not list(out.rglob(".tmp-*")), "a temp file survived the failed write"
    assert not list(out.glob("part-*.parquet")) and not (out / "_manifest.json").exists()
    for p in out.rglob("*.parquet"):
        pq.ParquetFile(p).metadata
    again = _ingest(workspace)  # space is back: the same command completes
    assert again.returncode == 0, again.stderr[-2000:]
    assert (out / "_manifest.json").exists() and list(out.glob("part-*.parquet"))


def test_output_path_that_is_not_a_directory_is_a_clear_error(workspace):
    workspace.path("data").mkdir()
    workspace.path("data/ingest").write_text("not a directory\n")
    failed = _ingest(workspace)
    assert failed.returncode != 0
    assert "data/ingest" in failed.stderr.strip().splitlines()[-1]  # the last line names the path
    assert workspace.path("data/ingest").read_text() == "not a directory\n"  # left untouched


def _without_root_override(argv: list[str]) -> list[str]:
    """Root ignores file modes: run ``argv`` without the capabilities that let it (CAP_DAC_*), so the
    kernel really answers EACCES (an unprivileged user needs nothing: the mode bits apply)."""
    if os.getuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.skip("running as root without util-linux setpriv: cannot drop CAP_DAC_OVERRIDE")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--", *argv]


def test_permission_denied_on_the_output_dir_fails_clearly_and_writes_nothing(workspace):
    params = workspace.params()
    params["ingest"].update(warc=[WARC], wet=[], curated={})
    workspace.set_params(params)
    out = workspace.path("data/ingest")
    out.mkdir(parents=True)
    out.chmod(0o555)  # a read-only output dir
    env = {**os.environ, "PIPELINES_WORKSPACE": str(workspace.root), "PIPELINES_WORKERS": "1"}
    argv = [sys.executable, "-m", "pipelines", "ingest"]
    denied = subprocess.run(_without_root_override(argv), cwd=workspace.root, env=env, text=True,
                            capture_output=True, timeout=300)
    assert denied.returncode != 0
    last = denied.stderr.strip().splitlines()[-1]
    assert "Permission denied" in last and ".tmp-" not in last, last  # a clear error naming the output
    assert f"cannot write {out / ingest_order(workspace.root)[0]}" in last, last
    assert list(out.rglob("*")) == [], "something was written into the read-only output dir"
    out.chmod(0o755)  # permission restored: the same command completes
    again = subprocess.run(argv, cwd=workspace.root, env=env, text=True, capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (out / "_manifest.json").exists() and list(out.glob("part-*.parquet"))
