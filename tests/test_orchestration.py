"""DAG derivation from dvc.yaml, run-form params, data-version tagging (no stages run here)."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipelines.orchestration.graph import load_stages, topological, upstream
from pipelines.orchestration.run_params import apply_form
from tests.conftest import REPO


def test_graph_from_dvc_yaml_has_a_gate_after_each_data_stage():
    stages = load_stages(REPO / "dvc.yaml")
    edges = upstream(stages)
    data_stages = ["ingest", "filter", "dedup", "select", "mix", "pack"]
    for prev, nxt in zip(data_stages, data_stages[1:]):
        gate = f"check_{prev}"
        assert stages[gate].is_gate
        assert edges[gate] == {prev}
        assert gate in edges[nxt], f"{nxt} must wait for {gate}"
    assert "check_pack" in edges["train"]
    order = topological(stages)
    assert order.index("train") < order.index("anneal") < order.index("evaluate")


def test_graph_rejects_cycles(tmp_path):
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "a": {"cmd": "x", "deps": ["b.out"], "outs": ["a.out"]},
        "b": {"cmd": "x", "deps": ["a.out"], "outs": ["b.out"]},
    }}))
    with pytest.raises(ValueError, match="cycle"):
        topological(load_stages(tmp_path / "dvc.yaml"))


def test_dags_have_one_task_per_dvc_stage_and_import_fast():
    import airflow.sdk  # noqa: F401  (the DAG processor has Airflow loaded already)

    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    stages = load_stages(REPO / "dvc.yaml")
    corpus = bag.dags["corpus_refresh"]
    corpus_stage_ids = {t.task_id.split(".")[-1] for t in corpus.tasks} - {"apply_run_params", "record_version"}
    assert corpus_stage_ids == {n for n, s in stages.items() if s.dag == "corpus_refresh"}
    assert corpus.catchup is False and corpus.max_active_runs == 1
    assert corpus.timetable.expression == yaml.safe_load((REPO / "params.yaml").read_text())["orchestration"]["schedule"]
    pretrain = bag.dags["pretrain"]
    assert {t.task_id.split(".")[-1] for t in pretrain.tasks} >= {"train", "anneal", "evaluate"}
    # Edges mirror dvc.yaml: filter waits for the ingest gate.
    assert "ingest.check_ingest" in corpus.get_task("filter.filter").upstream_task_ids


HEAVY = ("torch", "transformers", "pandas", "pyarrow", "great_expectations", "dvc", "sklearn", "fastwarc", "tokenizers")


def test_dag_files_import_nothing_heavy():
    """DAG files are parsed often: they may read YAML, never load the data/ML stack."""
    code = (
        "import sys, runpy, airflow.sdk\n"
        f"for f in ['corpus_refresh', 'pretrain']: runpy.run_path({str(REPO / 'dags')!r} + '/' + f + '.py')\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip().splitlines()[-1:] in ([], [""]), f"heavy modules imported: {out.stdout}"


def test_run_form_updates_params_only_when_given(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"ingest": {"warc": ["a"], "max_files": 0}, "other": 1}))
    assert apply_form(tmp_path, {"warc": None, "max_files": None}) == {}
    changed = apply_form(tmp_path, {"warc": ["s3://b/k.warc.gz"], "max_files": 3})
    assert changed == {"ingest.warc": ["s3://b/k.warc.gz"], "ingest.max_files": 3}
    p = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert p["ingest"]["warc"] == ["s3://b/k.warc.gz"] and p["other"] == 1


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


def test_version_tag_leaves_branch_and_index_alone(tmp_path, monkeypatch):
    from pipelines.orchestration.version import data_version, tag_version

    root = tmp_path
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"ingest": {"cmd": "x", "outs": ["o"], "meta": {"dag": "corpus_refresh"}},
                                                               "train": {"cmd": "y", "outs": ["m"], "meta": {"dag": "pretrain"}}}}))
    (root / "params.yaml").write_text("a: 1\n")
    _git(root, "init", "-q")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "add", "dvc.yaml", "params.yaml")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    head = _git(root, "rev-parse", "HEAD")
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"ingest": {"cmd": "x", "outs": [{"path": "o", "md5": "1"}]}}}))
    v = data_version(root)
    # Training entries do not change the data version.
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    lock["stages"]["train"] = {"cmd": "y", "outs": [{"path": "m", "md5": "2"}]}
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert data_version(root) == v
    tag = tag_version(root, v)
    assert tag["created"] and tag["tag"] == f"data/{v}"
    assert _git(root, "rev-parse", "HEAD") == head  # branch not moved
    assert _git(root, "status", "--porcelain") == "?? dvc.lock"  # index untouched
    assert "dvc.lock" in _git(root, "show", "--name-only", "--format=", tag["tag"])
    assert tag_version(root, v)["created"] is False  # idempotent
