"""DVC/Airflow entry points of the `train` and `anneal` stages.

With `train.nproc` > 1 (or `auto` on a multi-GPU host) the stage relaunches itself
under `torchrun --nproc-per-node N`; inside torchrun (WORLD_SIZE set) it trains.
"""
from __future__ import annotations

from pipelines.config import section
from pipelines.core.headline import details_path
from pipelines.train import distributed
from pipelines.train.loop import train_phase

COMMANDS = {"phase1": "train", "phase2": "anneal"}  # phase -> `python -m pipelines <command>`


def run_phase1(params: dict) -> dict:
    """Warmup + stable LR on data/pack/phase1 -> models/phase1, metrics/train_phase1.{json,csv}."""
    return _run(params, "phase1")


def run_anneal(params: dict) -> dict:
    """From models/phase1: LR decay on data/pack/phase2 -> models/phase2, metrics/train_phase2.{json,csv}."""
    return _run(params, "phase2")


def _run(params: dict, phase: str) -> dict:
    nproc = distributed.resolve_nproc(section(params, "train"))
    if nproc > 1 and not distributed.launched():
        return distributed.launch(COMMANDS[phase], params, nproc, details_path(f"train_{phase}"))
    return train_phase(params, phase)
