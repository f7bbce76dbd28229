"""Corpus scale: the same stages on a real two-node Ray cluster with their outputs on S3 give the same
bytes as the local process pool; a SIGKILLed Ray worker is retried and a SIGKILLed driver is resumed.

Both runs read the same inputs from a moto S3 server on 127.0.0.1. The Ray run keeps every shard in
``s3://corpus/ray`` (content-addressed; the workspace holds only manifests, stats and models), so its
tasks, on either node, can only have read and written through S3: nothing passes by accident through
the local filesystem. "The same bytes" is checked on every shard, removed/ file, token shard and
artifact by the sha256 the manifests record (the local run's are files in its workspace).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fixtures.project import REPO, SAMPLES

pytestmark = pytest.mark.slow

STAGES = ["ingest", "quality_model", "filter", "dedup", "select", "mix", "pack"]
INPUTS = {  # sample file -> key in the input bucket
    "warc/cc-main-2020-34_resiliparse-sample.warc.gz": "crawl/cc-main-2020-34/a.warc.gz",
    "warc/cc-main-2024-22_whirlwind.warc.wet.gz": "crawl/cc-main-2024-22/b.warc.wet.gz",
    "text/web_cc/c4-train.00000-of-01024.sample300.jsonl.gz": "curated/web_cc/part0.jsonl.gz",
}
SKIPPED = re.compile(r"(\S+) already complete, skipped")


def _upload_inputs(moto_s3) -> dict[str, str]:
    client = moto_s3.bucket("inputs")
    uris = {}
    for rel, key in INPUTS.items():
        src = SAMPLES / rel
        if not src.exists():  # the curated web sample's file name: whatever the samples hold
            src = sorted((SAMPLES / Path(rel).parent).glob("*.jsonl.gz"))[0]
        client.put_object(Bucket="inputs", Key=key, Body=src.read_bytes())
        uris[rel] = f"s3://inputs/{key}"
    for kind in ("wikipedia", "books", "news"):
        for p in sorted((SAMPLES / "text" / kind).iterdir())[:1]:
            client.put_object(Bucket="inputs", Key=f"curated/{kind}/{p.name}", Body=p.read_bytes())
            uris[kind] = f"s3://inputs/curated/{kind}/{p.name}"
    return uris


def _workspace(root: Path, uris: dict[str, str], executor: dict, storage_root: str | None) -> Path:
    root.mkdir(parents=True)
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    (root / "samples").symlink_to(SAMPLES)  # the eval sets (decontamination) are read by the driver
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    curated = params["ingest"]["curated"]
    params["ingest"].update(warc=[uris["warc/cc-main-2020-34_resiliparse-sample.warc.gz"]],
                            wet=[uris["warc/cc-main-2024-22_whirlwind.warc.wet.gz"]], max_files=0, curated={
        "wikipedia": {**curated["wikipedia"], "paths": [uris["wikipedia"]]},
        "books": {**curated["books"], "paths": [uris["books"]]},
        "news": {**curated["news"], "paths": [uris["news"]]},
        "cc-main-2019-30": {**curated["cc-main-2019-30"], "paths": [uris["text/web_cc/c4-train.00000-of-01024.sample300.jsonl.gz"]]},
    })
    params["filter"]["quality_model"]["max_per_class"] = 200
    params["mix"]["max_rows_per_shard"] = 400  # several blend shards: the shuffle crosses nodes
    params["pack"].update(vocab_size=512, tokenizer_sample_chars=200_000, max_seq_per_shard=256)
    params["executor"] = executor
    params["storage"] = {"root": storage_root}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def _stage(root: Path, name: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    env = {**env, "PIPELINES_WORKSPACE": str(root), "PIPELINES_WORKERS": "2"}
    done = subprocess.run([sys.executable, "-m", "pipelines", name], cwd=root, env=env, capture_output=True, text=True,
                          timeout=900)
    if check:
        assert done.returncode == 0, f"{name}:\n{done.stderr[-4000:]}"
    return done


def _hashes(root: Path) -> dict[str, str]:
    """Every data file and artifact of every stage, by its path in the stage, with its recorded sha256."""
    out = {}
    for manifest in sorted((root / "data").rglob("_manifest.json")):
        m = json.loads(manifest.read_text())
        where = manifest.parent.relative_to(root / "data").as_posix()
        for entry in (m.get("shards") or {}).values():
            for name, fe in entry["files"].items():
                out[f"{where}/{name}"] = fe["sha256"]
        for name, fe in (m.get("artifacts") or {}).items():
            if not name.endswith("index.json"):  # a shared store's index lists the shards' URIs too
                out[f"{where}/{name}"] = fe["sha256"]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, moto_s3, ray_cluster):
    """The local reference run, then the Ray + S3 run (a worker SIGKILLed once during filter)."""
    uris = _upload_inputs(moto_s3)
    moto_s3.bucket("corpus")
    base = tmp_path_factory.mktemp("scale")
    env = {**os.environ, **moto_s3.env()}
    env.pop("PIPELINES_FAULT_KILL", None)
    local = _workspace(base / "local", uris, {"kind": "local", "workers": 2}, None)
    for name in STAGES:
        _stage(local, name, env)
    ray_env = {**ray_cluster.driver_env(), **moto_s3.env()}
    remote = _workspace(base / "ray", uris, {"kind": "ray", "address": ray_cluster.address, "task_cpus": 1,
                                             "max_retries": 3}, "s3://corpus/ray")
    once = base / "kill-once"
    outcomes = {}
    for name in STAGES:
        extra = {}
        if name == "filter":  # a worker dies after writing its first shard; Ray re-runs that task
            once.write_text("armed")
            extra = {"PIPELINES_FAULT_KILL": "shard_done:1", "PIPELINES_FAULT_ONCE": str(once)}
        outcomes[name] = _stage(remote, name, {**ray_env, **extra})
    return {"local": local, "ray": remote, "once": once, "ray_env": ray_env, "moto": moto_s3, "outcomes": outcomes}


def test_ray_on_s3_is_byte_identical_to_the_local_pool(runs):
    local, remote = _hashes(runs["local"]), _hashes(runs["ray"])
    assert set(local) == set(remote)
    assert sum(1 for k in local if "/part-" in k) >= 20 and any("tokens-" in k for k in local)
    assert {k for k in local if local[k] != remote[k]} == set()
    # The Ray run's shards are in S3 only: the workspace keeps manifests, stats and models.
    assert not list((runs["ray"] / "data").rglob("part-*.parquet"))
    assert not list((runs["ray"] / "data").rglob("tokens-*.npy"))
    keys = {o["Key"] for o in runs["moto"].client().list_objects_v2(Bucket="corpus", Prefix="ray/")["Contents"]}
    shards = json.loads((runs["ray"] / "data/dedup/_manifest.json").read_text())["shards"]
    name = sorted(shards)[0]
    assert shards[name]["files"][name]["uri"].split("corpus/", 1)[1] in keys
    assert not any("/_work/" in k for k in keys)  # the shuffle's and dedup's scratch is cleaned up


def test_a_sigkilled_ray_worker_is_retried_with_identical_output(runs):
    # The one-shot fault removed its file just before SIGKILLing the worker that ran the task...
    assert not runs["once"].exists(), "the fault point never fired: the test would prove nothing"
    # ...and the stage still finished in one run (Ray re-ran the task), with the local run's bytes.
    assert runs["outcomes"]["filter"].returncode == 0
    local, remote = _hashes(runs["local"]), _hashes(runs["ray"])
    assert {k: v for k, v in remote.items() if k.startswith("filter/")} == \
        {k: v for k, v in local.items() if k.startswith("filter/")} != {}


def test_a_sigkilled_driver_is_resumed_skipping_the_finished_shards(runs):
    remote = runs["ray"]
    before = _hashes(remote)
    manifest = remote / "data" / "select" / "_manifest.json"
    manifest.unlink()  # the stage must run again (as after any change DVC sees)
    # The driver dies after every task reported back, before it wrote the manifest.
    crashed = _stage(remote, "select", {**runs["ray_env"], "PIPELINES_FAULT_KILL": "map_done.run_task:1"}, check=False)
    assert crashed.returncode in (-signal.SIGKILL, 137), crashed.stderr[-2000:]
    assert not manifest.exists()
    resumed = _stage(remote, "select", runs["ray_env"])
    skipped = SKIPPED.findall(resumed.stderr)
    assert len(skipped) == len(json.loads(manifest.read_text())["shards"]) > 0
    assert _hashes(remote) == before
