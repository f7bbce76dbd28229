"""Trust no input, let no one in: no credentials in the repo or in stage logs/outputs, no shell
interpolation, checkpoints loaded without pickles, paths confined, local Airflow with auth on."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.project import REPO

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY-NOT-REAL-9z"
KEY_ID = "pipelines-test-key-id"
CODE_DIRS = ("pipelines", "dags", "plugins")

CREDENTIAL_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret key": re.compile(r"(?i)aws_secret_access_key\s*[:=]\s*[\"']?[A-Za-z0-9/+]{40}\b"),
    "private key": re.compile(r"-----BEGIN (RSA |EC |OPENSSH |DSA )?PRIVATE KEY-----"),
}


def _project_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split()
    return [REPO / n for n in names if (REPO / n).is_file()]


def _python_files() -> list[Path]:
    return sorted(p for d in CODE_DIRS if (REPO / d).exists() for p in (REPO / d).rglob("*.py"))


def test_no_credentials_in_the_repository():
    hits = []
    for path in _project_files():
        try:
            text = path.read_text(errors="ignore")
        except OSError:
            continue
        for what, pattern in CREDENTIAL_PATTERNS.items():
            for m in pattern.finditer(text):
                hits.append(f"{path.relative_to(REPO)}: {what}: {m.group(0)[:12]}...")
    assert not hits, "credentials committed:\n" + "\n".join(hits)
    # The scanner itself finds what it looks for (a test that cannot fail is no test).
    assert CREDENTIAL_PATTERNS["AWS access key id"].search("key = AKIA" + "ABCDEFGHIJKLMNOP")


def test_s3_credentials_never_reach_stage_logs_or_outputs(workspace, moto_s3):
    # The stage's credentials are secrets of our own (moto accepts any): they must not show up anywhere.
    env = {**os.environ, **moto_s3.env(), "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET,
           "PIPELINES_WORKSPACE": str(workspace.root), "PIPELINES_WORKERS": "1"}
    env.pop("PIPELINES_S3_ANONYMOUS", None)
    s3 = moto_s3.empty_bucket("crawl")
    s3.put_object(Bucket="crawl", Key="CC-MAIN-2024-22/a.warc.gz",
                  Body=workspace.path("samples/warc/cc-main-2024-22_whirlwind.warc.gz").read_bytes())
    params = workspace.params()
    params["ingest"].update(warc=["s3://crawl/CC-MAIN-2024-22/*.warc.gz"], wet=[], curated={})
    workspace.set_params(params)
    # -v: DEBUG logging, botocore's request logs included: the most a log could ever leak.
    done = subprocess.run([sys.executable, "-m", "pipelines", "-v", "ingest"], cwd=workspace.root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "botocore" in done.stderr  # the debug logs were really on
    assert SECRET not in done.stdout + done.stderr
    outputs = [p for p in workspace.path("data").rglob("*") if p.is_file()]
    assert outputs
    for p in outputs:
        data = p.read_bytes()
        assert SECRET.encode() not in data and KEY_ID.encode() not in data, p


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_subprocesses_take_argument_lists_never_a_shell():
    offenders = []
    for path in _python_files():
        for node, name in _calls(ast.parse(path.read_text())):
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            if name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"):
                offenders.append(f"{where}: {name}")
            for kw in node.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    offenders.append(f"{where}: {name}(shell=...)")
            if name.startswith("subprocess.") and node.args and isinstance(node.args[0], (ast.JoinedStr, ast.BinOp)):
                offenders.append(f"{where}: {name} with a formatted command string")
    assert not offenders, "\n".join(offenders)


def test_torch_load_is_always_weights_only():
    loads = []
    for path in _python_files():
        for node, name in _calls(ast.parse(path.read_text())):
            if name == "torch.load":
                ok = any(kw.arg == "weights_only" and isinstance(kw.value, ast.Constant) and kw.value.value is True
                         for kw in node.keywords)
                loads.append((f"{path.relative_to(REPO)}:{node.lineno}", ok))
            if name in ("pickle.load", "pickle.loads", "joblib.load", "dill.load"):
                loads.append((f"{path.relative_to(REPO)}:{node.lineno} {name}", False))
    assert loads, "expected the trainer's checkpoint loading to be found"
    assert all(ok for _, ok in loads), [w for w, ok in loads if not ok]


class _Exploit:
    """A pickle payload: unpickling it runs open(marker, "w") (harmless here, arbitrary code in general)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_malicious_pickle_in_a_checkpoint_is_refused(tmp_path, caplog):
    import torch

    from pipelines.train.checkpoint import STATE_FILE, load_state

    marker = tmp_path / "pwned"
    ckpt = tmp_path / "phase1"
    ckpt.mkdir()
    torch.save({"step": 3, "payload": _Exploit(str(marker))}, ckpt / STATE_FILE)
    assert load_state(ckpt) is None  # refused, and the run starts over loudly
    assert not marker.exists(), "the checkpoint's pickle ran code"
    assert "ignoring unreadable" in caplog.text
    torch.save({"step": 3, "history": [{"loss": 1.0}]}, ckpt / STATE_FILE)
    assert load_state(ckpt)["step"] == 3  # plain tensors/containers still load


def test_cli_accepts_only_known_commands_and_stage_names():
    for argv in (["ingest; rm -rf /"], ["check", "../../etc"], ["$(id)"]):
        done = subprocess.run([sys.executable, "-m", "pipelines", *argv], cwd=REPO, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 2 and "invalid choice" in done.stderr, argv


def test_run_form_refuses_paths_outside_the_workspace_and_foreign_buckets(tmp_path):
    from pipelines.config import load_params
    from pipelines.orchestration.run_params import FormError, validate_form

    params = load_params(REPO / "params.yaml")
    for bad in (["../outside/*.warc.gz"], ["/etc/passwd"], ["s3://someone-elses-bucket/x.warc.gz"],
                ["samples/../../x.warc.gz"], ["file:///etc/passwd"]):
        with pytest.raises(FormError):
            validate_form({"warc": bad}, params, tmp_path)
    validate_form({"warc": ["samples/warc/*.warc.gz"]}, params, tmp_path)


def test_config_resolve_refuses_paths_outside_the_workspace(tmp_path, monkeypatch):
    from pipelines.config import resolve

    monkeypatch.setenv("PIPELINES_WORKSPACE", str(tmp_path))
    for bad in ("/etc/passwd", "../outside", "data/../../outside"):
        with pytest.raises(ValueError):
            resolve(bad)


def test_local_airflow_runs_with_authentication_on(tmp_path):
    services = pytest.importorskip("pipelines.local_airflow.services")
    (tmp_path / "home").mkdir()
    env = services.service_env(tmp_path, tmp_path / "home", "127.0.0.1", 8080)
    assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("SimpleAuthManager")
    assert env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "False") == "False"  # no anonymous admin
    assert len(env["AIRFLOW__API_AUTH__JWT_SECRET"]) >= 32
    home = tmp_path / "home"
    secrets = [p for p in home.iterdir() if p.is_file()]
    assert secrets and all(p.stat().st_mode & 0o077 == 0 for p in secrets), "secret files readable by others"
