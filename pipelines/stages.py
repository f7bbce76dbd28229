"""The data stages, in pipeline order: the one list the CLI, the gates, the Data versions page and
the summary read. A new stage plugs in by writing its :class:`~pipelines.core.contract.DataStage`
(and ``gate.py`` beside it) and adding one line here, plus its entry in ``dvc.yaml``.

Stage modules are imported only when a stage is used: listing names stays cheap (DAG parsing,
the web server's plugin).
"""
from __future__ import annotations

import importlib
from pathlib import Path

from pipelines.config import resolve

DATA_DIR = "data"

# name -> the DataStage class, "module:Class"
STAGES: dict[str, str] = {
    "ingest": "pipelines.ingest.stage:IngestStage",
    "filter": "pipelines.filter.stage:FilterStage",
    "dedup": "pipelines.dedup.stage:DedupStage",
    "select": "pipelines.select.stage:SelectStage",
    "mix": "pipelines.mix.stage:MixStage",
    "pack": "pipelines.pack.stage:PackStage",
}


# What the jobs between the stages write (not shard-by-shard stages: no runner, no gate).
JOB_OUTPUTS: dict[str, str] = {
    "quality_model": "models/quality",
    "mixture_search": f"{DATA_DIR}/mixture",
}


def names() -> list[str]:
    return list(STAGES)


def order_key(name: str) -> tuple[int, str]:
    """Sorts stage names in pipeline order (unknown names last, by name)."""
    order = names()
    return (order.index(name) if name in order else len(order), name)


def output(name: str) -> str:
    """A stage's (or job's) workspace directory, relative to the workspace (what dvc.yaml lists as its out)."""
    if name in JOB_OUTPUTS:
        return JOB_OUTPUTS[name]
    if name not in STAGES:
        raise KeyError(f"no data stage {name!r}; known: {', '.join(STAGES)}")
    return f"{DATA_DIR}/{name}"


def output_dir(name: str, root: Path | None = None) -> Path:
    return (Path(root) / output(name)) if root is not None else resolve(output(name))


def load(name: str):
    """An instance of the stage's DataStage class."""
    module, cls = STAGES[name].split(":") if name in STAGES else (None, None)
    if module is None:
        raise KeyError(f"no data stage {name!r}; known: {', '.join(STAGES)}")
    return getattr(importlib.import_module(module), cls)()


def run(name: str, params: dict) -> dict:
    """Run one data stage through the runner (what ``python -m pipelines <name>`` does)."""
    from pipelines.core.runner import run_stage

    from pipelines.core.headline import write_headline

    stage = load(name)
    summary = run_stage(stage, params, output_dir(name), output_dir(stage.input) if stage.input else None)
    write_headline(name, stage.headline(output_dir(name)))  # metrics/<name>.json: its row in `dvc metrics show`
    return summary


def runner(name: str):
    """``run`` bound to one stage: ``runner("dedup")(params)``."""
    return lambda params: run(name, params)


def gate_plan(name: str, params: dict, root: Path):
    """The gate of a stage: ``pipelines/<package>/gate.py``'s ``plan(params, root)``."""
    module = STAGES[name].split(":")[0].rsplit(".", 1)[0] + ".gate"
    return importlib.import_module(module).plan(params, root)
