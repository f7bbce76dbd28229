"""The "Data versions" plugin page: content from the files the pipeline writes (FastAPI TestClient),
an older tagged version read back from the DVC cache, and the plugin's registration."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.fixtures.project import REPO

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def _write(path: Path, obj) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = obj if isinstance(obj, str) else json.dumps(obj)
    path.write_text(data)
    return hashlib.md5(data.encode()).hexdigest()


def _manifest(rows: int) -> dict:
    return {"totals": {"rows": rows}}


def _build(root: Path, rows: dict[str, int], tokens: dict[str, dict[str, int]], shares: dict[str, float]) -> None:
    for stage, n in rows.items():
        _write(root / "data" / stage / "_manifest.json", _manifest(n))
    _write(root / "data/mix/blend.json", {"phases": {"phase1": {"sources": {
        s: {"share": v, "target_share": v} for s, v in shares.items()}}}})
    _write(root / "data/pack/pack.json", {"phases": {p: {"tokens": sum(t.values()), "n_seq": 3, "tokens_by_source": t}
                                                     for p, t in tokens.items()}})


def _cache_dir_out(root: Path, out: str) -> str:
    """Store a directory output in the DVC cache the way DVC 3 does (files + a .dir listing); returns its md5."""
    cache = root / ".dvc/cache/files/md5"
    listing = []
    for f in sorted((root / out).rglob("*")):
        if f.is_file():
            md5 = hashlib.md5(f.read_bytes()).hexdigest()
            (cache / md5[:2]).mkdir(parents=True, exist_ok=True)
            (cache / md5[:2] / md5[2:]).write_bytes(f.read_bytes())
            listing.append({"md5": md5, "relpath": f.relative_to(root / out).as_posix()})
    text = json.dumps(listing)
    md5 = hashlib.md5(text.encode()).hexdigest() + ".dir"
    (cache / md5[:2]).mkdir(parents=True, exist_ok=True)
    (cache / md5[:2] / md5[2:]).write_text(text)
    return md5


@pytest.fixture
def project(tmp_path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    subprocess.run([*GIT, "init", "-q"], cwd=root, check=True)
    (root / "dvc.yaml").write_text("stages: {}\n")
    subprocess.run([*GIT, "add", "dvc.yaml"], cwd=root, check=True)
    subprocess.run([*GIT, "commit", "-qm", "init"], cwd=root, check=True)
    # An older version: built, cached by DVC, tagged; then the workspace moved on.
    _build(root, {"ingest": 900, "filter": 500, "dedup": 400, "select": 300}, {"phase1": {"web": 700, "books": 300}},
           {"web": 0.7, "books": 0.3})
    lock = {"schema": "2.0", "stages": {s: {"cmd": "x", "outs": [{"path": f"data/{s}", "md5": _cache_dir_out(root, f"data/{s}")}]}
                                        for s in ("ingest", "filter", "dedup", "select", "mix", "pack")}}
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    # record_version commits the gate reports and the lineage with the lock: the tag carries them.
    _write(root / "reports/checks/ingest.json", {"stage": "ingest", "success": True, "evaluated": 7, "checks": [],
                                                 "data_docs": "reports/gx/ingest/index.html"})
    _write(root / "reports/lineage.json", {"parent": None, "crawls": [], "sources": ["web", "books"],
                                           "stages": {"filter": {"drops": {"language": {"web": 41, "books": 2}}},
                                                      "ingest": {"drops": {"empty_text": {"web": 5}}}}})
    subprocess.run([*GIT, "add", "-f", "dvc.lock", "reports/checks/ingest.json", "reports/lineage.json"], cwd=root, check=True)
    subprocess.run([*GIT, "commit", "-qm", "old version"], cwd=root, check=True)
    subprocess.run([*GIT, "tag", "data/oldversion01"], cwd=root, check=True)
    # The current build.
    _build(root, {"ingest": 1000, "filter": 640, "dedup": 610, "select": 480},
           {"phase1": {"web": 6000, "wikipedia": 2000, "code": 2000}, "phase2": {"wikipedia": 900, "code": 100, "books": 0}},
           {"web": 0.5, "wikipedia": 0.3, "code": 0.2})
    _write(root / "reports/data_version.json", {"version": "newversion02", "tag": None})
    _write(root / "reports/checks/ingest.json", {"stage": "ingest", "success": True, "evaluated": 9, "checks": [],
                                                 "data_docs": "reports/gx/ingest/index.html"})
    _write(root / "reports/gx/ingest/index.html", "<html>GX docs for ingest</html>")
    _write(root / "reports/checks/filter.json", {"stage": "filter", "success": False, "evaluated": 6, "data_docs": None,
                                                 "checks": [{"type": "expect_column_min_to_be_between", "column": "keep_rate",
                                                             "success": False, "observed": 0.0625}]})
    _write(root / "metrics/train_phase1.csv", "step,loss,lr\n1,8.0,0.001\n2,6.5,0.002\n3,5.9,0.002\n")
    _write(root / "metrics/train_phase2.csv", "step,loss,lr\n4,5.5,0.001\n5,5.2,0.0002\n")
    _write(root / "metrics/details/eval.json", {"phase1": {"bpb": {"books": 2.5, "code": 3.0}}, "phase2": {"bpb": {"books": 2.2, "code": 2.9}}})
    _write(root / "reports/pretrain_data_version.json", {"version": "newversion02"})
    return root


def test_page_shows_funnel_gates_mixture_tokens_and_curves(project):
    from fastapi.testclient import TestClient

    from pipelines.versions.page import create_app

    client = TestClient(create_app(project, require_auth=False))
    html = client.get("/").text
    current, old = html.split("<section class='version'>")[1:]
    assert "newversion02" in current and "current workspace" in current
    # Funnel: one bar per stage with its record count, tokens per phase.
    for stage, n in [("ingest", "1,000"), ("filter", "640"), ("dedup", "610"), ("select", "480")]:
        assert re.search(rf">{stage}</text><rect[^>]+/><text[^>]*>{n} records<", current), stage
    assert "10,000 tokens" in current and "1,000 tokens" in current
    # Gates with the failed expectation, its observed value, and a working Data Docs link.
    assert "<td>check_ingest</td><td>pass</td>" in current
    assert "<td>check_filter</td><td>FAIL</td>" in current and "observed 0.0625" in current
    link = re.search(r'href="\./(gx/ingest/index\.html)"', current).group(1)
    assert client.get("/" + link).text == "<html>GX docs for ingest</html>"
    assert client.get("/gx/../../dvc.yaml").status_code == 404  # serves reports/gx only
    # Mixture and token shares per phase (60% web tokens in phase 1), loss curves of both phases, bpb.
    assert "phase1 web: 50.0%" in current and "phase1 web: 60.0%" in current and "phase2 wikipedia: 90.0%" in current
    assert current.count("<polyline") == 4 and "bpb phase2" in current and "<h3>Learning rate</h3>" in current
    assert len(re.findall(r'class="ytick"', current)) >= 6 and len(re.findall(r'class="xtick"', current)) >= 4  # both charts
    # One colour per source on the whole page; a source with no share has no legend entry; labels read on light colours.
    def fill(section: str, source: str) -> set:
        return set(re.findall(rf'fill="(#[0-9a-f]{{6}})"><title>phase1 {source}:', section))
    assert fill(current, "web") == fill(old, "web") and len(fill(current, "web")) == 1
    assert fill(current, "books") == set() and fill(old, "books") and fill(old, "books") != fill(old, "web")
    assert ">books</text>" not in current.split("<h3>Token shares per phase</h3>")[1].split("</svg>")[0]
    # The older version comes from its tag's dvc.lock and the DVC cache.
    assert "oldversion01" in old and "data/oldversion01" in old
    assert re.search(r">ingest</text><rect[^>]+/><text[^>]*>900 records<", old)
    assert "phase1 books: 30.0%" in old and "<polyline" not in old
    # Its gates and drops come from what its tag carries (Data Docs are the current build's only).
    assert "<td>check_ingest</td><td>pass</td><td>7</td>" in old and "current build only" in old
    assert "<h3>Drops by reason</h3>" in old and re.search(r">ingest: empty_text</text>.*>filter: language</text>", old)
    assert "<td>language</td><td>43</td><td>web 41, books 2</td>" in old

    data = client.get("/api/versions").json()
    assert [v["version"] for v in data] == ["newversion02", "oldversion01"]
    assert data[0]["trained"] is True and data[1]["funnel"]["records"][-1] == {"stage": "select", "records": 300}

    # A refresh built a newer version that no training has used yet: the last training's curves and bpb belong to
    # the version it trained on, so the new version shows none of them, and says so.
    _write(project / "reports/data_version.json", {"version": "newversion03", "tag": None})
    html = client.get("/").text
    current = html.split("<section class='version'>")[1]
    assert "newversion03" in current and "<polyline" not in current and "bpb phase" not in current
    assert "Not trained on this version yet" in current and "newversion02" in current
    assert client.get("/api/versions").json()[0]["trained"] is False


def test_page_without_any_build_says_so(tmp_path):
    from fastapi.testclient import TestClient

    from pipelines.versions.page import create_app

    assert "No data version yet" in TestClient(create_app(tmp_path, require_auth=False)).get("/").text


def test_plugin_registers_app_and_menu_entry():
    import runpy

    mod = runpy.run_path(str(REPO / "plugins" / "data_versions_plugin.py"))
    plugin = mod["DataVersionsPlugin"]
    app = plugin.fastapi_apps[0]
    assert app["url_prefix"] == "/data-versions" and app["name"] == "Data versions"
    view = plugin.external_views[0]
    assert view["href"] == "/data-versions/" and view["name"] == "Data versions" and view["url_route"]


def test_logged_out_browser_is_sent_to_the_login_page_and_api_clients_get_401(tmp_path):
    """The plugin's app, mounted as Airflow mounts it: a browser (Accept: text/html) without a session is
    redirected to the auth manager's login page with next= the page; an API client keeps the 401 JSON."""
    from urllib.parse import parse_qs, urlsplit

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from pipelines.versions.login import login_url, with_login_redirect
    from pipelines.versions.page import create_app

    outer = FastAPI()
    outer.mount("/data-versions", with_login_redirect(create_app(tmp_path, require_auth=True)))
    client = TestClient(outer, follow_redirects=False)
    browser = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}

    r = client.get("/data-versions/?v=1", headers=browser)
    assert r.status_code in (302, 303, 307), (r.status_code, r.text)
    where = urlsplit(r.headers["location"])
    assert where.path == urlsplit(login_url("/x")).path == "/auth/login"  # the simple auth manager's login page
    assert parse_qs(where.query)["next"] == ["/data-versions/?v=1"]
    for path in ("/data-versions/", "/data-versions/api/versions"):  # API clients: 401, JSON
        r = client.get(path, headers={"Accept": "application/json"})
        assert r.status_code == 401 and r.json() == {"detail": "Not authenticated"}, (path, r.text)
    assert client.post("/data-versions/", headers=browser).status_code in (401, 405)  # only page views redirect
