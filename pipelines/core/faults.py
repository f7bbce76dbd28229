"""Test-only crash points, inert unless ``PIPELINES_FAULT_KILL`` is set.

``PIPELINES_FAULT_KILL="<point>:<n>"`` SIGKILLs the current process the n-th
time (1-based, counted per process) it passes ``<point>``; the reliability
tests use it to crash a stage at an exact place and prove the re-run is
byte-identical. Points:

- ``shard_write``: a shard's temp file is fully written, not yet renamed;
- ``shard_done``: a shard and its manifest fragment are complete (between shards);
- ``map_done.<fn>``: an executor map of ``<fn>`` returned (e.g. ``map_done.hash_shard``:
  dedup's global phase, after pass 1 and before any output is written).

``PIPELINES_FAULT_ONCE=<file>`` makes the kill one-shot across processes: it fires only while
``<file>`` exists, and removes it first, so a retry of the same command (an Airflow retry, a
re-run) gets past it: a transient crash.
"""
from __future__ import annotations

import os
import signal

ENV = "PIPELINES_FAULT_KILL"
ONCE_ENV = "PIPELINES_FAULT_ONCE"
_seen: dict[str, int] = {}


def fault_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, nth = spec.rpartition(":")
    if point != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == int(nth):
        once = os.environ.get(ONCE_ENV)
        if once:
            try:
                os.remove(once)
            except FileNotFoundError:
                return  # already fired in an earlier attempt
        os.kill(os.getpid(), signal.SIGKILL)
