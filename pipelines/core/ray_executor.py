"""``executor.kind: ray``: the data stages' tasks as Ray tasks on an existing Ray cluster.

Same contract as :class:`pipelines.core.executor.LocalExecutor`: ``map(fn, tasks)`` runs the
module-level ``fn`` on every picklable task and returns the results in task order; the
``map_done.<fn>`` fault point fires in the driver after the map. This module is imported only
for ``kind: ray``, so ``kind: local`` never imports ray.

Connection
  ``executor.address`` (params) or ``RAY_ADDRESS`` (environment): the cluster's GCS address,
  ``host:port`` (``ray start --head --port`` on the head). Required: the executor never starts a
  local Ray (``"local"`` and an unset address are errors), and fails fast when nothing listens
  there instead of letting ``ray.init`` wait. The driver (the Airflow task or ``dvc repro``
  process) must be able to reach the cluster network (compose: the same network; Kubernetes:
  the head Service). Ray Client (``ray://``) is not supported.

Authentication
  Token auth only (Ray >= 2.52). The token is read by Ray itself from the environment:
  ``RAY_AUTH_TOKEN`` (the token) or ``RAY_AUTH_TOKEN_PATH`` (a file holding it, e.g. a mounted
  Kubernetes Secret), falling back to ``~/.ray/auth_token``, with ``RAY_AUTH_MODE=token``. With an
  explicit address Ray does not switch token mode on by itself, so this executor sets
  ``RAY_AUTH_MODE=token`` when a token is configured and the mode is unset, and refuses to talk
  to a cluster without it (``RAY_AUTH_MODE=disabled`` is an error). The token never comes from
  params and is never logged.

Code on the workers
  Tasks are pickled by reference (``pipelines.<stage>.<fn>``), so every Ray worker must import
  the same ``pipelines`` code and dependencies as the driver: the cluster runs the project image
  (infra/Dockerfile, which installs requirements.lock and the project), not ``runtime_env``
  ``working_dir``. A working_dir upload would ship the code but not its locked dependencies
  (torch, pyarrow, resiliparse, ...), would be re-uploaded per job, and would hide version skew;
  and stage outputs are only reproducible when the code is exactly the code that stage_hash
  folded into the params hash. Non-secret ``PIPELINES_*`` variables of the driver (S3 anonymous
  mode, timeouts, fault injection) are forwarded to the tasks (``runtime_env.env_vars``); S3
  credentials are not: worker nodes take them from their own environment.

Data
  Results come back to the driver through the object store and ``ray.get``: keep them small
  (stats dicts, counts, small numpy arrays). Shards stay on shared storage (the workspace volume
  or S3) and tasks pass paths; a caller that needs bulk data must write it from the tasks, not
  return it.

Resources
  ``task_cpus`` (``num_cpus``), ``task_memory_mb`` (``memory``, a scheduling reservation, not a
  limit) and ``max_retries`` (re-runs a task whose worker process or node died; an exception raised
  by the task is not retried: ``retry_exceptions=False``, the stage's own error handling applies).
  A task's library thread pools (OpenMP/BLAS, Arrow, the tokenizers' Rayon pool) are sized to its
  ``task_cpus`` (at least 1): the cluster runs as many tasks per node as it has CPUs, so a task that
  used every core would oversubscribe the node.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from pipelines.core.faults import fault_point

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)

AUTH_MODE = "RAY_AUTH_MODE"
AUTH_TOKEN = "RAY_AUTH_TOKEN"
AUTH_TOKEN_PATH = "RAY_AUTH_TOKEN_PATH"
FORWARDED_ENV_PREFIX = "PIPELINES_"
# The thread pools of the libraries a task uses (OpenMP / BLAS, Arrow, which reads OMP_NUM_THREADS, and the
# tokenizers' Rayon pool) are sized from these when a worker starts. Ray sets only OMP_NUM_THREADS, and only
# after the worker's first imports: without the rest a task that reserved 1 CPU encodes on every core of its
# node, so N tasks oversubscribe an N-core node N times over.
THREAD_POOL_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS")
CONNECT_TIMEOUT_S = 10.0


class RayExecutorError(ValueError):
    """The ``executor`` params / environment do not describe a usable, authenticated Ray cluster."""


def _gcs_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise RayExecutorError(f"executor.address / RAY_ADDRESS must be the cluster's GCS address host:port, got {address!r}")
    return host.strip("[]"), int(port)


def resolve_address(address: str | None) -> str:
    address = (address or os.environ.get("RAY_ADDRESS") or "").strip()
    if not address:
        raise RayExecutorError("executor.kind is 'ray' but no cluster address: set executor.address in params.yaml "
                               "or RAY_ADDRESS (the head's GCS address, host:port); the executor never starts a local Ray")
    if address in ("local", "auto"):
        raise RayExecutorError(f"executor.address {address!r} is not allowed: name the cluster's GCS address (host:port)")
    if address.startswith("ray://"):
        raise RayExecutorError("Ray Client addresses (ray://) are not supported: give the GCS address (host:port) and "
                               "run the driver inside the cluster network")
    _gcs_host_port(address)
    return address


def require_token_auth() -> None:
    """Turn on Ray's token mode for this process when a token is configured; refuse to run without one."""
    mode = (os.environ.get(AUTH_MODE) or "").strip().lower()
    has_token = (bool(os.environ.get(AUTH_TOKEN)) or bool(os.environ.get(AUTH_TOKEN_PATH))
                 or (Path.home() / ".ray" / "auth_token").is_file())  # Ray's default token file
    if mode and mode != "token":
        raise RayExecutorError(f"{AUTH_MODE}={mode!r}: the Ray executor only talks to token-authenticated clusters "
                               f"({AUTH_MODE}=token)")
    if not has_token:
        raise RayExecutorError(f"no Ray auth token: set {AUTH_TOKEN} or {AUTH_TOKEN_PATH} (a file holding the token, "
                               f"e.g. a mounted Secret) in the environment")
    if not mode:
        # An explicit address never switches token mode on by itself. Ray reads the mode from the
        # environment into its config when first imported: refresh it if ray is already loaded
        # (what ray does itself when it enables token auth for a new local cluster).
        os.environ[AUTH_MODE] = "token"
        if "ray._raylet" in sys.modules:
            sys.modules["ray._raylet"].Config.initialize("")


def _check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    host, port = _gcs_host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise ConnectionError(f"no Ray cluster reachable at {address} ({exc.__class__.__name__}: {exc}); "
                               "is the head running and is this process on its network?") from None


def _forwarded_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIX)}


def thread_caps(task_cpus: float) -> dict[str, str]:
    """A task's thread pools hold as many threads as the CPUs it reserved (at least one)."""
    return {name: str(max(1, int(task_cpus))) for name in THREAD_POOL_VARS}


class RayExecutor:
    def __init__(self, address: str | None = None, task_cpus: float = 1, task_memory_mb: int | None = None,
                 max_retries: int = 3):
        self.address = resolve_address(address)
        self.task_cpus = float(task_cpus)
        self.task_memory_mb = int(task_memory_mb) if task_memory_mb else None
        self.max_retries = int(max_retries)
        if self.task_cpus < 0 or self.max_retries < 0 or (self.task_memory_mb is not None and self.task_memory_mb <= 0):
            raise RayExecutorError("executor.task_cpus and executor.max_retries must be >= 0, task_memory_mb > 0 or null")

    @classmethod
    def from_params(cls, params: dict) -> "RayExecutor":
        return cls(address=params.get("address"), task_cpus=params.get("task_cpus", 1),
                   task_memory_mb=params.get("task_memory_mb"), max_retries=params.get("max_retries", 3))

    def _options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_cpus": self.task_cpus, "max_retries": self.max_retries, "retry_exceptions": False}
        if self.task_memory_mb:
            opts["memory"] = self.task_memory_mb * 1024 * 1024
        return opts

    def connect(self):
        """Connect this process to the cluster once (Ray keeps one connection per process); returns ``ray``."""
        address = self.address
        require_token_auth()  # before `import ray`: Ray reads the auth mode when it is imported
        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            return sys.modules["ray"]
        _check_reachable(address)  # ray.init would retry an unreachable address for a long time
        import ray

        try:
            ray.init(address=address, namespace="pipelines", logging_level=logging.WARNING, log_to_driver=False,
                     runtime_env={"env_vars": {**thread_caps(self.task_cpus), **_forwarded_env()}})
        except ConnectionError as exc:
            if "InvalidAuthToken" in str(exc.__cause__) or "AuthenticationError" in str(exc.__cause__):
                raise PermissionError(f"the Ray cluster at {address} refused this process's auth token: check "
                                      f"{AUTH_TOKEN} / {AUTH_TOKEN_PATH}") from exc
            raise
        log.info("connected to the Ray cluster at %s", address)
        return ray

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> list[R]:
        tasks = list(tasks)
        results: list[R] = []
        if tasks:
            ray = self.connect()
            remote = ray.remote(fn).options(**self._options())
            refs = [remote.remote(t) for t in tasks]
            try:
                results = ray.get(refs)  # in task order
            except BaseException:
                # A failed map leaves nothing running on the cluster: wait for the tasks still in flight. Not
                # ray.cancel: a cancel that races a task's reply crashes this driver with a Ray check failure
                # ("Tried to complete task that was not pending", ray-project/ray#54846, fixed upstream by
                # #54798), hiding the task's own error (seen in this repo's tests under load).
                ray.wait(refs, num_returns=len(refs))
                raise
        fault_point(f"map_done.{getattr(fn, '__name__', '')}")
        return results

    def shutdown(self) -> None:
        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            sys.modules["ray"].shutdown()
