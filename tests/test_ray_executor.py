"""RayExecutor on a real two-node Ray cluster (tests/fixtures/ray_cluster.py): same results in the
same order as LocalExecutor, tasks on both nodes, a SIGKILLed worker survived by retry, token auth
enforced, every listening socket of the cluster on 127.0.0.1, no token in the cluster's logs."""
from __future__ import annotations

import ipaddress
import re
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipelines.core.executor import LocalExecutor, get_executor
from pipelines.core.ray_executor import THREAD_POOL_VARS
from tests.fixtures import ray_tasks
from tests.fixtures.ray_cluster import REPO

pytestmark = pytest.mark.slow

DRIVER_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")


@pytest.fixture(scope="session")
def ray_executor(ray_cluster):
    """This pytest process as the driver, configured the product's way: params give the address and
    resources, the environment gives only the token (RAY_AUTH_MODE is left for the executor to set)."""
    saved = {k: os.environ.get(k) for k in DRIVER_ENV}
    for k in DRIVER_ENV:
        os.environ.pop(k, None)
    os.environ["RAY_AUTH_TOKEN"] = ray_cluster.token
    # The cluster listens on 127.0.0.1 only; Ray would rewrite 127.0.0.1 to the routable IP (see the
    # fixture's module doc). The variable is read when ray is imported, so also set the constant if it was.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    saved_constant = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False
    executor = get_executor({"kind": "ray", "address": ray_cluster.address, "task_cpus": 1, "task_memory_mb": 64,
                             "max_retries": 3})
    try:
        yield executor
    finally:
        executor.shutdown()
        if constants is not None:
            constants.ENABLE_RAY_CLUSTER = saved_constant
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _tasks(n: int, **extra) -> list[dict]:
    return [{"index": i, "seed": 1000 + i, "n": 200 + 17 * i, "source": f"s{i % 3}", **extra} for i in range(n)]


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return a == b


def test_map_matches_local_executor_in_order_and_uses_both_nodes(ray_cluster, ray_executor):
    tasks = _tasks(8, sleep=0.5)  # long enough that one 1-CPU node cannot take them all before the other starts
    local = LocalExecutor(workers=2).map(ray_tasks.where_and_what, tasks)
    on_ray = ray_executor.map(ray_tasks.where_and_what, tasks)

    assert [r["result"]["index"] for r in on_ray] == list(range(len(tasks)))  # task order, not completion order
    assert all(_same(a["result"], b["result"]) for a, b in zip(local, on_ray))
    assert all(isinstance(r["result"]["hist"], np.ndarray) for r in on_ray)
    ray = sys.modules["ray"]
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(alive) == 2 and {r["node"] for r in on_ray} == alive, "tasks ran on both nodes"
    cluster_pids = set(ray_cluster.pids())
    assert {r["pid"] for r in on_ray} <= cluster_pids, "tasks ran in the cluster's worker processes"
    assert os.getpid() not in {r["pid"] for r in on_ray}
    assert ray_executor.map(ray_tasks.where_and_what, []) == []


def test_a_task_s_thread_pools_are_sized_to_the_cpus_it_reserved(ray_cluster, ray_executor):
    """task_cpus 1: one thread per pool in the task, though the machine has more cores than that."""
    for pid in ray_cluster.pids():  # the raylets' own environment: what a worker inherits without runtime_env
        if Path(f"/proc/{pid}/comm").read_text().strip() == "raylet":
            names = {e.split(b"=", 1)[0].decode() for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if e}
            assert not set(THREAD_POOL_VARS) & names, "the nodes set the pools: this test could pass without the executor"
    (budget,) = ray_executor.map(ray_tasks.thread_budget, [{}])
    assert budget == {"env": {name: "1" for name in THREAD_POOL_VARS}, "arrow": 1}


def _kill_first_attempt(ray_cluster, executor, tmp_path) -> tuple[list, list[int], int]:
    """Runs die_once on the cluster; kills the first attempt's worker (SIGKILL) as soon as it has started."""
    task = {"index": 7, "seed": 7, "n": 300, "source": "web", "dir": str(tmp_path), "sleep": 120}
    out: dict = {}

    def run():
        try:
            out["result"] = executor.map(ray_tasks.die_once, [task])
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("attempt-*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    first = list(tmp_path.glob("attempt-*"))
    assert len(first) == 1, "the task did not start"
    victim = int(first[0].name.split("-")[1])
    assert victim in ray_cluster.pids(), "the pid to kill must be one of the cluster's processes"
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=180)
    assert not thread.is_alive(), "the map did not return after the worker was killed"
    if "error" in out:
        raise out["error"]
    attempts = sorted(int(p.name.split("-")[1]) for p in tmp_path.glob("attempt-*"))
    return out["result"], attempts, victim


def test_sigkilled_worker_is_retried_with_the_identical_result(ray_cluster, ray_executor, tmp_path):
    result, attempts, victim = _kill_first_attempt(ray_cluster, ray_executor, tmp_path)
    expected = ray_tasks.shard_summary({"index": 7, "seed": 7, "n": 300, "source": "web"})
    assert len(attempts) == 2 and victim in attempts, "one killed attempt, one retry"
    assert len(result) == 1 and _same(result[0], expected)


def test_without_retries_the_same_kill_fails_the_map(ray_cluster, ray_executor, tmp_path):
    """The control for the test above: the kill is real, and retries are what survive it."""
    ray = sys.modules["ray"]
    no_retry = get_executor({"kind": "ray", "address": ray_cluster.address, "max_retries": 0})
    with pytest.raises(ray.exceptions.WorkerCrashedError):
        _kill_first_attempt(ray_cluster, no_retry, tmp_path)


def test_task_exceptions_are_not_retried(ray_executor, tmp_path):
    with pytest.raises(ValueError, match="bad shard 3"):
        ray_executor.map(ray_tasks.fail_once_recorded, [{"index": 3, "dir": str(tmp_path)}])
    assert len(list(tmp_path.glob("attempt-*"))) == 1  # retry_exceptions=False: ran once


def test_a_failed_map_returns_only_when_none_of_its_tasks_is_running(ray_executor, tmp_path):
    """The failing task's error, raised after the other tasks finished (no ray.cancel: its race with a task's
    reply crashed this very driver with a Ray check failure)."""
    tasks = [{"index": 0, "fail": True}, *({"index": i, "sleep": 2.0, "dir": str(tmp_path)} for i in (1, 2))]
    with pytest.raises(ValueError, match="bad shard 0"):
        ray_executor.map(ray_tasks.fail_or_finish_later, tasks)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["finished-1", "finished-2"]


def test_map_done_fault_point_fires_in_the_driver_after_the_map(ray_cluster, tmp_path):
    """PIPELINES_FAULT_KILL=map_done.<fn>:1 kills the driver after the Ray map returned, as with LocalExecutor."""
    script = textwrap.dedent(f"""
        import sys
        from pipelines.core.executor import get_executor
        from tests.fixtures import ray_tasks
        ex = get_executor({{"kind": "ray", "address": {ray_cluster.address!r}}})
        out = ex.map(ray_tasks.shard_summary, [{{"index": 0, "seed": 0, "n": 10, "source": "web"}}])
        print("MAPPED", out[0]["index"], flush=True)
        ex.map(ray_tasks.where_and_what, [{{"index": 1, "seed": 1, "n": 10, "source": "web"}}])
        print("SURVIVED", flush=True)
    """)
    env = {**ray_cluster.driver_env(), "PIPELINES_FAULT_KILL": "map_done.where_and_what:1"}
    env.pop("RAY_AUTH_MODE")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert "MAPPED 0" in proc.stdout and "SURVIVED" not in proc.stdout


RAW_CLIENT = """
import ray, sys
try:
    ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
    print("CONNECTED", len(ray.nodes()))
except Exception as exc:
    print("REFUSED", type(exc).__name__, repr(exc.__cause__))
"""


@pytest.mark.parametrize("token", [None, "wrong"])
def test_clients_without_the_token_are_refused(ray_cluster, token):
    """Plain `ray.init` (not our executor's client-side checks): no token mode / a wrong token is
    refused by the cluster itself, and the cluster's token is accepted (the control)."""
    def connect(tok):
        env = ray_cluster.driver_env(token=tok)
        env["RAY_NUM_REDIS_GET_RETRIES"] = "3"  # Ray retries a refused connection 20 times, 1 s apart
        return subprocess.run([sys.executable, "-c", RAW_CLIENT, ray_cluster.address], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=180)

    refused = connect(None if token is None else "0" * 64)
    assert "CONNECTED" not in refused.stdout, refused.stdout
    assert "REFUSED" in refused.stdout
    assert "InvalidAuthToken" in refused.stdout + refused.stderr or "Unauthenticated" in refused.stdout + refused.stderr
    if token is None:  # the control, once
        ok = connect("cluster")
        assert "CONNECTED 2" in ok.stdout, ok.stdout + ok.stderr[-2000:]


def test_executor_reports_a_wrong_token_as_permission_error(ray_cluster):
    script = textwrap.dedent(f"""
        from pipelines.core.executor import get_executor
        from tests.fixtures import ray_tasks
        try:
            get_executor({{"kind": "ray", "address": {ray_cluster.address!r}}}).map(ray_tasks.shard_summary, [{{"index": 0, "seed": 0, "n": 1, "source": "w"}}])
        except PermissionError as exc:
            print("PERMISSION", exc)
    """)
    env = {**ray_cluster.driver_env(token="f" * 64), "RAY_NUM_REDIS_GET_RETRIES": "3"}
    env.pop("RAY_AUTH_MODE")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert "PERMISSION the Ray cluster at" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert "f" * 64 not in proc.stdout + proc.stderr  # the token is never printed


def _listening_sockets(pids: set[int]) -> list[tuple[int, str, int]]:
    """(pid, ip, port) of every TCP LISTEN socket owned by these PIDs (from `ss -tlnpH`)."""
    out = subprocess.run(["ss", "-tlnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        local, users = fields[3], " ".join(fields[5:])
        owners = {int(p) for p in re.findall(r"pid=(\d+)", users)}
        for pid in owners & pids:
            host, _, port = local.rpartition(":")
            found.append((pid, host.strip("[]"), int(port)))
    return found


def _is_loopback_127_0_0_1(host: str) -> bool:
    addr = ipaddress.ip_address(host.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr == ipaddress.IPv4Address("127.0.0.1")


@pytest.mark.skipif(not Path("/usr/bin/ss").exists() and not Path("/bin/ss").exists(), reason="needs ss (iproute2)")
def test_every_listening_socket_of_the_cluster_is_on_127_0_0_1(ray_cluster, ray_executor):
    ray_executor.map(ray_tasks.shard_summary, _tasks(2))  # workers up on both nodes
    pids = set(ray_cluster.pids())
    sockets = _listening_sockets(pids)
    owners = {pid for pid, _, _ in sockets}
    assert len(sockets) >= 8 and len(owners) >= 4, f"expected the GCS, raylets, agents... listening: {sockets}"
    assert ray_cluster.gcs_port in {port for _, _, port in sockets}
    wide = [(pid, host, port) for pid, host, port in sockets if not _is_loopback_127_0_0_1(host)]
    assert not wide, f"listening beyond 127.0.0.1: {wide}"

    # The check itself: a socket of ours on another (still loopback) address is reported.
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.2", 0))
        probe.listen()
        mine = _listening_sockets({os.getpid()})
        assert any(host == "127.0.0.2" and not _is_loopback_127_0_0_1(host) for _, host, _ in mine), mine


def test_the_token_is_not_in_the_cluster_logs_or_command_lines(ray_cluster, ray_executor):
    ray_executor.map(ray_tasks.shard_summary, _tasks(1))
    import psutil

    on_command_line = []  # PIDs only: an assertion diff would print the token itself
    for pid in ray_cluster.pids():
        try:
            if ray_cluster.token in " ".join(psutil.Process(pid).cmdline()):
                on_command_line.append(pid)
        except psutil.NoSuchProcess:
            pass
    assert not on_command_line, f"the token is on the command line of {on_command_line}"
    leaked = []
    for path in ray_cluster.root.rglob("*"):
        try:
            if path.is_file() and ray_cluster.token.encode() in path.read_bytes():
                leaked.append(path)
        except OSError:  # a worker log rotated away meanwhile
            pass
    assert len(list(ray_cluster.root.rglob("*.log"))) > 10, "the cluster's logs are there to search"
    assert not leaked, f"token written to {leaked}"
