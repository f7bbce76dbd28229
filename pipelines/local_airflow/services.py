"""`make airflow` / `make airflow-stop`: the local Airflow services of this workspace.

api-server, scheduler, dag-processor and triggerer each run in their own process group
(SQLite metadata DB and logs under AIRFLOW_HOME); their PIDs go to AIRFLOW_HOME/services.json
so `stop` can end every process they started, children included, and check none is left.
Authentication stays ON (Airflow's SimpleAuthManager): the admin password is generated
once, stored in AIRFLOW_HOME (mode 600) and printed once.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipelines.local_airflow.env import airflow_env, ensure_db

SERVICES = ("api-server", "scheduler", "dag-processor", "triggerer")
STATE_FILE = "services.json"
SECRETS_FILE = "secrets.json"
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
ADMIN = "admin"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _private_json(path: Path, default_factory) -> tuple[dict, bool]:
    """Read a JSON file, or create it (mode 600) from default_factory(); returns (content, created)."""
    if path.exists():
        return json.loads(path.read_text()), False
    data = default_factory()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    return data, True


@dataclass
class Services:
    root: Path
    home: Path
    host: str
    port: int
    password: str
    pids: dict[str, int]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def service_env(root: Path, home: Path, host: str, port: int) -> dict[str, str]:
    """Settings every service shares (one JWT secret, the execution API's address, auth on, pools on)."""
    keys, _ = _private_json(home / SECRETS_FILE, lambda: {"jwt_secret": secrets.token_urlsafe(32),
                                                          "secret_key": secrets.token_urlsafe(32)})
    env = airflow_env(root, home)
    env.update({
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / PASSWORDS_FILE),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{host}:{port}/execution/",
        "AIRFLOW__API__BASE_URL": f"http://{host}:{port}",
        "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt_secret"],
        "AIRFLOW__API__SECRET_KEY": keys["secret_key"],
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "PIPELINES_USE_POOLS": "1",
        # The workspace's own code (not another checkout's editable install) runs the DAGs.
        "PYTHONPATH": os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])]),
    })
    return env


def _wait_healthy(url: str, procs: dict[str, subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, p in procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"airflow {name} exited with {p.returncode} during start-up")
        try:
            with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"api-server at {url} not healthy after {timeout:.0f}s")


def start(root: Path, home: Path | None = None, host: str = "127.0.0.1", port: int | None = None,
          timeout: float = 120, quiet: bool = False) -> Services:
    root = Path(root).resolve()
    home = Path(home or root / ".airflow").resolve()
    home.mkdir(parents=True, exist_ok=True)
    state = home / STATE_FILE
    if state.exists() and any(_alive(p) for p in json.loads(state.read_text())["pids"].values()):
        raise RuntimeError(f"Airflow services of {home} already run ({state}); `make airflow-stop` first")
    port = port or free_port(host)
    env = service_env(root, home, host, port)
    ensure_db(root, home)
    passwords, created = _private_json(home / PASSWORDS_FILE, lambda: {ADMIN: secrets.token_urlsafe(12)})
    exe = str(Path(sys.executable).parent / "airflow")
    _cli = lambda *a: subprocess.run([exe, *a], cwd=root, env=env, check=True, capture_output=True, text=True)  # noqa: E731
    from pipelines.orchestration.dag_factory import GPU_POOL_SLOTS, pools

    for pool in pools(root / "dvc.yaml"):
        _cli("pools", "set", pool, str(GPU_POOL_SLOTS), f"{pool} tasks (dvc.yaml meta.pool)")
    (home / "logs").mkdir(exist_ok=True)
    procs: dict[str, subprocess.Popen] = {}
    for name in SERVICES:
        args = [exe, name] + (["--host", host, "--port", str(port)] if name == "api-server" else [])
        log = open(home / "logs" / f"{name}.log", "ab")
        procs[name] = subprocess.Popen(args, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
    pids = {n: p.pid for n, p in procs.items()}
    state.write_text(json.dumps({"pids": pids, "url": f"http://{host}:{port}"}))
    try:
        _wait_healthy(f"http://{host}:{port}", procs, timeout)
    except Exception:
        stop(home)
        raise
    svc = Services(root, home, host, port, passwords[ADMIN], pids)
    if not quiet:
        print(f"Airflow is up at {svc.url} (AIRFLOW_HOME={home}; logs in {home / 'logs'})")
        if created:
            print(f"  user: {ADMIN}   password (shown once; kept in {home / PASSWORDS_FILE}): {passwords[ADMIN]}")
        else:
            print(f"  user: {ADMIN}   password: unchanged (see {home / PASSWORDS_FILE})")
        print("  stop with: make airflow-stop")
    return svc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _tree(pids) -> set[int]:
    """The recorded PIDs, everything descending from them and everything in their process groups."""
    import psutil

    found: set[int] = set()
    groups = set()
    for pid in pids:
        try:
            p = psutil.Process(pid)
            found.add(pid)
            groups.add(os.getpgid(pid))
            found.update(c.pid for c in p.children(recursive=True))
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) in groups:
                found.add(p.pid)
        except (ProcessLookupError, PermissionError):
            continue
    return found


def stop(home: Path, timeout: float = 30) -> list[int]:
    """SIGTERM every process group started (and every descendant), SIGKILL what is left; returns survivors (none)."""
    state = Path(home) / STATE_FILE
    if not state.exists():
        return []
    pids = list(json.loads(state.read_text())["pids"].values())
    targets = _tree(pids)
    for pgid in set(pids):
        try:
            os.killpg(pgid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    for pid in targets:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in targets):
        _reap(pids)
        time.sleep(0.3)
    for pid in [p for p in targets if _alive(p)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(0.3)
    _reap(pids)
    left = sorted(p for p in targets if _alive(p))
    if not left:
        state.unlink(missing_ok=True)
    return left


def _reap(pids) -> None:
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.local_airflow.services")
    ap.add_argument("action", choices=["start", "stop"])
    ap.add_argument("--home", type=Path, default=None, help="AIRFLOW_HOME (default: <workspace>/.airflow)")
    ap.add_argument("--host", default=os.environ.get("AIRFLOW_HOST", "127.0.0.1"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("AIRFLOW_PORT", "8080")))
    args = ap.parse_args(argv)
    from pipelines.config import workspace

    root = workspace()
    home = args.home or root / ".airflow"
    if args.action == "start":
        start(root, home, args.host, args.port)
        return 0
    left = stop(home)
    if left:
        print(f"processes still alive after stop: {left}", file=sys.stderr)
        return 1
    print(f"Airflow services of {home} stopped; no process left")
    return 0


if __name__ == "__main__":
    sys.exit(main())
