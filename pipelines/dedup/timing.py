"""Phase timings of the dedup stage (wall and CPU seconds), for bench/ and the log; never in outputs.

CPU includes the worker processes a phase started and reaped (RUSAGE_CHILDREN), so a parallel
phase reports the CPU its workers spent.
"""
from __future__ import annotations

import resource
import time
from contextlib import contextmanager


def _cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class PhaseClock:
    def __init__(self):
        self.phases: dict[str, dict[str, float]] = {}

    @contextmanager
    def __call__(self, name: str):
        wall, cpu = time.perf_counter(), _cpu()
        try:
            yield
        finally:
            entry = self.phases.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0})
            entry["wall_s"] += time.perf_counter() - wall
            entry["cpu_s"] += _cpu() - cpu

    def add(self, other: dict[str, dict[str, float]], prefix: str = "") -> None:
        for name, entry in other.items():
            mine = self.phases.setdefault(prefix + name, {"wall_s": 0.0, "cpu_s": 0.0})
            for k, v in entry.items():
                mine[k] += v

    def rounded(self) -> dict[str, dict[str, float]]:
        return {k: {m: round(v, 3) for m, v in e.items()} for k, e in self.phases.items()}
