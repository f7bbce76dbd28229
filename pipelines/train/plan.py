"""What a training phase is: its data, its global step range, and the fingerprint its checkpoint carries.

Phase 1 trains from scratch on ``data/pack/phase1`` (warmup + constant LR); phase 2,
the anneal, continues the phase-1 run on ``data/pack/phase2`` with a decaying LR. A
checkpoint is resumed only when its fingerprint (params and data that shape the run)
matches the current ones and its step lies in the phase's range.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pipelines import stages
from pipelines.config import resolve, section
from pipelines.pack.format import INDEX
from pipelines.train.schedule import anneal_steps

TOKENIZER_DIR = f"{stages.output('pack')}/tokenizer"
STATE_FORMAT = 1
PHASES = ("phase1", "phase2")
# Params that shape the phase-1 trajectory. phase1_steps is left out on purpose:
# with a constant LR, a longer phase 1 is the same run continued (the WSD property).
PHASE1_KEYS = ("preset", "model", "seq_len", "micro_batch", "grad_accum", "lr", "warmup_steps",
               "weight_decay", "grad_clip", "betas")
PHASE2_KEYS = ("min_lr", "anneal_fraction", "decay_shape", "phase1_steps")
# Later additions that shape the whole run, with the value every earlier run had.
OPTIONAL_KEYS = {"document_attention": "within", "online_mixing": None}


@dataclass
class Phase:
    name: str
    data_dir: Path
    out_dir: Path
    start_step: int  # global optimizer step this phase starts at
    end_step: int
    fingerprint: str


def plan_phase(params: dict, name: str, world_size: int = 1) -> Phase:
    if name not in PHASES:
        raise ValueError(f"unknown phase {name!r}")
    tp = section(params, "train")
    seed = int(params.get("seed", 0))
    p1_steps = int(tp["phase1_steps"])
    tok_dir = resolve(TOKENIZER_DIR)
    data_dir = stages.output_dir("pack") / name
    for d in (tok_dir, data_dir):
        if not d.exists():
            raise FileNotFoundError(f"{d} does not exist (run the pack stage first)")
    base = {"seed": seed, "data": _data_fingerprint(stages.output_dir("pack") / "phase1", tok_dir),
            **{k: tp.get(k) for k in PHASE1_KEYS}}
    if world_size > 1:  # the global batch is world x micro_batch x grad_accum (left out at 1: old checkpoints stay valid)
        base["world_size"] = world_size
    for key, default in OPTIONAL_KEYS.items():  # in the fingerprint only when set: old checkpoints stay valid
        if tp.get(key, default) != default:
            base[key] = tp[key]
    if name == "phase1":
        return Phase(name, data_dir, resolve("models/phase1"), 0, p1_steps, _digest(base))
    n_anneal = anneal_steps(p1_steps, float(tp["anneal_fraction"]))
    fp = _digest({**base, "phase2_data": _data_fingerprint(data_dir, tok_dir), **{k: tp.get(k) for k in PHASE2_KEYS}})
    return Phase(name, data_dir, resolve("models/phase2"), p1_steps, p1_steps + n_anneal, fp)


def resumable(state: dict, phase: Phase) -> bool:
    """Whether a checkpoint's trainer state belongs to this phase (same params and data, step in range)."""
    return (state.get("format") == STATE_FORMAT and state.get("fingerprint") == phase.fingerprint
            and phase.start_step <= state["step"] <= phase.end_step)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _data_fingerprint(data_dir: Path, tokenizer_dir: Path) -> str:
    index = (data_dir / INDEX).read_bytes()
    tok = (tokenizer_dir / "tokenizer.json").read_bytes() if (tokenizer_dir / "tokenizer.json").exists() else b""
    return hashlib.sha256(index + b"\0" + tok).hexdigest()[:16]
