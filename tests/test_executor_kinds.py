"""executor.kind dispatch and the Ray executor's configuration checks (no cluster needed; the
cluster tests are tests/test_ray_executor.py)."""
from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
import yaml

from pipelines.core.executor import LocalExecutor, get_executor
from tests.fixtures.project import REPO


@pytest.fixture
def no_ray_env(monkeypatch, tmp_path):
    for k in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    return monkeypatch


def test_params_executor_section_defaults_to_local_with_ray_knobs():
    ex = yaml.safe_load((REPO / "params.yaml").read_text())["executor"]
    assert ex["kind"] == "local"
    assert ex["address"] is None and ex["task_cpus"] == 1 and ex["task_memory_mb"] is None and ex["max_retries"] == 3
    assert not any("token" in k for k in ex), "the auth token never lives in params"
    assert isinstance(get_executor(ex), LocalExecutor)


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown executor.kind 'spark'.*local, ray"):
        get_executor({"kind": "spark"})


def test_local_kind_never_imports_ray():
    code = ("import sys\n"
            "from pipelines.core.executor import get_executor\n"
            "assert get_executor({'kind': 'local', 'workers': 1}).map(abs, [-1, 2]) == [1, 2]\n"
            "print('ray' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("address, match", [
    (None, "no cluster address"),
    ("local", "not allowed"),
    ("auto", "not allowed"),
    ("ray://head:10001", "Ray Client"),
    ("head", "host:port"),
])
def test_ray_kind_needs_a_gcs_address(no_ray_env, address, match):
    pytest.importorskip("ray")
    with pytest.raises(ValueError, match=match):
        get_executor({"kind": "ray", "address": address})


def test_ray_address_comes_from_the_environment_when_params_have_none(no_ray_env):
    pytest.importorskip("ray")
    no_ray_env.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    assert get_executor({"kind": "ray", "address": None}).address == "10.1.2.3:6379"
    assert get_executor({"kind": "ray", "address": "head:6380"}).address == "head:6380"  # params win


def test_ray_kind_resources_become_task_options(no_ray_env):
    pytest.importorskip("ray")
    ex = get_executor({"kind": "ray", "address": "head:6379", "task_cpus": 2, "task_memory_mb": 512, "max_retries": 5})
    assert ex._options() == {"num_cpus": 2.0, "memory": 512 * 1024 * 1024, "max_retries": 5, "retry_exceptions": False}
    assert "memory" not in get_executor({"kind": "ray", "address": "head:6379"})._options()


def test_ray_kind_refuses_to_run_without_token_auth(no_ray_env):
    pytest.importorskip("ray")
    ex = get_executor({"kind": "ray", "address": "127.0.0.1:1"})
    with pytest.raises(ValueError, match="no Ray auth token"):
        ex.map(abs, [1])
    no_ray_env.setenv("RAY_AUTH_TOKEN", "x" * 32)
    no_ray_env.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.raises(ValueError, match="only talks to token-authenticated clusters"):
        ex.map(abs, [1])


def test_ray_kind_fails_fast_when_nothing_listens_and_starts_no_local_ray(no_ray_env):
    pytest.importorskip("ray")
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    no_ray_env.setenv("RAY_AUTH_TOKEN", "x" * 32)
    no_ray_env.setenv("RAY_AUTH_MODE", "token")
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match=f"no Ray cluster reachable at 127.0.0.1:{port}"):
        get_executor({"kind": "ray", "address": f"127.0.0.1:{port}"}).map(abs, [1])
    assert time.monotonic() - t0 < 15
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
