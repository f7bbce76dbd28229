"""In-stage parallelism over shards.

``LocalExecutor`` runs tasks in a process pool (or inline for one worker);
``RayExecutor`` (pipelines/core/ray_executor.py, ``executor.kind: ray``) runs them as Ray tasks on
a cluster. Both have one method, ``map(fn, tasks) -> list``: ``fn`` is a module-level function,
each task a picklable object, results small and picklable, returned in task order, so stage
outputs do not depend on timing or placement.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Protocol, Sequence, TypeVar

from pipelines.core.faults import fault_point

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)


KINDS = ("local", "ray")


class Executor(Protocol):
    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> list[R]: ...


class LocalExecutor:
    def __init__(self, workers: int | None = None, start_method: str = "fork"):
        self.workers = max(1, int(workers or os.cpu_count() or 1))
        self.start_method = start_method

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> list[R]:
        tasks = list(tasks)
        if self.workers == 1 or len(tasks) <= 1:
            results = [fn(t) for t in tasks]
        else:
            ctx = mp.get_context(self.start_method)
            with ProcessPoolExecutor(max_workers=min(self.workers, len(tasks)), mp_context=ctx) as pool:
                results = list(pool.map(fn, tasks))
        fault_point(f"map_done.{getattr(fn, '__name__', '')}")
        return results


def get_executor(params: dict | None = None) -> Executor:
    """Executor from the ``executor`` params section.

    ``kind: local`` (default): ``workers`` (or PIPELINES_WORKERS), ``start_method``.
    ``kind: ray``: ``address`` (or RAY_ADDRESS), ``task_cpus``, ``task_memory_mb``, ``max_retries``;
    ray is imported only then.
    """
    params = params or {}
    kind = params.get("kind", "local")
    if kind == "local":
        workers = int(os.environ.get("PIPELINES_WORKERS", params.get("workers", 0)) or 0) or None
        return LocalExecutor(workers=workers, start_method=params.get("start_method", "fork"))
    if kind == "ray":
        from pipelines.core.ray_executor import RayExecutor

        return RayExecutor.from_params(params)
    raise ValueError(f"unknown executor.kind {kind!r} in params.yaml: expected one of {', '.join(KINDS)}")


def run_all(fn: Callable[[T], R], tasks: Iterable[T], params: dict | None = None) -> list[R]:
    return get_executor(params).map(fn, list(tasks))
