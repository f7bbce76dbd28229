"""DVC/Airflow entry points of the `train` and `anneal` stages."""
from __future__ import annotations

from pipelines.train.loop import train_phase


def run_phase1(params: dict) -> dict:
    """Warmup + stable LR on data/pack/phase1 -> models/phase1, metrics/train_phase1.{json,csv}."""
    return train_phase(params, "phase1")


def run_anneal(params: dict) -> dict:
    """From models/phase1: LR decay on data/pack/phase2 -> models/phase2, metrics/train_phase2.{json,csv}."""
    return train_phase(params, "phase2")
