"""``python -m pipelines <command>``: what dvc.yaml and the Airflow tasks call.

Data stages come from the registry (``pipelines/stages.py``) and run through the one runner;
the other jobs (models, training, evaluation) are ``module:function(params) -> dict``. Each
prints its summary as JSON; every path is workspace-relative.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys

from pipelines import stages
from pipelines.runtime import quiet_threads

# Jobs that are not data stages: command -> "module:function"; imported lazily so `--help` stays fast.
JOBS = {
    "quality_model": "pipelines.filter.fasttext_quality:train",
    "mixture_search": "pipelines.mixture_search.search:run",
    "train": "pipelines.train.stage:run_phase1",
    "anneal": "pipelines.train.stage:run_anneal",
    "evaluate": "pipelines.evaluate.stage:run",
}
COMMANDS = [*stages.names(), *JOBS]


def _load(target: str):
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__)
    parser.add_argument("--params", default=None, help="params.yaml to use (default: the workspace's)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        sub.add_parser(name, help=f"run the {name} stage")
    check = sub.add_parser("check", help="run the Great Expectations gate of a data stage")
    check.add_argument("stage", choices=stages.names())
    sub.add_parser("version", help="record the data version (commit/tag dvc.lock, dvc push)")
    sub.add_parser("summary", help="print the funnel, data version and bits-per-byte")
    sub.add_parser("report", help="write reports/index.html: every data version's funnel, gates, blends, curves, bpb")
    sub.add_parser("demo", help="run corpus_refresh and pretrain through Airflow, then print the summary")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    quiet_threads()  # before any stage imports torch
    from pipelines.config import load_params

    if args.command == "demo":
        return _load("pipelines.demo.run:main")()
    params = load_params(args.params)
    if args.command == "check":
        from pipelines.checks.gate import GateFailed, run_gate

        try:
            result = run_gate(args.stage, params)
        except GateFailed as e:
            print(str(e), file=sys.stderr)
            return 1
        print(json.dumps({"stage": args.stage, "success": result["success"]}, indent=2))
        return 0
    if args.command == "version":
        result = _load("pipelines.versions.record:record_data_version")(params)
    elif args.command == "summary":
        print(_load("pipelines.demo.summary:render")(params))
        return 0
    elif args.command == "report":
        from pipelines.config import workspace

        print(_load("pipelines.versions.report:write_report")(workspace()))
        return 0
    elif args.command in JOBS:
        result = _load(JOBS[args.command])(params)
    else:
        result = stages.run(args.command, params)
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0
