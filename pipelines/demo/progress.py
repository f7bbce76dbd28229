"""Live progress of a DAG run for a person waiting at the terminal (``make demo``).

Every ``every`` seconds (and when a task ends) a line: the run's tasks done of all, the tasks running and
for how long; a finished data stage says how many records it wrote and at what rate; while a training
phase runs, its step, loss and tokens/s with a bar. Read from the run's Airflow metadata DB (SQLite,
read-only: the states ``airflow dags test`` records as it goes) and from the training phases' progress
files (``reports/progress/train_<phase>.json``, written every 10 steps); nothing is parsed from logs.
"""
from __future__ import annotations

import datetime as dt
import json
import sqlite3
import sys
import threading
from pathlib import Path
from typing import TextIO

from pipelines import stages

DONE = {"success", "skipped", "failed", "upstream_failed", "removed"}
BAR = 24


def task_states(db: Path, dag_id: str) -> dict[str, tuple[str | None, str | None, str | None]]:
    """task id -> (state, start, end) in the DAG's latest run; {} when the DB is busy or has no run yet."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
    except sqlite3.Error:
        return {}
    try:
        rows = con.execute(
            "SELECT task_id, state, start_date, end_date FROM task_instance WHERE dag_id = ? AND run_id = "
            "(SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1)", (dag_id, dag_id)).fetchall()
    except sqlite3.Error:  # locked for a moment, or not migrated yet: the next tick reads it
        return {}
    finally:
        con.close()
    return {task: (state, start, end) for task, state, start, end in rows}


def _time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    t = dt.datetime.fromisoformat(str(value))
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def _seconds(start: str | None, end: str | None, now: dt.datetime) -> float:
    a, b = _time(start), _time(end) or now
    return max((b - a).total_seconds(), 0.0) if a else 0.0


def stage_records(root: Path, task_id: str) -> int | None:
    """Records a data stage task wrote (its manifest's rows), None for other tasks."""
    name = task_id.split(".")[-1]
    if name not in stages.names():
        return None
    try:
        manifest = json.loads((stages.output_dir(name, root) / "_manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return int((manifest.get("totals") or {}).get("rows") or 0)


def training_line(root: Path, since: float) -> str | None:
    """The training phase in progress (its progress file written after ``since``, a timestamp)."""
    files = [p for p in (root / "reports" / "progress").glob("train_*.json") if p.stat().st_mtime >= since]
    if not files:
        return None
    latest = max(files, key=lambda p: p.stat().st_mtime)
    try:
        p = json.loads(latest.read_text())
    except (OSError, ValueError):
        return None
    done = p["step"] / max(p["end_step"], 1)
    bar = "#" * int(BAR * done) + "." * (BAR - int(BAR * done))
    rate = f", {p['tokens_per_s']:,.0f} tokens/s" if p.get("tokens_per_s") else ""
    return f"train {p['phase']}: [{bar}] step {p['step']}/{p['end_step']}, loss {p['loss']:.3f}{rate}"


class Progress(threading.Thread):
    """Prints a DAG run's progress until ``stop()``."""

    def __init__(self, root: Path, dag_id: str, every: float = 10.0, out: TextIO = sys.stdout, db: Path | None = None):
        super().__init__(daemon=True)
        self.root, self.dag_id, self.every, self.out = Path(root), dag_id, every, out
        self.db = Path(db) if db else self.root / ".airflow" / "airflow.db"  # the workspace's Airflow home
        self.started = dt.datetime.now(dt.timezone.utc)
        self.reported: set[str] = set()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.every):
            self.tick()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=self.every + 5)
        self.tick(final=True)

    def tick(self, final: bool = False) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        states = task_states(self.db, self.dag_id)
        lines = []
        for task, (state, start, end) in sorted(states.items(), key=lambda kv: str(kv[1][2])):
            if state in DONE and task not in self.reported:
                self.reported.add(task)
                took = _seconds(start, end, now)
                records = stage_records(self.root, task) if state == "success" else None
                rate = f", {records:,} records ({records / took:,.0f}/s)" if records and took else ""
                lines.append(f"[demo]   {state:<8} {task} in {took:.0f}s{rate}")
        if not final:
            done = sum(1 for s, _, _ in states.values() if s in DONE)
            running = [(t, _seconds(a, None, now)) for t, (s, a, _) in states.items() if s == "running"]
            what = ", ".join(f"{t} ({sec:.0f}s)" for t, sec in running) or "scheduling"
            elapsed = (now - self.started).total_seconds()
            lines.append(f"[demo] {self.dag_id} {elapsed:.0f}s: {done}/{len(states) or '?'} tasks done; running: {what}")
            train = training_line(self.root, self.started.timestamp())
            if train and any(t.split(".")[-1] in ("train", "anneal") for t, _ in running):
                lines.append(f"[demo]   {train}")
        if lines:
            print("\n".join(lines), file=self.out, flush=True)
