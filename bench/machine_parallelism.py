"""How much faster two processes run the same CPU work than one, on this machine, without any executor.

Not a ``bench_*`` benchmark (it has no anchor): it is the ceiling the scale benchmark's 1 -> 2 worker and
1 -> 2 node speed-ups are read against (docs/scale-out.md). Three kinds of work, each run twice in one
process and then once in each of two processes at the same time; speed-up = serial / parallel wall time:

- ``arithmetic``: a pure-Python integer loop (nothing but the cores);
- ``dict``: building a dict of 3M string keys (allocation and hashing: caches and memory);
- ``text``: regex word-splitting and lower-casing a 16 MB string, as the stages' text rules do.

Each is repeated (default 3): on a shared VM the spread is part of the answer. Measured here (2 vCPUs,
repeated runs, docs/scale-out.md): speed-ups from 1.3x to 3.5x for the same work, so a single
1 -> 2 speed-up measured on this machine carries an error of that order.

    python -m bench.machine_parallelism
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import time

TEXT = "The quick brown fox jumps over the lazy dog 12345 lorem ipsum dolor sit amet. " * 200_000


def arithmetic(_: int) -> int:
    s = 0
    for i in range(30_000_000):
        s += i * i % 7
    return s


def dict_build(_: int) -> int:
    d = {}
    for i in range(3_000_000):
        d[str(i * 7919 % 1_000_003)] = i
    return len(d)


def text(_: int) -> int:
    n = 0
    for _ in range(3):
        n += len(re.findall(r"\w+", TEXT)) + len(TEXT.lower().split())
    return n


def speedup(fn) -> dict:
    t = time.perf_counter()
    fn(0)
    fn(1)
    serial = time.perf_counter() - t
    with mp.get_context("fork").Pool(2) as pool:
        t = time.perf_counter()
        pool.map(fn, [0, 1])
        parallel = time.perf_counter() - t
    return {"serial_s": round(serial, 2), "two_processes_s": round(parallel, 2), "speedup": round(serial / parallel, 2)}


def main(repeat: int = 3) -> dict:
    """Each kind ``repeat`` times: on a shared VM the spread between repeats is part of the answer."""
    result = {"cpus": os.cpu_count()}
    for f in (arithmetic, dict_build, text):
        runs = [speedup(f) for _ in range(repeat)]
        result[f.__name__] = {"speedups": [r["speedup"] for r in runs], "runs": runs}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
