"""In-stage parallelism over shards.

``LocalExecutor`` runs tasks in a process pool (or inline for one worker);
the interface is the seam where a Ray executor plugs in for a cluster.
Results come back in task order, so stage outputs do not depend on timing.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Sequence, TypeVar

from pipelines.core.faults import fault_point

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)


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


def get_executor(params: dict | None = None) -> LocalExecutor:
    """Executor from the ``executor`` params section (``kind: local``, ``workers``)."""
    params = params or {}
    kind = params.get("kind", "local")
    workers = int(os.environ.get("PIPELINES_WORKERS", params.get("workers", 0)) or 0) or None
    if kind != "local":
        raise ValueError(f"executor kind {kind!r} is not available in this build (only 'local')")
    return LocalExecutor(workers=workers, start_method=params.get("start_method", "fork"))


def run_all(fn: Callable[[T], R], tasks: Iterable[T], params: dict | None = None) -> list[R]:
    return get_executor(params).map(fn, list(tasks))
