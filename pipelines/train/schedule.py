"""The warmup-stable-decay (WSD) learning-rate schedule.

Phase 1 warms up linearly to ``lr`` and stays there: a constant LR means the
phase-1 checkpoint can be extended or annealed at any point. The anneal then
decays from ``lr`` to ``min_lr`` over its own steps, on the phase-2 data.
"""
from __future__ import annotations

import math

DECAY_SHAPES = ("linear", "cosine", "1-sqrt")


# Share of the (lr - min_lr) range left at anneal progress p in [0, 1]: 1 at the start, 0 at the end.
# 1-sqrt drops fastest early (Hägele et al. 2024), cosine slowest at both ends.
REMAINING = {
    "linear": lambda p: 1.0 - p,
    "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * p)),
    "1-sqrt": lambda p: 1.0 - math.sqrt(p),
}


def anneal_steps(phase1_steps: int, anneal_fraction: float) -> int:
    """Anneal steps such that they are ``anneal_fraction`` of phase1 + anneal."""
    if not 0.0 <= anneal_fraction < 1.0:
        raise ValueError(f"train.anneal_fraction must be in [0, 1), got {anneal_fraction}")
    return round(phase1_steps * anneal_fraction / (1.0 - anneal_fraction))


def wsd_lr(step: int, *, lr: float, min_lr: float, warmup_steps: int, phase1_steps: int,
           decay_steps: int, decay_shape: str = "linear") -> float:
    """LR for global optimizer step ``step`` (0-based) of phase1 + anneal."""
    if decay_shape not in DECAY_SHAPES:
        raise ValueError(f"train.decay_shape must be one of {DECAY_SHAPES}, got {decay_shape!r}")
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps  # never 0: the first step already learns
    if step < phase1_steps or decay_steps <= 0:
        return lr
    # Progress through the anneal, reaching exactly 1.0 (min_lr) on its last step.
    progress = min(1.0, (step - phase1_steps + 1) / decay_steps)
    remaining = REMAINING[decay_shape](progress)
    return min_lr + (lr - min_lr) * remaining


def lr_at(step: int, tp: dict) -> float:
    """The LR of global step ``step`` under the ``train`` params."""
    p1 = int(tp["phase1_steps"])
    return wsd_lr(step, lr=float(tp["lr"]), min_lr=float(tp["min_lr"]), warmup_steps=int(tp["warmup_steps"]),
                  phase1_steps=p1, decay_steps=anneal_steps(p1, float(tp["anneal_fraction"])),
                  decay_shape=tp.get("decay_shape", "linear"))
