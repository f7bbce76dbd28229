"""DAG derivation from dvc.yaml, run-form params, data-version tagging (no stages run here)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipelines.orchestration.graph import load_stages, topological, upstream
from pipelines.orchestration.run_params import apply_form
from tests.fixtures.project import REPO


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
    # Edges mirror dvc.yaml: filter waits for the ingest gate (through quality_model, which waits for it too).
    assert "ingest.check_ingest" in corpus.get_task("filter.filter").get_flat_relative_ids(upstream=True)


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
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"ingest": {"warc": ["a"], "max_files": 0}, "other": 1,
                                                          "orchestration": {"allowed_buckets": ["b"]}}))
    assert apply_form(tmp_path, {"warc": None, "max_files": None}) == {}
    changed = apply_form(tmp_path, {"warc": ["s3://b/k.warc.gz"], "max_files": 3})
    assert changed == {"ingest.warc": ["s3://b/k.warc.gz"], "ingest.max_files": 3}
    p = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert p["ingest"]["warc"] == ["s3://b/k.warc.gz"] and p["other"] == 1


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


def test_version_tag_leaves_branch_and_index_alone(tmp_path, monkeypatch):
    from pipelines.versions.record import data_version, tag_version

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


# ---------------------------------------------------------------- run form (Params) validation

def _form_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.mark.parametrize("field,value,why", [
    ("crawl_id", "CC-MAIN-24-1", "does not match"),
    ("crawl_id", "cc-main-2024-22", "does not match"),
    ("sources", ["wikipedia", "nope"], "is not one of"),
    ("sources", [], "should be non-empty"),
    ("max_files", -1, "less than the minimum"),
    ("max_files", 1.5, "is not of type"),
    ("max_record_bytes", 10, "less than the minimum"),
    ("mixture_preset", "no_such_preset", "is not one of"),
    ("mixture_preset", None, "is not of type"),  # no null choice: the form shows the word for "keep"
    ("executor", None, "is not of type"),
    ("anneal_fraction", 0.9, "greater than the maximum"),
    ("anneal_fraction", 0.01, "less than the minimum"),
    ("warc", ["../outside/*.warc.gz"], "does not match"),
    ("warc", ["samples/../../etc/*"], "does not match"),
    ("warc", ["/etc/passwd"], "does not match"),
    ("wet", ["s3://some-other-bucket/x.wet.gz"], "does not match"),
    ("wet", ["http://example.com/x.wet.gz"], "does not match"),
])
def test_airflow_params_refuse_bad_values(field, value, why, tmp_path):
    """The DAG's Params (what the trigger form and the REST API validate) refuse each bad value, naming it."""
    import copy

    from airflow.sdk import Param
    from airflow.sdk.definitions.param import ParamsDict

    from pipelines.orchestration.run_params import form_defaults, form_schema

    schema = form_schema(_form_params(), tmp_path)
    params = ParamsDict({n: Param(form_defaults(schema)[n], **s) for n, s in schema.items()})
    params.validate()  # the defaults (keep params.yaml) are valid
    bad = copy.deepcopy(params)
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match=field) as err:
        bad[field] = value  # ParamsDict validates on assignment
        bad.validate()
    assert why in str(err.value), str(err.value)


def test_dag_params_form_has_every_field_with_a_schema():
    from airflow.dag_processing.dagbag import DagBag

    from pipelines.orchestration.run_params import value_range

    dag = DagBag(dag_folder=str(REPO / "dags")).dags["corpus_refresh"]
    schemas = {k: dag.params.get_param(k).schema for k in dag.params}
    assert schemas["crawl_id"]["pattern"] == r"^CC-MAIN-\d{4}-\d{2}$"
    assert set(schemas["sources"]["items"]["enum"]) == set(_form_params()["ingest"]["curated"])
    assert schemas["mixture_preset"]["enum"][1:] == list(_form_params()["orchestration"]["mixture_presets"])
    assert value_range(schemas["anneal_fraction"]) == (0.05, 0.5)
    assert schemas["max_files"]["type"] == ["null", "integer"]
    assert dag.params["mixture_preset"] == "keep" and dag.params["executor"] == "keep" and dag.params["crawl_id"] is None


def test_form_fields_render_as_words_not_null():
    """What Airflow's trigger form draws from each schema (airflow/ui FlexibleForm): a drop-down for a
    string enum (each choice shown through values_display), a multi-select for an array with examples,
    a number box that clamps to a top-level minimum/maximum."""
    from pipelines.orchestration.run_params import form_defaults, form_schema, value_range

    schema = form_schema(_form_params(), REPO)
    defaults = form_defaults(schema)
    for name, field in schema.items():
        assert field.get("title"), name
        if "enum" in field:  # a drop-down: no null choice (Airflow shows it as the word "null", first)
            assert None not in field["enum"] and defaults[name] in field["enum"], name
            assert set(field["values_display"]) >= set(field["enum"]), name
            assert "null" not in str(field["type"]), name
    assert schema["mixture_preset"]["values_display"][defaults["mixture_preset"]] == "as in params.yaml"
    curated = list(_form_params()["ingest"]["curated"])
    sources = schema["sources"]  # a multi-select of the known sources, not a free-text list
    assert sources["type"][-1] == "array" and sources["examples"] == curated and sources["items"]["enum"] == curated
    for name in ("anneal_fraction", "max_files", "max_record_bytes"):  # ranged, but never clamped by the form
        assert "minimum" not in schema[name] and "maximum" not in schema[name], name
        assert None not in value_range(schema[name]), name


@pytest.mark.parametrize("form,message", [
    ({"anneal_fraction": 0.9}, "Anneal fraction: 0.9 is above the maximum 0.5"),
    ({"anneal_fraction": 0.01}, "Anneal fraction: 0.01 is below the minimum 0.05"),
    ({"sources": ["wikipedia", "notasource"]}, "Curated sources: item 2 'notasource' is not one of the choices: 'wikipedia', "),
    ({"sources": []}, "Curated sources: choose at least one"),
    ({"mixture_preset": "nope"}, "Mixture preset: 'nope' is not one of the choices: 'keep' (as in params.yaml), 'balanced', "),
    ({"crawl_id": "CC-MAIN-24"}, "Common Crawl id: 'CC-MAIN-24' is not a Common Crawl id like CC-MAIN-2024-22"),
    ({"max_files": 1.5}, "File limit: 1.5 is not a whole number"),
    ({"max_record_bytes": 10}, "Record size limit: 10 is below the minimum 1000"),
    ({"warc": ["../x/*.warc.gz"]}, "WARC inputs: item 1 '../x/*.warc.gz' is not a path inside the workspace"),
    ({"executor": "spark"}, "Executor: 'spark' is not one of the choices"),
    ({"crawl_segment": "1715971057216.39"}, "Crawl segment: needs a Common Crawl id"),
])
def test_form_errors_name_the_field_in_words(form, message, tmp_path):
    """A refused value is refused (never clamped) with one sentence that starts with the field's title."""
    from pipelines.orchestration.run_params import FormError, validate_form

    with pytest.raises(FormError) as err:
        validate_form(form, _form_params(), tmp_path)
    assert str(err.value).startswith(message), str(err.value)
    assert "Failed validating" not in str(err.value) and "schema" not in str(err.value)


def test_apply_form_writes_every_field_and_refuses_paths_outside(tmp_path):
    from pipelines.orchestration.run_params import FormError

    params = _form_params()
    text = (REPO / "params.yaml").read_text()  # the real file, comments and all
    (tmp_path / "params.yaml").write_text(text)
    form = {"crawl_id": "CC-MAIN-2024-22", "crawl_segment": "1715971057216.39", "max_files": 2,
            "sources": ["wikipedia", "code"], "mixture_preset": "code_math", "anneal_fraction": 0.3, "max_record_bytes": 5000,
            "executor": "keep"}
    changed = apply_form(tmp_path, form)
    after = (tmp_path / "params.yaml").read_text()
    # Edited in place: every comment line stays, and only the lines of the changed values differ.
    assert [ln for ln in text.splitlines() if ln.lstrip().startswith("#")] == \
        [ln for ln in after.splitlines() if ln.lstrip().startswith("#")]
    import difflib

    touched = {ln[1:].split(":")[0].strip() for ln in difflib.unified_diff(text.splitlines(), after.splitlines(), n=0)
               if ln[:1] in "+-" and not ln.startswith(("+++", "---"))}
    assert touched <= {"warc", "wet", "max_files", "max_record_bytes", "anneal_fraction", "weights", "- s3",
                       "books", "news", "math", "cc-main-2019-30"}, touched
    recorded = json.loads((tmp_path / "reports/run_params.json").read_text())
    assert recorded["form"] == {k: v for k, v in form.items() if k != "executor"} and set(recorded["changed"]) == set(changed)
    p = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert p["ingest"]["warc"] == ["s3://commoncrawl/crawl-data/CC-MAIN-2024-22/segments/1715971057216.39/warc/*.warc.gz"]
    assert p["ingest"]["wet"][0].endswith("/wet/*.warc.wet.gz")
    assert sorted(p["ingest"]["curated"]) == ["code", "wikipedia"]
    assert p["mix"]["phase1"]["weights"] == params["orchestration"]["mixture_presets"]["code_math"]["phase1"]
    assert p["mix"]["phase2"]["weights"] == params["orchestration"]["mixture_presets"]["code_math"]["phase2"]
    assert p["train"]["anneal_fraction"] == 0.3 and p["ingest"]["max_files"] == 2 and p["ingest"]["max_record_bytes"] == 5000
    assert set(changed) >= {"ingest.warc", "ingest.wet", "ingest.curated", "mix.phase1.weights", "train.anneal_fraction"}
    before = (tmp_path / "params.yaml").read_text()
    for form, msg in [
        ({"warc": [str(tmp_path.parent / "elsewhere" / "*.warc.gz")]}, "^WARC inputs: item 1 .* is not a path inside"),
        ({"warc": ["samples/../../x"]}, "^WARC inputs: item 1 'samples/../../x' is not a path inside"),
        ({"crawl_id": "CC-MAIN-2024-22", "max_files": 0}, "^Common Crawl id: .*set the File limit above 0"),
        ({"crawl_segment": "1715971057216.39"}, "^Crawl segment: needs a Common Crawl id"),
        ({"crawl_id": "CC-MAIN-2024-22", "max_files": 1, "warc": ["samples/x"]}, "not both"),
        ({"no_such_field": 1}, "unknown run-form field"),
        ({"ray_address": "ray-head:6379"}, "^Ray cluster address: needs the executor 'ray'"),
        ({"executor": "ray", "ray_address": "ray://ray-head:10001"}, "^Ray cluster address: 'ray://ray-head:10001' is not a host:port"),
        ({"executor": "spark"}, "^Executor: 'spark' is not one of the choices"),
        ({"anneal_fraction": 0.9}, "^Anneal fraction: 0.9 is above the maximum 0.5"),  # refused, not clamped
    ]:
        with pytest.raises(FormError, match=msg):
            apply_form(tmp_path, form)
    assert (tmp_path / "params.yaml").read_text() == before  # a refused form changes nothing
    assert apply_form(tmp_path, {"warc": [str(tmp_path / "samples" / "*.warc.gz")]}) == {
        "ingest.warc": [str(tmp_path / "samples" / "*.warc.gz")]}  # absolute inside the workspace is fine
    # The cluster: executor kind and the head's address (the token never goes through the form).
    assert apply_form(tmp_path, {"executor": "ray", "ray_address": "ray-head:6379"}) == {
        "executor.kind": "ray", "executor.address": "ray-head:6379"}


# ---------------------------------------------------------------- retries, failure callbacks, pools

def test_stages_retry_with_backoff_but_gates_never(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("PIPELINES_USE_POOLS", "1")
    bag = DagBag(dag_folder=str(REPO / "dags"))
    retries = _form_params()["orchestration"]["retries"]
    assert retries > 0
    for dag in (bag.dags["corpus_refresh"], bag.dags["pretrain"]):
        for t in dag.tasks:
            if getattr(t, "is_gate", False):
                assert t.retries == 0, t.task_id
            elif hasattr(t, "stage"):
                assert t.retries == retries and t.retry_exponential_backoff, t.task_id
                assert t.on_failure_callback, t.task_id
    pools = {t.task_id: t.pool for t in bag.dags["pretrain"].tasks}
    assert pools["train.train"] == "gpu" and pools["train.anneal"] == "gpu" and pools["evaluate.evaluate"] != "gpu"


def test_failure_callback_names_failed_expectation_and_observed_value(tmp_path, caplog):
    from pipelines.orchestration.dag_factory import DvcStageOperator, report_failure

    (tmp_path / "reports/checks").mkdir(parents=True)
    (tmp_path / "reports/checks/filter.json").write_text(json.dumps({
        "stage": "filter", "success": False, "evaluated": 7, "failed": 1, "data_docs": "reports/gx/filter/index.html",
        "checks": [{"batch": "stats", "type": "expect_column_min_to_be_between", "column": "keep_rate",
                    "kwargs": {"min_value": 0.2}, "success": False, "observed": 0.0625},
                   {"batch": "stats", "type": "expect_table_row_count_to_be_between", "column": None,
                    "kwargs": {"min_value": 1}, "success": True, "observed": 3}]}))
    gate = DvcStageOperator(task_id="check_filter", stage="check_filter", is_gate=True)
    import os

    old = os.environ.get("PIPELINES_WORKSPACE")
    os.environ["PIPELINES_WORKSPACE"] = str(tmp_path)
    try:
        with caplog.at_level("ERROR", logger="pipelines.failures"):
            report_failure({"task": gate, "exception": RuntimeError("gate check_filter failed")})
    finally:
        if old is None:
            os.environ.pop("PIPELINES_WORKSPACE")
        else:
            os.environ["PIPELINES_WORKSPACE"] = old
    text = caplog.text
    assert "gate check_filter FAILED: 1 of 7" in text
    assert "expect_column_min_to_be_between(column=keep_rate, min_value=0.2) on stats: observed 0.0625" in text
    assert "expect_table_row_count" not in text and "not retried" in text


# ---------------------------------------------------------------- GPU stages as Kubernetes pods

def test_pretrain_gpu_stages_become_kubernetes_pods_when_configured(monkeypatch):
    """orchestration.train_launcher: kubernetes -> train/anneal are KubernetesPodOperator tasks from infra/'s pod template.

    Rendered with a dry run (no cluster here): the pod must carry the GPU request and the `dvc repro` command."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    local = DagBag(dag_folder=str(REPO / "dags")).dags["pretrain"]
    assert not any(isinstance(t, KubernetesPodOperator) for t in local.tasks)  # default: local

    monkeypatch.setenv("PIPELINES_TRAIN_LAUNCHER", "kubernetes")
    monkeypatch.setenv("PIPELINES_TRAIN_IMAGE", "registry.example/pipelines:1.2")
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags["pretrain"]
    pods = {t.task_id: t for t in dag.tasks if isinstance(t, KubernetesPodOperator)}
    assert set(pods) == {"train.train", "train.anneal"}
    assert not isinstance(dag.get_task("evaluate.evaluate"), KubernetesPodOperator)  # CPU stage stays local
    assert "train.train" in pods["train.anneal"].upstream_task_ids  # same edges as the local DAG
    for stage, op in (("train", pods["train.train"]), ("anneal", pods["train.anneal"])):
        pod = op.build_pod_request_obj(dry_run=True)
        (base,) = [c for c in pod.spec.containers if c.name == "base"]
        assert [*base.command, *base.args] == ["dvc", "repro", "--single-item", stage]
        assert base.image == "registry.example/pipelines:1.2" and base.working_dir == "/workspace"
        assert base.resources.requests["nvidia.com/gpu"] == "1" == base.resources.limits["nvidia.com/gpu"]
        assert {m.mount_path for m in base.volume_mounts} >= {"/workspace"}
        assert any(v.persistent_volume_claim and v.persistent_volume_claim.claim_name == "pipelines-workspace"
                   for v in pod.spec.volumes)
        assert pod.metadata.namespace == "airflow" and pod.spec.node_selector == {"nvidia.com/gpu.present": "true"}

    from pipelines.orchestration.dag_factory import gpu_pod_template, kubernetes_launcher

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg = kubernetes_launcher(params)
    assert gpu_pod_template({**cfg, "gpus": 4}, REPO)["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
    monkeypatch.setenv("PIPELINES_TRAIN_LAUNCHER", "slurm")
    with pytest.raises(ValueError, match="launcher"):
        kubernetes_launcher(params)


# ---------------------------------------------------------------- pretrain skips a version it already trained

def _tiny_dvc_project(root: Path) -> None:
    """A DVC project with one corpus stage and one pretrain stage (shell commands), built once."""
    from pipelines.orchestration.dvc_runner import dvc_executable, tool_env

    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "ingest": {"cmd": "echo corpus > o", "outs": ["o"], "meta": {"dag": "corpus_refresh"}},
        "train": {"cmd": "cat o > m", "deps": ["o"], "params": ["train"], "outs": ["m"], "meta": {"dag": "pretrain"}}}}))
    (root / "params.yaml").write_text("train: {steps: 1}\n")
    _git(root, "init", "-q")
    for argv in (["init", "-q"], ["repro", "-q"]):
        subprocess.run([dvc_executable(), *argv], cwd=root, env=tool_env(), check=True, capture_output=True)


def test_pretrain_skips_a_data_version_it_already_trained(tmp_path, monkeypatch, caplog, capsys):
    import logging

    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.exceptions import AirflowSkipException

    from pipelines.versions.record import PRETRAIN_RECORD, already_trained, data_version, training_data_version

    root = tmp_path
    _tiny_dvc_project(root)
    version = data_version(root)
    assert already_trained(root, version) is None  # never trained: train
    assert training_data_version(root, skip_trained=True) == {"version": version, "from_asset_event": False}
    assert json.loads((root / PRETRAIN_RECORD).read_text())["version"] == version  # what "trained on" reads
    # The same version again, every pretrain stage up to date (dvc status): nothing to train, and it says so.
    done = already_trained(root, version)
    assert done and version in done and "already trained" in done
    # The DAG's first task turns that into a skip (its training tasks follow it), naming the version in the log.
    resolve = DagBag(dag_folder=str(REPO / "dags")).dags["pretrain"].get_task("resolve_data_version")
    monkeypatch.setenv("PIPELINES_WORKSPACE", str(root))
    with caplog.at_level(logging.INFO, logger="pipelines.pretrain"), pytest.raises(AirflowSkipException, match=version):
        resolve.python_callable(triggering_asset_events=None)
    logged = caplog.text + capsys.readouterr().out  # once Airflow has set up its logging, records go to stdout
    assert f"skipping: data version {version} was already trained" in logged
    # Training params changed since (dvc status: train stale): the same data version trains again.
    (root / "params.yaml").write_text("train: {steps: 2}\n")
    assert already_trained(root, version) is None
    # Another data version than the one trained: train (without asking DVC).
    assert already_trained(root, "0123456789ab", stale=lambda *_: pytest.fail("dvc status not needed")) is None
    # dvc status cannot answer: train (each stage's dvc repro still skips what is up to date).
    (root / "params.yaml").write_text("train: {steps: 1}\n")
    assert already_trained(root, version) and already_trained(root, version, stale=lambda *_: 1 / 0) is None


def test_dag_graph_reads_stage_by_stage():
    """One group per stage with its gate inside; the groups form a chain entered after the previous stage's
    gate (no edge leaves a group around its gate or skips a group), and every order dvc.yaml implies holds."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    stages = load_stages(REPO / "dvc.yaml")
    for dag_id in ("corpus_refresh", "pretrain"):
        dag = bag.dags[dag_id]
        staged = {t.task_id: t for t in dag.tasks if hasattr(t, "stage")}
        group = {tid: tid.split(".")[0] for tid in staged}
        for tid, t in staged.items():
            assert tid == f"{stages[t.stage].group}.{t.stage}", tid  # task ids stay group.stage
        crossing = {(group[a], group[b]) for a, t in staged.items() for b in t.downstream_task_ids if b in staged
                    and group[a] != group[b]}
        order = list(dict.fromkeys(group[t.task_id] for t in dag.topological_sort() if t.task_id in staged))
        assert crossing == set(zip(order, order[1:])), (dag_id, crossing)  # a chain of groups
        for a, t in staged.items():
            leaving = [b for b in t.downstream_task_ids if b in staged and group[b] != group[a]]
            if leaving and stages[t.stage].is_gate is False:
                assert not any(stages[s].is_gate for s, st in stages.items() if st.group == group[a]), a
        # Nothing lost: every upstream stage dvc.yaml names is still upstream (through the chain).
        ids = {t.stage: tid for tid, t in staged.items()}
        for name, ups in upstream(stages).items():
            for up in ups & set(ids) if name in ids else ():
                assert ids[up] in dag.get_task(ids[name]).get_flat_relative_ids(upstream=True), (up, name)
    assert len(list(bag.dags["corpus_refresh"].get_task("filter.filter").upstream_task_ids)) == 1
    assert bag.dags["corpus_refresh"].get_task("filter.quality_model").upstream_task_ids == {"ingest.check_ingest"}
