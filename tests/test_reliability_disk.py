"""Disk full and an unusable output path: the stage fails with a clear error and leaves nothing half-written.

Tests run as root (chmod does not stop root), so "disk full" is a real ``EFBIG`` from the kernel:
the stage runs in a child with ``RLIMIT_FSIZE`` (max file size) below its shard size, SIGXFSZ ignored.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pyarrow.parquet as pq

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
    env = {**os.environ, "PIPELINES_WORKSPACE": str(workspace.root), "PIPELINES_WORKERS": "1"}
    return subprocess.run([sys.executable, "-c", CHILD.format(limit=limit_bytes)], cwd=workspace.root, env=env,
                          text=True, capture_output=True, timeout=300)


def test_disk_full_fails_clearly_and_leaves_nothing_partial(workspace):
    full = _ingest(workspace, limit_bytes=16 * 1024)  # the shard is larger than this
    assert full.returncode != 0
    last = full.stderr.strip().splitlines()[-1]
    assert "File too large" in last and "data/ingest/.tmp-" not in last, last
    assert f"cannot write {workspace.path('data/ingest/part-00000.parquet')}" in last  # names the output
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
