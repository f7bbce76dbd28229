"""S3 faults against a real moto server behind a fault-injecting proxy (tests/fixtures/fault_proxy.py):
throttling, 5xx and slow responses are retried with backoff and the ingest result is unchanged; a
permanent error (AccessDenied, missing key) fails at once with a message naming the object;
`dvc push` to an S3 remote retries through the same faults."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.core.shards import read_all
from tests.fixtures.fault_proxy import FaultProxy
from tests.fixtures.moto_s3 import S3_SECRET, moto_url, s3env  # noqa: F401 (fixtures)

WARC = "samples/warc/cc-main-2024-22_whirlwind.warc.gz"
KEY = "crawl-data/CC-MAIN-2024-22/segments/1/warc/whirlwind.warc.gz"


def _ingest(workspace, uri: str) -> list[dict]:
    from pipelines.stages import runner
    run = runner("ingest")

    params = workspace.params()
    params["ingest"].update(warc=[uri], wet=[], curated={})
    workspace.set_params(params)
    run(params)
    rows = read_all(workspace.path("data/ingest")).to_pylist()
    shutil.rmtree(workspace.path("data/ingest"))
    return rows


@pytest.mark.slow  # 7-15 s: backoff after each fault, one answer slower than the read timeout
def test_throttling_5xx_and_slow_responses_are_retried(workspace, s3env, moto_url, monkeypatch):
    s3, bucket = s3env
    s3.put_object(Bucket=bucket, Key=KEY, Body=workspace.path(WARC).read_bytes())
    monkeypatch.setenv("PIPELINES_WORKERS", "1")
    monkeypatch.setenv("PIPELINES_S3_READ_TIMEOUT", "1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    clean = _ingest(workspace, f"s3://{bucket}/{KEY}")
    assert clean

    faults = ["503", "500", "delay:2.5", "503"]  # one answer slower than the 1 s read timeout
    with FaultProxy(moto_url, faults=faults) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        rows = _ingest(workspace, f"s3://{bucket}/crawl-data/CC-MAIN-2024-22/segments/*/warc/*.warc.gz")
    assert [r["text"] for r in rows] == [r["text"] for r in clean]
    statuses = proxy.statuses()
    assert statuses.count(503) == 2 and statuses.count(500) == 1  # every fault was hit, and retried past
    assert not proxy.faults
    assert statuses[-1] in (200, 206)


def test_permanent_errors_fail_at_once_naming_the_object(workspace, s3env, moto_url, monkeypatch):
    from pipelines.core.storage import open_input

    s3, bucket = s3env
    s3.put_object(Bucket=bucket, Key="private/x.warc.gz", Body=b"x")
    with FaultProxy(moto_url, deny=["private/"]) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        with pytest.raises(IOError, match=rf"s3://{bucket}/private/x\.warc\.gz.*AccessDenied"):
            open_input(f"s3://{bucket}/private/x.warc.gz")
        assert proxy.statuses() == [403]  # not retried: a permanent error
        with pytest.raises(IOError, match=rf"s3://{bucket}/missing\.warc\.gz.*NoSuchKey"):
            open_input(f"s3://{bucket}/missing.warc.gz")
        assert proxy.statuses()[1:] == [404]
        params = workspace.params()
        params["ingest"].update(warc=[f"s3://{bucket}/private/x.warc.gz"], wet=[], curated={})
        from pipelines.stages import runner
        run = runner("ingest")

        with pytest.raises(FileNotFoundError, match=rf"s3://{bucket}/private/x\.warc\.gz"):
            run(params)


@pytest.mark.slow
def test_dvc_push_to_s3_retries_through_faults(tmp_path, s3env, moto_url):
    s3, bucket = s3env
    dvc = str(Path(sys.executable).parent / "dvc")
    root = tmp_path / "repo"
    root.mkdir()
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    run = lambda *a: subprocess.run(a, cwd=root, env=env, capture_output=True, text=True, timeout=120)  # noqa: E731
    assert run("git", "init", "-q").returncode == 0
    assert run(dvc, "init", "-q").returncode == 0
    (root / "data").mkdir()
    for i in range(3):
        (root / "data" / f"f{i}.txt").write_text(f"payload {i}\n" * 100)
    assert run(dvc, "add", "-q", "data").returncode == 0
    with FaultProxy(moto_url, faults=["503", "500", "503", "500"]) as proxy:
        run(dvc, "remote", "add", "-d", "s3", f"s3://{bucket}/dvc")
        run(dvc, "remote", "modify", "s3", "endpointurl", proxy.url)
        pushed = run(dvc, "push")
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr
        assert S3_SECRET not in pushed.stdout + pushed.stderr
    statuses = proxy.statuses()
    assert statuses.count(503) == 2 and statuses.count(500) == 2
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="dvc/").get("Contents", [])]
    assert len(keys) == 4  # three files + the directory manifest


def test_s3_reads_use_a_backoff_retry_mode(monkeypatch):
    """The retries above wait between attempts: botocore's `standard`/`adaptive` modes back off
    exponentially with jitter (`legacy` or max_attempts 1 would retry at once or not at all)."""
    from pipelines.core.storage import s3_client

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("PIPELINES_S3_MAX_ATTEMPTS", raising=False)
    retries = s3_client().meta.config.retries
    assert retries["mode"] in ("standard", "adaptive") and retries["total_max_attempts"] >= 3, retries
