"""Checkpoints: a HF model directory (safetensors) + tokenizer + ``trainer_state.pt``, swapped in atomically.

The whole directory is written under a temp name next to the final one and
renamed into place, so ``models/phase1`` is always either the previous complete
checkpoint or the new complete one.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

STATE_FILE = "trainer_state.pt"
TMP_PREFIX = ".tmp-"
log = logging.getLogger(__name__)


def save_checkpoint(final: Path, model, tokenizer_dir: Path, state: dict) -> None:
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}.", dir=final.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        for f in sorted(Path(tokenizer_dir).iterdir()):
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
        torch.save(state, tmp / STATE_FILE)
        old = final.parent / f"{TMP_PREFIX}{final.name}.old"
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover(final: Path) -> None:
    """Undo a crash mid-swap: restore ``<name>.old`` if the final dir is missing; drop temp dirs."""
    final = Path(final)
    old = final.parent / f"{TMP_PREFIX}{final.name}.old"
    if not final.exists() and old.exists():
        log.warning("restoring %s from an interrupted checkpoint swap", final)
        os.replace(old, final)
    if final.parent.exists():
        for p in final.parent.glob(f"{TMP_PREFIX}{final.name}.*"):
            shutil.rmtree(p, ignore_errors=True)


def load_state(directory: Path) -> dict | None:
    """The trainer state of a checkpoint directory, or None when there is none (or it is unreadable)."""
    path = Path(directory) / STATE_FILE
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt state is not fatal: we start over, loudly
        log.warning("ignoring unreadable %s: %s", path, e)
        return None


def load_model(directory: Path, device: str | torch.device = "cpu"):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(directory, attn_implementation="sdpa", dtype=torch.float32)
    return model.to(device)


def rng_state(device: torch.device) -> dict:
    """torch's RNG state (CPU, and the device's on CUDA), as a checkpoint keeps it for an exact resume."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def average_checkpoints(model, snapshots: list[dict], keep: int, final: bool) -> list[dict]:
    """train.average_last: CPU copies of the weights at the last ``keep`` checkpoints, this one included;
    at the final step the model's weights become their mean (checkpoint averaging at the end of the anneal).

    Snapshots live in memory: an anneal resumed mid-way averages only the checkpoints taken since."""
    snapshots = (snapshots + [{k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}])[-keep:]
    if final and len(snapshots) > 1:
        log.info("averaging the last %d anneal checkpoints", len(snapshots))
        avg = {k: sum(s[k].float() for s in snapshots) / len(snapshots) for k in snapshots[0]}
        model.load_state_dict({k: v.to(snapshots[-1][k].dtype) for k, v in avg.items()})
    return snapshots
