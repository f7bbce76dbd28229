"""`make demo`: run corpus_refresh then pretrain through Airflow (SQLite metadata DB,
`airflow dags test`) in this workspace, then print the summary."""
from __future__ import annotations

import re
import sys
import time

from pipelines.config import workspace
from pipelines.demo.progress import Progress
from pipelines.demo.summary import render
from pipelines.local_airflow.env import airflow_cli, ensure_db
from pipelines.versions.report import write_report


def main() -> int:
    root = workspace()
    t0 = time.time()
    print(f"[demo] workspace {root}; Airflow home {root / '.airflow'} (SQLite)", flush=True)
    ensure_db(root)
    for dag_id in ("corpus_refresh", "pretrain"):
        log = root / ".airflow" / f"demo-{dag_id}.log"
        print(f"[demo] airflow dags test {dag_id} (full log, as it runs: {log})", flush=True)
        t = time.time()
        progress = Progress(root, dag_id)  # a line every 10 s: tasks done, running, records/s, training steps
        progress.start()
        try:
            proc = airflow_cli(["dags", "test", dag_id], root, check=False, log=log)
        finally:
            progress.stop()
        output = log.read_text(errors="replace")
        failed = proc.returncode != 0 or "state=failed" in output.lower().replace(" ", "")
        print(f"[demo] {dag_id}: {'FAILED' if failed else 'success'} in {time.time() - t:.0f}s (log: {log})", flush=True)
        if failed:
            print(output[-6000:], file=sys.stderr)
            return 1
        skipped = re.search(r"skipping: (data version \S+ was already trained)", output)
        if skipped:  # a rerun on the same corpus: pretrain had nothing to do
            print(f"[demo] {dag_id}: skipped its training: {skipped.group(1)}", flush=True)
    print(render(root=root))
    report = write_report(root)
    print(f"\n[demo] done in {time.time() - t0:.0f}s. `dvc repro` now has nothing to do; `dvc status` shows it.")
    print(f"[demo] open {report} (works offline): funnel, gates with their Data Docs, blends, loss, bpb, lineage")
    return 0
