"""Run benchmarks: every bench/bench_<name>.py with a main(), or those named on the command line."""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIRED = {"name", "metric", "ours", "anchor", "anchor_name", "ratio", "input", "peak_rss_mb"}


def code_version() -> dict:
    """The commit the benchmark ran on, and whether the working tree differed from it."""
    import subprocess

    git = lambda *a: subprocess.run(["git", *a], cwd=HERE.parent, capture_output=True, text=True).stdout.strip()  # noqa: E731
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", "pipelines", "bench", ":!bench/results", ":!bench/work"))}


def main(argv: list[str]) -> int:
    names = argv or sorted(p.stem[len("bench_"):] for p in HERE.glob("bench_*.py"))
    if not names:
        print("no benchmarks found")
        return 0
    failed = []
    for name in names:
        print(f"== bench {name}", flush=True)
        module = importlib.import_module(f"bench.bench_{name}")
        module.main()
        for r in [HERE / "results" / f"{name}.json"]:
            data = json.loads(r.read_text())
            if isinstance(data, dict):  # a result describes the code it measured
                data.update(code_version())
                r.write_text(json.dumps(data, indent=2) + "\n")
            rows = data if isinstance(data, list) else [data]
            for row in rows:
                missing = REQUIRED - set(row)
                if missing:
                    failed.append(f"{r.name}: missing {sorted(missing)}")
                print(f"   {row.get('name')}: {row.get('metric')} ours={row.get('ours')} "
                      f"anchor[{row.get('anchor_name')}]={row.get('anchor')} ratio={row.get('ratio')}")
    for f in failed:
        print("INVALID RESULT", f, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
