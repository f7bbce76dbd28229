"""Step Law: the peak learning rate and the batch size from the model's and the run's size.

Li et al. 2025, "Predictable Scale: Part I, Step Law -- Optimal Hyperparameter Scaling Law in Large
Language Model Pretraining" (arXiv:2503.04715), fitted on 3,700 dense and MoE models trained from
scratch with AdamW and a warmup-stable-decay schedule:

    lr(N, D) = 1.79 * N^-0.713 * D^0.307        peak learning rate
    B(D)     = 0.58 * D^0.571                   tokens per optimizer step

N: the model's non-embedding parameters; D: the tokens the run trains on. ``train.lr: auto`` takes
lr(N, D) with D = (phase-1 + anneal steps) x tokens per step, the same number for both phases (the
anneal decays from it). ``train.batch_tokens: auto`` takes B(D) with the steps fixed, so D = steps x B
and B = (0.58 * steps^0.571)^(1 / 0.429); it is reached by gradient accumulation over micro-batches of
``micro_batch`` sequences (``batch_tokens`` may also be a number). Resolved once, at the start of a
phase, into plain numbers, which the checkpoint fingerprint then holds.

The law was fitted far above the ``tiny`` CPU preset (it extrapolates there): reports/science.md
measures what it gives at this scale.
"""
from __future__ import annotations

import logging
import math

log = logging.getLogger(__name__)

LR_COEF, LR_N_EXP, LR_D_EXP = 1.79, -0.713, 0.307
B_COEF, B_D_EXP = 0.58, 0.571
AUTO = "auto"


def step_law_lr(non_embedding_params: int, tokens: float) -> float:
    return LR_COEF * non_embedding_params ** LR_N_EXP * tokens ** LR_D_EXP


def step_law_batch_tokens(steps: int) -> float:
    """B(D) with D = steps x B: the fixed point of B = 0.58 (steps B)^0.571."""
    return (B_COEF * steps ** B_D_EXP) ** (1 / (1 - B_D_EXP))


def non_embedding_parameters(tp: dict) -> int:
    """The non-embedding parameters of the configured model (built on the meta device: no memory)."""
    import torch

    from pipelines.train.model import build_config, build_model

    config = build_config(tp["preset"], 256, eos_id=0, pad_id=1, overrides=tp.get("model"))  # vocab: irrelevant here
    with torch.device("meta"):
        model = build_model(config)
    embeddings = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None
                  for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embeddings)


def resolve(params: dict, world_size: int = 1) -> dict:
    """``params`` with ``train.lr`` / ``train.batch_tokens`` resolved to numbers (``grad_accum`` set from
    ``batch_tokens``); unchanged when neither is given."""
    from pipelines.train.schedule import anneal_steps

    tp = dict(params.get("train") or {})
    lr, batch = tp.get("lr"), tp.get("batch_tokens")
    if lr != AUTO and batch is None:
        return params
    steps = int(tp["phase1_steps"]) + anneal_steps(int(tp["phase1_steps"]), float(tp["anneal_fraction"]))
    per_micro = int(tp["micro_batch"]) * int(tp["seq_len"]) * world_size
    if batch is not None:
        target = step_law_batch_tokens(steps) if batch == AUTO else float(batch)
        if not math.isfinite(target) or target <= 0:
            raise ValueError(f"train.batch_tokens must be 'auto', null or a positive number, got {batch!r}")
        tp["grad_accum"] = max(1, round(target / per_micro))
        log.info("train: batch_tokens %s -> %d tokens per step (%d micro-batches of %d)", batch,
                 tp["grad_accum"] * per_micro, tp["grad_accum"], per_micro)
    if lr == AUTO:
        n = non_embedding_parameters(tp)
        tokens = steps * per_micro * int(tp["grad_accum"])
        tp["lr"] = round(step_law_lr(n, tokens), 6)
        if float(tp["min_lr"]) > tp["lr"]:
            raise ValueError(f"train.lr: auto gives {tp['lr']:g}, below train.min_lr {tp['min_lr']}")
        log.info("train: lr auto (Step Law) -> %g for %d non-embedding parameters and %d tokens", tp["lr"], n, tokens)
    return {**params, "train": tp}
