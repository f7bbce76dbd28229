"""The whole workflow on the real samples, in a fresh copy of the project:
Airflow runs corpus_refresh then pretrain (dag.test), the data version is tagged and
pushed, `dvc repro` is then a no-op, a refresh adding a crawl and a takedown is a child
version (lineage, gates, restore of both versions by `dvc pull`), a threshold change
re-runs only what follows it, and a failing gate stops the DAG run there.

One project copy is shared by the tests of this module, which run in order.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.fixtures.airflow_dags import load_dag
from tests.fixtures.project import copy_project

pytestmark = pytest.mark.slow

DVC = str(Path(sys.executable).parent / "dvc")


@pytest.fixture(scope="module")
def project(tmp_path_factory, airflow_db):
    root = copy_project(tmp_path_factory.mktemp("e2e") / "project")
    params = yaml.safe_load((root / "params.yaml").read_text())
    # Short training keeps the suite fast; everything else runs at demo settings.
    params["train"].update(phase1_steps=12, warmup_steps=4, checkpoint_every=6)
    params["evaluate"]["max_docs_per_source"] = 5
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    subprocess.run([*git, "commit", "-qam", "test params"], cwd=root, check=True)
    old = {k: os.environ.get(k) for k in ("PIPELINES_WORKSPACE", "PATH", "AIRFLOW__CORE__DAGS_FOLDER")}
    os.environ["PIPELINES_WORKSPACE"] = str(root)
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(root / "dags")
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _states(dagrun) -> dict[str, str]:
    return {ti.task_id.split(".")[-1]: str(ti.state) for ti in dagrun.get_task_instances()}


def _dvc(root: Path, *args: str) -> str:
    out = subprocess.run([DVC, *args], cwd=root, capture_output=True, text=True, env=dict(os.environ))
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def test_airflow_runs_corpus_refresh_then_pretrain(project):
    run = load_dag(project, "corpus_refresh").test()
    states = _states(run)
    assert str(run.state) == "success", states
    assert set(states.values()) == {"success"}
    version = json.loads((project / "reports/data_version.json").read_text())
    assert version["pushed"] and version["tag"] == f"data/{version['version']}"
    tags = subprocess.run(["git", "tag"], cwd=project, capture_output=True, text=True).stdout.split()
    assert version["tag"] in tags
    assert any((project / ".dvc-remote").rglob("*")), "dvc push wrote nothing to the local remote"

    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        events = session.query(AssetEvent).all()
        assert any((e.extra or {}).get("version") == version["version"] for e in events)

    run = load_dag(project, "pretrain").test()
    assert str(run.state) == "success", _states(run)
    ev = json.loads((project / "metrics/details/eval.json").read_text())
    for phase in ("phase1", "phase2"):
        bpb = ev[phase]["bpb"]
        assert bpb and all(0 < v < 20 for v in bpb.values())
    used = json.loads((project / "reports/pretrain_data_version.json").read_text())
    assert used["version"] == version["version"]


def test_demo_progress_reads_the_run_and_the_training(project):
    """What make demo prints while it waits: from the real run's states in the Airflow DB and the training's
    progress file (the demo's own run uses the workspace's .airflow DB; dag.test() here, the session's)."""
    import io

    from pipelines.demo.progress import Progress, training_line

    out = io.StringIO()
    Progress(project, "corpus_refresh", out=out, db=Path(os.environ["AIRFLOW_HOME"]) / "airflow.db").tick()
    text = out.getvalue()
    assert re.search(r"corpus_refresh \d+s: (\d+)/\1 tasks done", text), text
    assert re.search(r"success +dedup\.dedup in \d+s, [\d,]+ records \([\d,]+/s\)", text), text
    line = training_line(project, since=0)
    assert line and re.search(r"train phase\d: \[#+\] step (\d+)/\1, loss \d", line), line
    # As make demo runs it: a thread that reports on its own and stops cleanly.
    out = io.StringIO()
    watcher = Progress(project, "pretrain", every=0.2, out=out, db=Path(os.environ["AIRFLOW_HOME"]) / "airflow.db")
    watcher.start()
    time.sleep(0.7)
    watcher.stop()
    assert not watcher.is_alive() and out.getvalue().count("[demo] pretrain ") >= 2, out.getvalue()


def test_the_offline_report_shows_the_build(project):
    """reports/index.html: one self-contained page with the funnel, the gates and their Data Docs, the loss curve and
    bits per byte; nothing loaded from the network."""
    from pipelines.versions.report import write_report

    path = write_report(project)
    html = path.read_text()
    version = json.loads((project / "reports/data_version.json").read_text())["version"]
    for part in ("<h3>Funnel: records per stage</h3>", "<h3>Drops by reason</h3>", "filter: language", "<h3>Gates</h3>",
                 "check_filter", "<h3>Training loss</h3>", "<h3>Learning rate</h3>", "Bits per byte on held-out text",
                 f"Data version <code>{version}</code>", "<h3>Figures</h3>"):
        assert part in html, part
    assert "<script" not in html and "<link" not in html and "src=\"http" not in html
    for href in re.findall(r'href="(\./gx/[^"]+)"', html):  # every Data Docs link resolves beside the report
        assert (project / "reports" / href).is_file(), href
    for name in ("funnel", "training", "bpb"):  # the PNGs, also as files to paste elsewhere
        assert (project / f"reports/figures/{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    # As a person opens it: in a browser with the network blocked, every picture loads and the parts are there.
    from selenium.webdriver.common.by import By

    from tests.browser import chrome, close

    driver = chrome(offline=True, size="1200,4000")
    try:
        driver.get(path.as_uri())
        headings = [h.text for h in driver.find_elements(By.CSS_SELECTOR, "h3")]
        for part in ("Funnel: records per stage", "Gates", "Training loss", "Bits per byte on held-out text, phase2"):
            assert part in headings, (part, headings)
        images = driver.execute_script("return Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth])")
        assert sorted(a for a, w in images if w > 0) == ["bpb", "funnel", "training"], images
        assert driver.find_elements(By.CSS_SELECTOR, "svg.chart.line polyline")  # the loss curves, drawn
        artifacts = Path(__file__).resolve().parents[1] / "reports" / "test-artifacts"  # for a person to review
        artifacts.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(artifacts / "report-index.png"))
    finally:
        close(driver)


def test_every_stage_output_is_accounted_for(project):
    import pyarrow.parquet as pq

    for stage in ("filter", "dedup", "select"):
        stats = pq.read_table(project / "data" / stage / "_stats.parquet").to_pandas()
        assert (stats.records_in == stats.records_out + stats.records_dropped).all()
        removed = sum(pq.ParquetFile(p).metadata.num_rows for p in (project / "data" / stage / "removed").glob("*.parquet"))
        assert removed == stats.records_dropped.sum()
    prev = json.loads((project / "data/ingest/_manifest.json").read_text())["totals"]["rows"]
    nxt = pq.read_table(project / "data/filter/_stats.parquet").to_pandas().records_in.sum()
    assert prev == nxt, "filter must see every record ingest wrote"


def test_dvc_repro_right_after_is_a_noop(project):
    out = _dvc(project, "status")
    assert "Data and pipelines are up to date" in out, out
    before = {p: p.stat().st_mtime_ns for p in (project / "data").rglob("*.parquet")}
    _dvc(project, "repro")
    after = {p: p.stat().st_mtime_ns for p in (project / "data").rglob("*.parquet")}
    assert before == after


def test_dvc_metrics_show_reads_in_a_terminal(project):
    """One row per step, a handful of shared columns; the detail is in metrics/details/."""
    from pipelines import stages
    from pipelines.core.headline import COLUMNS

    lines = [line.rstrip() for line in _dvc(project, "metrics", "show").splitlines() if line.strip()]
    assert max(len(line) for line in lines) <= 120, "\n".join(lines)
    assert set(lines[0].split()[1:]) <= set(COLUMNS), lines[0]
    for name in [*stages.names(), "train_phase1", "train_phase2", "eval"]:
        assert any(line.startswith(f"metrics/{name}.json ") for line in lines), (name, lines)
    assert (project / "metrics/details/eval.json").is_file() and (project / "metrics/details/select.json").is_file()


def _data_hashes(root: Path) -> dict[str, str]:
    import hashlib

    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / "data").rglob("*")) if p.is_file()}


def test_refresh_with_a_new_crawl_and_a_takedown_is_a_child_version(project, tmp_path):
    import pyarrow.parquet as pq

    from pipelines.orchestration.graph import load_stages
    from pipelines.versions.page import render
    from pipelines.versions.read import collect

    v1 = json.loads((project / "reports/data_version.json").read_text())["version"]
    assert json.loads((project / "reports/lineage.json").read_text())["parent"] is None
    v1_data = _data_hashes(project)
    # The refresh: a new crawl (a later capture of pages an earlier crawl holds) and a removal request
    # for the web domain the blends hold most records of.
    (project / "inputs").mkdir()
    (project / "inputs/CC-MAIN-2025-05-recapture.warc.gz").write_bytes(
        (project / "samples/warc/dolma_sample-0000.warc.gz").read_bytes())
    mixed = [r for split in ("phase1", "phase2") for p in sorted((project / "data/mix" / split).glob("part-*.parquet"))
             for r in pq.read_table(p, columns=["domain", "source"]).to_pylist()]
    web = [r["domain"] for r in mixed if r["domain"] and r["source"] not in ("wikipedia", "books", "news", "code", "math")]
    domain = max(set(web), key=web.count)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["ingest"]["warc"].append("inputs/*.warc.gz")
    params["filter"]["takedown"]["domains"] = [domain]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    ingested = {p: p.stat().st_mtime_ns for p in (project / "data/ingest").glob("part-*.parquet")}
    run = load_dag(project, "corpus_refresh").test()
    assert str(run.state) == "success", _states(run)
    # Only new work at ingest: shards are named after their files, so every earlier file's shard is reused.
    after = {p: p.stat().st_mtime_ns for p in (project / "data/ingest").glob("part-*.parquet")}
    assert {p: after.get(p) for p in ingested} == ingested and len(after) == len(ingested) + 1
    v2 = json.loads((project / "reports/data_version.json").read_text())
    lineage = json.loads((project / "reports/lineage.json").read_text())
    assert v2["version"] != v1 and v2["parent"] == lineage["parent"] == v1
    assert lineage["run_params"]["form"] == {}  # this refresh came from params.yaml edits, not the run form
    assert "cc-main-2025-05" in lineage["crawls"] and "cc-main-2020-34" in lineage["crawls"]
    assert lineage["deltas"]["ingest"]["records_out"]["cc-main-2025-05"] > 0
    assert lineage["deltas"]["filter"]["drops"]["takedown"] == sum(lineage["stages"]["filter"]["drops"]["takedown"].values()) > 0
    cross = lineage["cross_source_duplicates"]  # the recapture repeats the (English) pages of the dolma sample
    assert cross["records"] > 0 and set(cross["by_source"]) <= {"cc-main-2025-05", "web"}
    # The removal is proven by the gates, and nothing downstream holds the domain.
    for gate in ("filter", "mix"):
        report = json.loads((project / f"reports/checks/{gate}.json").read_text())
        (check,) = [c for c in report["checks"] if c["type"] == "no_taken_down_record_remains"]
        assert check["success"] and check["observed"]["records_checked"] > 0
    for stage in ("filter", "dedup", "select"):
        for p in (project / "data" / stage).glob("part-*.parquet"):
            domains = pq.read_table(p, columns=["domain"]).column("domain").to_pylist()
            assert not any(d and (d == domain or d.endswith("." + domain)) for d in domains)
    # The Data versions page shows the chain: version 2 grew from version 1.
    versions = {v["version"]: v for v in collect(project)}
    assert versions[v2["version"]]["lineage"]["parent"] == v1 and versions[v1]["lineage"]["parent"] is None
    assert f"<a href='#v-{v1}'>" in render(list(versions.values()))
    # `dvc metrics diff` between the two versions' tags says what changed, stage by stage.
    diff = _dvc(project, "metrics", "diff", f"data/{v1}", f"data/{v2['version']}")
    assert re.search(r"metrics/ingest\.json\s+records_out\s+\d+\s+\d+\s+\d+", diff), diff
    assert re.search(r"metrics/filter\.json\s+dropped\s+\d+\s+\d+", diff), diff

    # Each version comes back byte for byte in a fresh clone: git checkout data/<v> && dvc pull.
    v2_data = _data_hashes(project)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    _dvc(clone, "remote", "modify", "--local", "local", "url", str(project / ".dvc-remote"))
    corpus = [n for n, s in load_stages(project / "dvc.yaml").items() if s.dag == "corpus_refresh"]
    for version, expected in ((v1, v1_data), (v2["version"], v2_data)):
        subprocess.run(["git", "checkout", "-q", f"data/{version}"], cwd=clone, check=True)
        _dvc(clone, "pull", "-q", "--force", *corpus)  # what a data version pushes: the corpus stages
        assert _data_hashes(clone) == expected, version
    # A re-run of the same refresh is a no-op: same version, same parent, and no corpus Asset event (its
    # record_version task is skipped), so pretrain is not scheduled for nothing.
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        events_before = session.query(AssetEvent).count()
    run = load_dag(project, "corpus_refresh").test()
    assert str(run.state) == "success" and _states(run)["record_version"] == "skipped", _states(run)
    with create_session() as session:
        assert session.query(AssetEvent).count() == events_before
    again = json.loads((project / "reports/lineage.json").read_text())
    assert again["version"] == v2["version"] and again["parent"] == v1


def test_keep_fraction_change_reruns_the_filter_not_the_quality_model(project):
    """web_keep_fraction is the filter's knob: DVC re-runs the filter for it, never the classifier's training."""
    path = project / "params.yaml"
    before = path.read_bytes()
    try:
        params = yaml.safe_load(before)
        params["filter"]["quality_model"]["web_keep_fraction"] = 0.7
        path.write_text(yaml.safe_dump(params, sort_keys=False))
        status = yaml.safe_load(subprocess.run([DVC, "status", "--json"], cwd=project, capture_output=True,
                                               text=True).stdout)
        assert "filter" in status and "quality_model" not in status
    finally:
        path.write_bytes(before)


def test_threshold_change_reruns_filter_and_downstream_only(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["filter"]["gopher_quality"]["min_doc_words"] = 80
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = yaml.safe_load(subprocess.run([DVC, "status", "--json"], cwd=project, capture_output=True, text=True).stdout)
    changed = set(status)
    assert "filter" in changed
    assert not changed & {"ingest", "check_ingest"}
    ingest_mtimes = {p: p.stat().st_mtime_ns for p in (project / "data/ingest").rglob("*")}
    out = _dvc(project, "repro", "check_filter")
    assert "Running stage 'filter'" in out and "Running stage 'ingest'" not in out
    assert {p: p.stat().st_mtime_ns for p in (project / "data/ingest").rglob("*")} == ingest_mtimes


def test_failing_gate_stops_the_dag_run(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["checks"]["ingest"]["min_records"] = 10**9  # impossible: the gate must fail
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run = load_dag(project, "corpus_refresh").test()
    states = _states(run)
    assert str(run.state) == "failed"
    assert states["check_ingest"] == "failed"
    assert states["filter"] in ("upstream_failed", "None")
    assert states["record_version"] in ("upstream_failed", "None")
    result = json.loads((project / "reports/checks/ingest.json").read_text())
    assert result["success"] is False
