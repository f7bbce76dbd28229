"""Record a data version: a content hash of the data stages' entries in dvc.lock,
a git tag pointing at a commit that holds that dvc.lock (the user's branch is not
moved), and `dvc push` of the outputs to the configured remote.

`git checkout data/<version> && dvc pull` brings the exact corpus back.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from pathlib import Path

import yaml

from pipelines import stages
from pipelines.config import workspace
from pipelines.core.atomic import write_json_atomic
from pipelines.core.hashing import canonical_json, sha256_bytes
from pipelines.core.headline import DETAILS, HEADLINE
from pipelines.orchestration.dvc_runner import dvc_executable, run_command, tool_env
from pipelines.ingest.common_crawl import held_crawls
from pipelines.orchestration.graph import load_stages
from pipelines.orchestration.run_params import RUN_PARAMS
from pipelines.versions.lineage import LINEAGE_FILE, build as build_lineage
from pipelines.versions.read import read_json

log = logging.getLogger(__name__)
VERSION_FILE = "reports/data_version.json"
CORPUS_DAG = "corpus_refresh"


def data_version(root: Path | None = None) -> str:
    """Hash of the corpus stages' lock entries (deps/outs/params hashes): same data -> same version."""
    root = Path(root or workspace())
    lock_path = root / "dvc.lock"
    if not lock_path.exists():
        raise FileNotFoundError(f"{lock_path} missing: run the corpus stages (dvc repro) first")
    lock = yaml.safe_load(lock_path.read_text()) or {}
    corpus = {n for n, s in load_stages(root / "dvc.yaml").items() if s.dag == CORPUS_DAG}
    entries = {n: e for n, e in (lock.get("stages") or {}).items() if n in corpus}
    missing = sorted(corpus - set(entries))
    if missing:
        raise RuntimeError(f"dvc.lock has no entry for corpus stage(s) {missing}: the corpus is not fully built")
    return sha256_bytes(canonical_json(entries).encode())[:12]


def _git(args: list[str], root: Path, env: dict | None = None) -> str:
    full_env = dict(os.environ)
    full_env.setdefault("GIT_AUTHOR_NAME", "pipelines")
    full_env.setdefault("GIT_AUTHOR_EMAIL", "pipelines@localhost")
    full_env.setdefault("GIT_COMMITTER_NAME", full_env["GIT_AUTHOR_NAME"])
    full_env.setdefault("GIT_COMMITTER_EMAIL", full_env["GIT_AUTHOR_EMAIL"])
    full_env.update(env or {})
    return subprocess.run(["git", *args], cwd=root, env=full_env, check=True, capture_output=True, text=True).stdout.strip()


def _is_git_repo(root: Path) -> bool:
    try:
        return _git(["rev-parse", "--show-toplevel"], root) == str(root.resolve())
    except (subprocess.CalledProcessError, FileNotFoundError):
        return False


def tag_version(root: Path, version: str) -> dict:
    """Commit dvc.lock/dvc.yaml/params.yaml on top of HEAD through a private index, tag it.

    The working branch and the user's index are untouched; the tag is the data version.
    """
    tag = f"data/{version}"
    try:
        commit = _git(["rev-parse", "--verify", "-q", f"refs/tags/{tag}^{{commit}}"], root)
        return {"tag": tag, "commit": commit, "created": False}
    except subprocess.CalledProcessError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        try:
            head = _git(["rev-parse", "--verify", "-q", "HEAD"], root)
        except subprocess.CalledProcessError:
            head = None
        if head:
            _git(["read-tree", head], root, env)
        # The gate reports are uncached DVC outputs: they travel in git with the lock.
        gates = sorted(str(p.relative_to(root)) for p in (root / "reports/checks").glob("*.json"))
        lineage_file = [LINEAGE_FILE] if (root / LINEAGE_FILE).exists() else []
        # So are the data stages' headline metrics: `dvc metrics diff data/<a> data/<b>` compares them. (Training's
        # are not: they belong to whichever version was trained last.)
        metrics = [m for m in [HEADLINE.format(name=s) for s in stages.names()] + [DETAILS.format(name="select")]
                   if (root / m).exists()]
        _git(["add", "-f", "--", "dvc.lock", "dvc.yaml", "params.yaml", *gates, *lineage_file, *metrics], root, env)
        tree = _git(["write-tree"], root, env)
        args = ["commit-tree", tree, "-m", f"data version {version}"]
        if head:
            args[2:2] = ["-p", head]
        commit = _git(args, root, env)
    _git(["tag", tag, commit], root)
    return {"tag": tag, "commit": commit, "created": True}


def _has_remote(root: Path) -> bool:
    out = subprocess.run([dvc_executable(), "remote", "list"], cwd=root, env=tool_env(), capture_output=True, text=True)
    return out.returncode == 0 and bool(out.stdout.strip())


def record_data_version(params: dict) -> dict:
    root = workspace()
    cfg = (params.get("orchestration") or {}).get("version") or {}
    version = data_version(root)
    # Lineage before the tag: the tag's commit carries it, so every version names its parent.
    previous = read_json(root / LINEAGE_FILE)
    lineage = build_lineage(root, version, previous, held_crawls(params.get("ingest") or {}))
    if (previous or {}).get("version") != version:  # the run-form values this version was built with
        lineage["run_params"] = read_json(root / RUN_PARAMS)
    write_json_atomic(root / LINEAGE_FILE, lineage)
    # A no-op refresh rebuilds the version the workspace held: nothing new to announce (no corpus Asset event).
    changed = (previous or {}).get("version") != version
    result: dict = {"version": version, "parent": lineage["parent"], "changed": changed, "tag": None, "commit": None,
                    "pushed": False}
    if cfg.get("git_commit", True) and _is_git_repo(root):
        result.update(tag_version(root, version))
    elif cfg.get("git_commit", True):
        log.warning("workspace %s is not a git repository root: data version %s not tagged", root, version)
    if cfg.get("dvc_push", True):
        if _has_remote(root):
            corpus = sorted(n for n, s in load_stages(root / "dvc.yaml").items() if s.dag == CORPUS_DAG)
            run_command([dvc_executable(), "push", "-q", *corpus], root, "dvc push")
            result["pushed"] = True
        else:
            log.warning("no DVC remote configured: data version %s not pushed", version)
    write_json_atomic(root / VERSION_FILE, result)
    log.info("data version %s", json.dumps(result))
    return result


PRETRAIN_DAG = "pretrain"
PRETRAIN_RECORD = "reports/pretrain_data_version.json"  # the version the last pretrain run used


def training_data_version(root: Path, triggering_asset_events=None, skip_trained: bool = False, stale=None) -> dict:
    """The data version a pretrain run uses: from the triggering Asset event, else dvc.lock.

    Recorded in reports/pretrain_data_version.json so each model says which corpus it saw. With
    ``skip_trained``, a version the last training already trained (see ``already_trained``) is not recorded
    again: the result carries ``already_trained``, the sentence that says so.
    """
    announced = None
    for events in (triggering_asset_events or {}).values():
        for ev in events:
            extra = getattr(ev, "extra", None) or {}
            if extra.get("version"):
                announced = extra["version"]
    current = data_version(root)
    if announced and announced != current:
        raise RuntimeError(
            f"the corpus announced version {announced} but the workspace holds {current}: "
            f"`git checkout data/{announced} && dvc pull` first"
        )
    if skip_trained and (done := already_trained(root, current, stale)):
        return {"version": current, "from_asset_event": bool(announced), "already_trained": done}
    result = {"version": current, "from_asset_event": bool(announced)}
    write_json_atomic(Path(root) / PRETRAIN_RECORD, result)
    return result


def already_trained(root: Path, version: str, stale=None) -> str | None:
    """Why pretrain has nothing to do for ``version``, or None when it has.

    Nothing to do: the last training recorded this same data version (reports/pretrain_data_version.json,
    what the Data versions page calls "trained on") and DVC finds every pretrain stage up to date
    (its outputs there and made from these inputs, params and code). A failed or interrupted training, or a
    change to the training params or code, leaves a stage stale: then it trains. ``stale(root, stages)``
    names the stale stages (default: ``dvc status``)."""
    root = Path(root)
    used = (read_json(root / PRETRAIN_RECORD) or {}).get("version")
    if used != version:
        return None
    stages = [n for n, s in load_stages(root / "dvc.yaml").items() if s.dag == PRETRAIN_DAG]
    try:
        out_of_date = (stale or stale_stages)(root, stages)
    except Exception as e:  # cannot tell: train (each stage's dvc repro still skips what is up to date)
        log.warning("cannot tell whether data version %s was already trained (%s): training", version, e)
        return None
    if out_of_date:
        log.info("data version %s was trained before, but %s changed since: training", version, ", ".join(out_of_date))
        return None
    return (f"data version {version} was already trained (reports/pretrain_data_version.json) and "
            f"{', '.join(stages)} are up to date: nothing to train")


def stale_stages(root: Path, stages: list[str]) -> list[str]:
    """The ``stages`` that `dvc status` finds out of date (changed deps, params or outs; missing outputs)."""
    out = subprocess.run([dvc_executable(), "status", "--json", *stages], cwd=root, env=tool_env(),
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"dvc status failed: {out.stderr.strip()[-500:]}")
    status = json.loads(out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "{}")
    return sorted(k.split(":")[-1] for k in status)
