"""Runs that branch from one phase-1 checkpoint: scratch workspaces that reuse the product's trainer.

``train_phase`` reads ``data/pack/{tokenizer,phase1,phase2}`` and writes ``models/<phase>`` of the
workspace (``PIPELINES_WORKSPACE``). A branch is therefore a scratch workspace whose
``data/pack/phase2`` links to the data the branch anneals on (the phase-1 pack, the phase-2 pack,
or a phase-2 pack built without replay) and whose ``models/phase1`` links to the seed's phase-1
checkpoint; the anneal (``train_phase(..., "phase2")``) then runs unchanged. Constant LR is the
same anneal with ``min_lr = lr``, so every arm takes the same code path and differs only in its knobs.
"""
from __future__ import annotations

import contextlib
import copy
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipelines.config import section
from pipelines.train.loop import train_phase
from pipelines.train.schedule import anneal_steps

PACK_PARTS = ("tokenizer", "phase1", "phase2")


@dataclass(frozen=True)
class Arm:
    name: str
    anneal_data: str  # a key of the packs dict: the data the branch trains on after the checkpoint
    decay_fraction: float  # share of the total steps that decay (or, for constant, run on after it)
    decay_shape: str = "linear"
    constant: bool = False  # min_lr = lr: no decay at all

    def params(self, base: dict, total_steps: int) -> dict:
        """The train params of this arm: phase 1 stops at (1 - fraction) of ``total_steps``."""
        p = copy.deepcopy(base)
        tp = p["train"]
        tp["phase1_steps"] = phase1_steps(total_steps, self.decay_fraction)
        tp["anneal_fraction"] = self.decay_fraction
        tp["decay_shape"] = self.decay_shape
        if self.constant:
            tp["min_lr"] = tp["lr"]
        # anneal_steps rounds; the arm must still end on the same total step as every other arm
        assert tp["phase1_steps"] + anneal_steps(tp["phase1_steps"], self.decay_fraction) == total_steps, self
        return p


def phase1_steps(total_steps: int, decay_fraction: float) -> int:
    return round(total_steps * (1.0 - decay_fraction))


@contextlib.contextmanager
def in_workspace(root: Path):
    """Point the stages' workspace (config.workspace) at ``root`` for the duration."""
    before = os.environ.get("PIPELINES_WORKSPACE")
    os.environ["PIPELINES_WORKSPACE"] = str(root)
    try:
        yield root
    finally:
        if before is None:
            os.environ.pop("PIPELINES_WORKSPACE", None)
        else:
            os.environ["PIPELINES_WORKSPACE"] = before


def make_workspace(root: Path, params: dict, pack: Path, phase2_data: Path, phase1_model: Path | None = None) -> Path:
    """A scratch workspace: params.yaml, data/pack linked (phase2 -> ``phase2_data``), and optionally
    models/phase1 linked to a finished phase-1 checkpoint."""
    if root.exists():
        shutil.rmtree(root)
    (root / "data" / "pack").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    links = {"tokenizer": pack / "tokenizer", "phase1": pack / "phase1", "phase2": phase2_data}
    for part in PACK_PARTS:
        (root / "data" / "pack" / part).symlink_to(links[part].resolve(), target_is_directory=True)
    if phase1_model is not None:
        (root / "models" / "phase1").symlink_to(phase1_model.resolve(), target_is_directory=True)
    return root


def train_phase1_checkpoints(params: dict, root: Path, pack: Path, steps: list[int]) -> dict[int, Path]:
    """Phase 1 of one seed, stopped at each of ``steps`` (ascending) and copied to ``root/phase1_at<step>``
    (copies already there are reused: the caller clears ``root`` when the params change).

    A constant LR makes each longer run the shorter one continued (phase1_steps is not in its
    fingerprint), so one run gives every branch point."""
    out = {step: root / f"phase1_at{step}" for step in steps}
    missing = sorted(step for step, path in out.items() if not path.exists())
    if not missing:
        return out
    work = make_workspace(root / "phase1", params, pack, pack / "phase2")
    with in_workspace(work):
        for step in missing:
            p = copy.deepcopy(params)
            p["train"]["phase1_steps"] = step
            train_phase(p, "phase1")
            shutil.copytree(work / "models" / "phase1", out[step])
    return out


def run_arm(arm: Arm, params: dict, total_steps: int, root: Path, pack: Path, anneal_data: Path,
            checkpoint: Path) -> Path:
    """Train the arm from ``checkpoint`` to ``total_steps``; the finished model's directory."""
    p = arm.params(params, total_steps)
    assert section(p, "train")["phase1_steps"] == int(checkpoint.name.removeprefix("phase1_at")), (arm, checkpoint)
    work = make_workspace(root / arm.name, p, pack, anneal_data, phase1_model=checkpoint)
    with in_workspace(work):
        train_phase(p, "phase2")
    return work / "models" / "phase2"
