"""Shards on S3 (``storage.root: s3://...``): content-addressed objects that a later data version never
overwrites, a workspace that keeps only what DVC versions (manifests, stats), downstream stages and
gates that read through the manifest, and a gate that fails when an object is gone or altered."""
from __future__ import annotations

import json
import shutil

import pytest

from pipelines import stages
from pipelines.checks.gate import GateFailed, run_gate
from pipelines.core.shards import read_all, stage_shards
from pipelines.core.store import S3Store, stage_store

WARC = ["samples/warc/cc-main-2020-34_resiliparse-sample.warc.gz", "samples/warc/cc-main-2024-22_whirlwind.warc.gz"]


@pytest.fixture
def on_s3(workspace, moto_s3, monkeypatch):
    for k, v in moto_s3.env().items():
        monkeypatch.setenv(k, v)
    moto_s3.bucket("corpus")
    params = workspace.params()
    params["ingest"].update(warc=WARC, wet=[], curated={}, max_files=1)
    params["storage"] = {"root": "s3://corpus/v"}
    params["checks"]["data_docs"] = False
    params["checks"]["ingest"]["min_records"] = 1
    workspace.set_params(params)
    return workspace, moto_s3


def _objects(moto_s3) -> dict[str, str]:
    listing = moto_s3.client().list_objects_v2(Bucket="corpus", Prefix="v/ingest/objects/").get("Contents", [])
    return {o["Key"]: o["ETag"] for o in listing}


def test_a_later_version_never_overwrites_an_earlier_one(on_s3, tmp_path):
    ws, moto_s3 = on_s3
    out = ws.path("data", "ingest")
    stages.run("ingest", ws.params())
    assert not list(out.glob("part-*.parquet")), "shards belong in the store, not in the workspace"
    version_a = tmp_path / "a"
    shutil.copytree(out, version_a)  # what `git checkout data/<a> && dvc pull` brings back: the manifest
    rows_a = read_all(version_a).num_rows
    objects_a = _objects(moto_s3)
    assert len(objects_a) == 1 and rows_a > 0

    # The next version (another input list) writes its own objects next to them.
    stages.run("ingest", ws.update("ingest.max_files", 0))
    objects_b = _objects(moto_s3)
    assert len(objects_b) == 2 and all(objects_b[k] == etag for k, etag in objects_a.items())
    manifest_a = json.loads((version_a / "_manifest.json").read_text())
    store = stage_store(ws.params()["storage"], out, "ingest")
    assert isinstance(store, S3Store)
    for entry in manifest_a["shards"].values():
        for name, fe in entry["files"].items():
            assert fe["uri"].startswith("s3://corpus/v/ingest/objects/") and store.problem(name, fe) is None
    assert read_all(version_a).num_rows == rows_a  # version A reads back as it was
    names_b = sorted(json.loads((out / "_manifest.json").read_text())["shards"])
    assert [r.name for r in stage_shards(out, "ingest")] == names_b and len(names_b) == 2
    assert set(manifest_a["shards"]) < set(names_b)  # named after its input: version A's file keeps its shard name


def test_gates_read_through_the_store_and_fail_on_a_missing_or_altered_object(on_s3):
    ws, moto_s3 = on_s3
    stages.run("ingest", ws.params())
    assert run_gate("ingest", ws.params())["success"]
    manifest = json.loads(ws.path("data", "ingest", "_manifest.json").read_text())
    first = sorted(manifest["shards"])[0]
    uri = manifest["shards"][first]["files"][first]["uri"]
    key = uri.split("corpus/", 1)[1]
    client = moto_s3.client()
    body = client.get_object(Bucket="corpus", Key=key)["Body"].read()
    # Altered in place by someone else (same size, no checksum sent): the gate reads and hashes it.
    client.put_object(Bucket="corpus", Key=key, Body=body[:-10] + b"0123456789")
    with pytest.raises(GateFailed, match=f"{first}: sha256 mismatch"):
        run_gate("ingest", ws.params())
    client.delete_object(Bucket="corpus", Key=key)
    with pytest.raises(GateFailed, match=f"{first}: missing"):
        run_gate("ingest", ws.params())
    # The stage notices it too: the re-run rewrites the object (same content, same key).
    stages.run("ingest", ws.params())
    assert client.get_object(Bucket="corpus", Key=key)["Body"].read() == body
    assert run_gate("ingest", ws.params())["success"]
