"""The product as users run it: `make airflow` on a fresh copy of the project (real
api-server, scheduler, dag-processor, triggerer on 127.0.0.1, SQLite, auth on), the REST
API with a JWT (bad conf refused, corpus_refresh triggered to success, the Asset event
carrying the data version), the plugin page through the api-server, a headless-Chromium
walk through login -> trigger form -> plugin page, and `make airflow-stop` leaving no
process behind. One server set serves the whole module.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.browser import chrome, close, require_chrome
from tests.fixtures.project import REPO, copy_project

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = int(os.environ.get("PIPELINES_TEST_RUN_TIMEOUT", "1500"))
ARTIFACTS = REPO / "reports" / "test-artifacts"


class Api:
    def __init__(self, url: str, password: str):
        self.url, self.password = url, password
        self.token = self.login("admin", password)

    def login(self, user: str, password: str) -> str:
        status, body = self.call("POST", "/auth/token", {"username": user, "password": password}, auth=False)
        assert status in (200, 201), body
        return body["access_token"]

    def call(self, method: str, path: str, body=None, auth: bool = True, raw: bool = False):
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url + path, method=method, headers=headers,
                                     data=json.dumps(body).encode() if body is not None else None)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                data = r.read().decode()
                return r.status, (data if raw else json.loads(data or "null"))
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()


def _make(root: Path, target: str, env: dict) -> subprocess.CompletedProcess:
    # -o: the venv is the repo's own (linked), never re-installed from the copy.
    return subprocess.run(["make", "-s", "-o", ".venv/.installed", target], cwd=root, env=env,
                          capture_output=True, text=True, timeout=400)


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    from pipelines.local_airflow.services import _tree, free_port

    root = copy_project(tmp_path_factory.mktemp("airflow-live") / "project")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["orchestration"]["schedule"] = None  # only our triggers run (unpausing would start last week's interval)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "test params"], cwd=root, check=True)
    (root / ".venv").symlink_to(REPO / ".venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PIPELINES_"))}
    env["AIRFLOW_PORT"] = str(free_port())
    started = _make(root, "airflow", env)
    home = root / ".airflow"
    state = json.loads((home / "services.json").read_text()) if (home / "services.json").exists() else None
    if started.returncode != 0 or state is None:
        if state:
            _make(root, "airflow-stop", env)
        pytest.fail(f"make airflow failed:\n{started.stdout}\n{started.stderr}")
    password = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
    info = {"root": root, "home": home, "url": state["url"], "password": password, "stdout": started.stdout, "env": env}
    try:
        info["api"] = Api(state["url"], password)
        yield info
    finally:
        before = _tree(state["pids"].values())
        stopped = _make(root, "airflow-stop", env)
        from pipelines.local_airflow.services import _alive

        left = [p for p in before if _alive(p)]
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert not left, f"processes left after make airflow-stop: {left}"
        assert not (home / "services.json").exists()


def test_make_airflow_prints_the_generated_password_once_and_needs_it(airflow):
    assert airflow["stdout"].count(airflow["password"]) == 1
    assert (airflow["home"] / "simple_auth_manager_passwords.json.generated").stat().st_mode & 0o077 == 0
    api = airflow["api"]
    assert api.call("GET", "/api/v2/dags", auth=False)[0] == 401
    status, body = api.call("POST", "/auth/token", {"username": "admin", "password": "wrong"}, auth=False)
    assert status == 401, body
    _wait_for_dags(api)
    status, dags = api.call("GET", "/api/v2/dags")
    assert status == 200 and {"corpus_refresh", "pretrain"} <= {d["dag_id"] for d in dags["dags"]}
    status, pools = api.call("GET", "/api/v2/pools/gpu")
    assert status == 200 and pools["slots"] >= 1


def _wait_for_dags(api: Api, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(api.call("GET", f"/api/v2/dags/{d}")[0] == 200 for d in ("corpus_refresh", "pretrain")):
            return
        time.sleep(2)
    raise TimeoutError("corpus_refresh / pretrain never showed up (dag-processor)")


def test_rest_trigger_with_bad_conf_is_refused_with_a_message(airflow):
    api = airflow["api"]
    _wait_for_dags(api)
    for conf, field in [({"anneal_fraction": 0.9}, "anneal_fraction"), ({"crawl_id": "CC-MAIN-24"}, "crawl_id"),
                        ({"warc": ["/etc/*.warc.gz"]}, "warc"), ({"warc": ["../x/*.warc.gz"]}, "warc"),
                        ({"sources": ["nope"]}, "sources")]:
        status, body = api.call("POST", "/api/v2/dags/corpus_refresh/dagRuns", {"logical_date": None, "conf": conf})
        assert 400 <= status < 500, (conf, status, body)
        assert f"Invalid input for param {field}" in body, body
    status, runs = api.call("GET", "/api/v2/dags/corpus_refresh/dagRuns")
    assert runs["total_entries"] == 0  # nothing was created


def test_rest_trigger_runs_corpus_refresh_and_emits_the_asset_event(airflow):
    api, root = airflow["api"], airflow["root"]
    _wait_for_dags(api)
    assert api.call("PATCH", "/api/v2/dags/corpus_refresh", {"is_paused": False})[0] == 200
    status, run = api.call("POST", "/api/v2/dags/corpus_refresh/dagRuns",
                           {"logical_date": None, "conf": {"max_files": 2, "anneal_fraction": 0.25}})
    assert status == 200, run
    run_id = run["dag_run_id"]
    deadline, state = time.monotonic() + RUN_TIMEOUT_S, None
    while time.monotonic() < deadline:
        state = api.call("GET", f"/api/v2/dags/corpus_refresh/dagRuns/{urllib.parse.quote(run_id)}")[1]["state"]
        if state in ("success", "failed"):
            break
        time.sleep(5)
    _, tis = api.call("GET", f"/api/v2/dags/corpus_refresh/dagRuns/{urllib.parse.quote(run_id)}/taskInstances")
    assert state == "success", {t["task_id"]: t["state"] for t in tis["task_instances"]}
    api.call("PATCH", "/api/v2/dags/corpus_refresh", {"is_paused": True})
    version = json.loads((root / "reports/data_version.json").read_text())
    # The run form reached params.yaml (and so the versioned params of this data version).
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert params["ingest"]["max_files"] == 2 and params["train"]["anneal_fraction"] == 0.25
    status, events = api.call("GET", "/api/v2/assets/events?order_by=-timestamp")
    assert status == 200, events
    mine = [e for e in events["asset_events"] if e["source_dag_id"] == "corpus_refresh" and e["source_run_id"] == run_id]
    assert mine and mine[0]["extra"]["version"] == version["version"], events
    assert mine[0]["extra"]["tag"] == f"data/{version['version']}"
    # The data version is also the record_version task's XCom.
    status, xcom = api.call("GET", f"/api/v2/dags/corpus_refresh/dagRuns/{urllib.parse.quote(run_id)}"
                                   "/taskInstances/record_version/xcomEntries/return_value")
    assert status == 200 and version["version"] in json.dumps(xcom["value"]), xcom


def test_plugin_page_through_the_api_server(airflow):
    api, root = airflow["api"], airflow["root"]
    assert api.call("GET", "/data-versions/", auth=False, raw=True)[0] == 401  # an API client
    # A logged-out browser is sent to the login page, and back to the page afterwards.
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    req = urllib.request.Request(api.url + "/data-versions/", headers={"Accept": "text/html"})
    with pytest.raises(urllib.error.HTTPError) as moved:
        urllib.request.build_opener(NoRedirect).open(req, timeout=60)
    assert moved.value.code == 307, moved.value.code
    assert moved.value.headers["location"] == "/auth/login?next=%2Fdata-versions%2F", moved.value.headers["location"]
    status, login = api.call("GET", "/auth/login", auth=False, raw=True)
    assert status == 200 and "<html" in login.lower()
    status, html = api.call("GET", "/data-versions/", raw=True)
    assert status == 200 and "<h1>Data versions</h1>" in html
    version = json.loads((root / "reports/data_version.json").read_text())["version"]
    assert version in html and "records per stage" in html and "<td>check_pack</td><td>pass</td>" in html
    docs = json.loads((root / "reports/checks/ingest.json").read_text())["data_docs"]
    status, page = api.call("GET", "/data-versions/gx/" + docs.removeprefix("reports/gx/"), raw=True)
    assert status == 200 and "<html" in page.lower()
    status, plugins = api.call("GET", "/api/v2/plugins")
    mine = [p for p in plugins["plugins"] if p["name"] == "data_versions"]
    assert mine and mine[0]["external_views"][0]["href"] == "/data-versions/"


def test_browser_login_trigger_form_and_plugin_page(airflow):
    require_chrome()
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    api, url = airflow["api"], airflow["url"]
    _wait_for_dags(api)
    api.call("PATCH", "/api/v2/dags/corpus_refresh", {"is_paused": True})  # the run we trigger stays queued
    _, before = api.call("GET", "/api/v2/dags/corpus_refresh/dagRuns")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver = chrome()
    # The React UI re-renders while it loads: an element found a moment ago may be gone (stale);
    # the wait then simply looks again (as it does while a button is not there yet).
    wait = WebDriverWait(driver, 90, ignored_exceptions=(StaleElementReferenceException, IndexError))

    def button(text: str):
        return [b for b in driver.find_elements(By.CSS_SELECTOR, "button") if b.text.strip() == text]

    def click(text: str, index: int) -> bool:
        button(text)[index].click()
        return True

    try:
        driver.get(f"{url}/dags/corpus_refresh")
        wait.until(EC.presence_of_element_located((By.NAME, "username")))
        assert "/auth/login" in driver.current_url
        driver.save_screenshot(str(ARTIFACTS / "airflow-1-login.png"))
        driver.find_element(By.NAME, "username").send_keys("admin")
        driver.find_element(By.NAME, "password").send_keys(airflow["password"])
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(lambda d: "/auth/login" not in d.current_url and button("Trigger"))
        wait.until(lambda d: click("Trigger", 0))
        field = wait.until(EC.presence_of_element_located((By.NAME, "element_max_files")))
        assert driver.find_elements(By.NAME, "element_crawl_id") and driver.find_elements(By.NAME, "element_anneal_fraction")
        driver.execute_script("arguments[0].scrollIntoView()", field)
        field.send_keys("3")
        driver.save_screenshot(str(ARTIFACTS / "airflow-2-trigger-form.png"))
        wait.until(lambda d: click("Trigger", -1))  # the form's own submit button
        deadline, runs = time.monotonic() + 60, before
        while time.monotonic() < deadline and runs["total_entries"] == before["total_entries"]:
            time.sleep(1)
            runs = api.call("GET", "/api/v2/dags/corpus_refresh/dagRuns?order_by=-run_after")[1]
        driver.save_screenshot(str(ARTIFACTS / "airflow-3-triggered.png"))
        assert runs["total_entries"] == before["total_entries"] + 1, "the trigger form created no run"
        newest = runs["dag_runs"][0]
        assert newest["triggered_by"] == "ui" and newest["conf"].get("max_files") == 3, newest
        api.call("PATCH", f"/api/v2/dags/corpus_refresh/dagRuns/{urllib.parse.quote(newest['dag_run_id'])}",
                 {"state": "failed"})  # do not leave a queued run behind
        # A bad value is refused, and the message names the field; no run is created.
        driver.get(f"{url}/dags/corpus_refresh")
        wait.until(lambda d: click("Trigger", 0))
        fraction = wait.until(EC.presence_of_element_located((By.NAME, "element_anneal_fraction")))
        driver.execute_script("arguments[0].scrollIntoView()", fraction)
        fraction.send_keys("0.9")
        wait.until(lambda d: click("Trigger", -1))
        refused = re.compile(r"(anneal.fraction|Anneal fraction)[^\n]*(maximum|0\.9|invalid)|Invalid input for param anneal_fraction", re.I)
        try:
            wait.until(lambda d: refused.search(d.find_element(By.TAG_NAME, "body").text))
        finally:
            (ARTIFACTS / "airflow-3b-bad-value.txt").write_text(driver.find_element(By.TAG_NAME, "body").text)
        driver.save_screenshot(str(ARTIFACTS / "airflow-3b-bad-value.png"))
        time.sleep(2)
        assert api.call("GET", "/api/v2/dags/corpus_refresh/dagRuns")[1]["total_entries"] == runs["total_entries"]
        driver.get(f"{url}/plugin/data-versions")
        frame = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "iframe")))
        driver.switch_to.frame(frame)
        wait.until(EC.presence_of_element_located((By.TAG_NAME, "h1")))
        assert driver.find_element(By.TAG_NAME, "h1").text == "Data versions"
        assert driver.find_elements(By.CSS_SELECTOR, "svg.chart")
        driver.switch_to.default_content()
        driver.save_screenshot(str(ARTIFACTS / "airflow-4-data-versions.png"))
    finally:
        close(driver)
