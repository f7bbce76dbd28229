"""The training loop (nanoGPT style): one function, config as data, exact resume.

Phase 1 trains from scratch on ``data/pack/phase1`` with warmup + constant LR.
Phase 2 (the anneal) starts from the phase-1 checkpoint (weights, optimizer,
step counter) and decays the LR on ``data/pack/phase2``. Each phase checkpoints
to ``models/<phase>/`` and resumes from there when the checkpoint matches the
current params and data.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from pipelines.config import resolve, section
from pipelines.core.atomic import write_bytes_atomic, write_json_atomic
from pipelines.pack.format import INDEX, PackedDataset
from pipelines.train import attention, distributed
from pipelines.train.checkpoint import load_model, load_state, recover, save_checkpoint
from pipelines.train.data import IGNORE, BatchStream
from pipelines.train.model import build_config, build_model, count_parameters
from pipelines.train.schedule import anneal_steps, wsd_lr

log = logging.getLogger(__name__)
TOKENIZER_DIR = "data/pack/tokenizer"
STATE_FORMAT = 1
PHASES = ("phase1", "phase2")
STEP_TIMES: list[float] | None = None  # when a list, each step's seconds are appended (bench/bench_train_gpu.py)
CURVE_COLUMNS = ("step", "loss", "lr", "tokens")
# Params that shape the phase-1 trajectory. phase1_steps is left out on purpose:
# with a constant LR, a longer phase 1 is the same run continued (the WSD property).
PHASE1_KEYS = ("preset", "model", "seq_len", "micro_batch", "grad_accum", "lr", "warmup_steps",
               "weight_decay", "grad_clip", "betas")
PHASE2_KEYS = ("min_lr", "anneal_fraction", "decay_shape", "phase1_steps")


@dataclass
class Phase:
    name: str
    data_dir: Path
    out_dir: Path
    start_step: int  # global optimizer step this phase starts at
    end_step: int
    fingerprint: str


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _data_fingerprint(data_dir: Path, tokenizer_dir: Path) -> str:
    index = (data_dir / INDEX).read_bytes()
    tok = (tokenizer_dir / "tokenizer.json").read_bytes() if (tokenizer_dir / "tokenizer.json").exists() else b""
    return hashlib.sha256(index + b"\0" + tok).hexdigest()[:16]


def pick_device(name: str) -> torch.device:
    if name in (None, "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def plan_phase(params: dict, name: str, world_size: int = 1) -> Phase:
    if name not in PHASES:
        raise ValueError(f"unknown phase {name!r}")
    tp = section(params, "train")
    seed = int(params.get("seed", 0))
    p1_steps = int(tp["phase1_steps"])
    tok_dir = resolve(TOKENIZER_DIR)
    data_dir = resolve(f"data/pack/{name}")
    for d in (tok_dir, data_dir):
        if not d.exists():
            raise FileNotFoundError(f"{d} does not exist (run the pack stage first)")
    base = {"seed": seed, "data": _data_fingerprint(resolve("data/pack/phase1"), tok_dir),
            **{k: tp.get(k) for k in PHASE1_KEYS}}
    if world_size > 1:  # the global batch is world x micro_batch x grad_accum (left out at 1: old checkpoints stay valid)
        base["world_size"] = world_size
    if name == "phase1":
        return Phase(name, data_dir, resolve("models/phase1"), 0, p1_steps, _digest(base))
    n_anneal = anneal_steps(p1_steps, float(tp["anneal_fraction"]))
    fp = _digest({**base, "phase2_data": _data_fingerprint(data_dir, tok_dir), **{k: tp.get(k) for k in PHASE2_KEYS}})
    return Phase(name, data_dir, resolve("models/phase2"), p1_steps, p1_steps + n_anneal, fp)


def make_optimizer(model, tp: dict, device: torch.device) -> torch.optim.AdamW:
    # nanoGPT: decay matrices (incl. embeddings), not norms/biases.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": float(tp["weight_decay"])}, {"params": no_decay, "weight_decay": 0.0}]
    betas = tuple(tp.get("betas") or (0.9, 0.95))
    return torch.optim.AdamW(groups, lr=float(tp["lr"]), betas=betas, eps=1e-8, fused=device.type == "cuda")


def _lr(step: int, tp: dict) -> float:
    p1 = int(tp["phase1_steps"])
    return wsd_lr(step, lr=float(tp["lr"]), min_lr=float(tp["min_lr"]), warmup_steps=int(tp["warmup_steps"]),
                  phase1_steps=p1, decay_steps=anneal_steps(p1, float(tp["anneal_fraction"])),
                  decay_shape=tp.get("decay_shape", "linear"))


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def train_phase(params: dict, name: str, *, stop_after: int | None = None) -> dict:
    """Train one phase to its end step (or ``stop_after`` steps of this call, to simulate an interruption)."""
    device = pick_device(section(params, "train").get("device", "auto"))
    if device.type == "cuda" and distributed.launched():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    world = distributed.init(device)
    # Process-wide torch settings, restored afterwards (tests run many stages in one process).
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        if device.type == "cpu":
            torch.set_num_threads(int(section(params, "train").get("threads", 2)))
            torch.use_deterministic_algorithms(True)
        else:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        return _train_phase(params, name, device, stop_after, world)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        distributed.shutdown(world)


def _train_phase(params: dict, name: str, device: torch.device, stop_after: int | None,
                 world: distributed.World) -> dict:
    tp = section(params, "train")
    seed = int(params.get("seed", 0))
    phase = plan_phase(params, name, world.size)
    hf_logging.disable_progress_bar()  # per-checkpoint progress bars drown the training log
    tok_dir = resolve(TOKENIZER_DIR)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    dataset = PackedDataset(phase.data_dir)
    seq_len, micro_batch, grad_accum = int(tp["seq_len"]), int(tp["micro_batch"]), int(tp["grad_accum"])
    if dataset.seq_len != seq_len:
        raise ValueError(f"train.seq_len={seq_len} but {phase.data_dir} is packed at seq_len={dataset.seq_len}")
    vocab = len(tokenizer)
    if int(dataset.index.get("vocab_size", vocab)) > vocab:
        raise ValueError(f"{phase.data_dir} uses vocab_size {dataset.index['vocab_size']} > tokenizer's {vocab}")

    if world.is_main:
        recover(phase.out_dir)
    distributed.barrier(world)
    state = load_state(phase.out_dir)
    if state is not None and not (state.get("format") == STATE_FORMAT and state.get("fingerprint") == phase.fingerprint
                                  and phase.start_step <= state["step"] <= phase.end_step):
        log.warning("%s: existing checkpoint does not match the current params/data; starting over", phase.out_dir)
        state = None

    resumed = state is not None
    # Every rank builds or loads the same full model; wrap() then replicates (DDP) or shards (FSDP2) it.
    source = None  # the checkpoint state the optimizer and RNG continue from
    if resumed:  # resume this phase
        model, source = load_model(phase.out_dir, device), state
        log.info("%s: resuming at step %d", name, state["step"])
    elif name == "phase2":  # the anneal continues the phase-1 run
        p1 = plan_phase(params, "phase1", world.size)
        source = load_state(p1.out_dir)
        if source is None or source.get("fingerprint") != p1.fingerprint or source["step"] != phase.start_step:
            raise RuntimeError(f"{p1.out_dir} is not a finished phase-1 checkpoint for these params "
                               f"(need step {phase.start_step}); run the train stage first")
        model = load_model(p1.out_dir, device)
        state = {"step": phase.start_step, "position": 0, "tokens": 0, "elapsed_s": 0.0, "history": [],
                 "tokens_before": source["tokens_before"] + source["tokens"]}
    else:  # phase 1 from scratch
        torch.manual_seed(seed)
        config = build_config(tp["preset"], vocab, eos_id=dataset.eos_id, pad_id=dataset.pad_id, overrides=tp.get("model"))
        model = build_model(config).to(device)
        state = {"step": 0, "position": 0, "tokens": 0, "elapsed_s": 0.0, "history": [], "tokens_before": 0}
    mode, forward = _parallel(model, tp, device, world)
    optimizer = make_optimizer(model, tp, device)
    if source is not None:
        distributed.load_optimizer_state(model, optimizer, source["optimizer"], mode)
        _set_rng_state(source["rng"], device)

    attn = attention.choose(tp.get("attention", "auto"), device)
    attention.set_implementation(model, attn)
    stream = BatchStream(dataset, micro_batch, seed=seed + (0 if name == "phase1" else 1), position=state["position"],
                         dense_mask=attn != "flex_attention", rank=world.rank, world=world.size)
    # torch.compile wraps the forward only; `model` stays the module that is saved and averaged
    # (`forward` is the DDP wrapper under DDP; under FSDP2 `model` itself is sharded in place).
    synced = forward
    if tp.get("compile"):
        forward = torch.compile(forward)
    writer = _tensorboard(phase.out_dir.parent / f"tb_{name}", tp) if world.is_main else None
    average_last = int(tp.get("average_last", 0) or 0) if name == "phase2" else 0
    snapshots: list[dict] = []  # CPU copies of the weights at the anneal's last checkpoints
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext())
    every = int(tp.get("checkpoint_every", 0)) or phase.end_step
    step, tokens, history = state["step"], state["tokens"], list(state["history"])
    elapsed = float(state["elapsed_s"])
    saved_step = step if resumed else None  # the step the checkpoint on disk holds

    def checkpoint() -> None:
        # Gathering full states is collective under FSDP2 (every rank), writing is rank 0's alone.
        weights = distributed.full_model_state(model) if mode == "fsdp" else None
        optim = distributed.optimizer_state(model, optimizer, mode)
        if world.is_main:
            snapshot = {"format": STATE_FORMAT, "phase": name, "fingerprint": phase.fingerprint, "step": step,
                        "position": stream.position, "tokens": tokens, "tokens_before": state["tokens_before"],
                        "elapsed_s": elapsed, "history": history, "optimizer": optim,
                        "rng": _rng_state(device), "seq_len": seq_len, "world_size": world.size}
            save_checkpoint(phase.out_dir, model if weights is None else distributed.plain_copy(model, weights),
                            tok_dir, snapshot)
        distributed.barrier(world)

    model.train()
    done_here = 0
    if step < phase.end_step:
        log.info("%s: steps %d..%d, %d parameters, device %s", name, step, phase.end_step,
                 count_parameters(model), device)
    while step < phase.end_step and (stop_after is None or done_here < stop_after):
        t0 = time.perf_counter()
        lr = _lr(step, tp)
        for group in optimizer.param_groups:
            group["lr"] = lr
        micro = [stream.next() for _ in range(grad_accum)]
        # Targets and tokens of the whole (all-rank) step: the loss is the mean over every target of it.
        n_targets, step_tokens = (int(v) for v in distributed.all_sum(
            [sum(b.n_targets for b in micro), sum(b.n_tokens for b in micro)], world, device).tolist())
        n_targets = max(1, n_targets)
        step_nats = torch.zeros((), device=device)
        for i, batch in enumerate(micro):
            batch = batch.to(device)
            mask = (attention.document_block_mask(batch.segment_ids) if attn == "flex_attention"
                    else batch.attention_mask)
            with distributed.grad_sync(synced, mode, last=i == len(micro) - 1):
                with autocast:
                    logits = forward(input_ids=batch.input_ids, attention_mask=mask,
                                     position_ids=batch.position_ids).logits
                nats = F.cross_entropy(logits.float().flatten(0, 1), batch.labels.flatten(),
                                       ignore_index=IGNORE, reduction="sum")
                # x world: DDP/FSDP average the ranks' gradients, and the sum over ranks is what we want.
                (nats * (world.size / n_targets)).backward()
            step_nats += nats.detach()  # summed on the device: one host sync per step, below
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float(tp["grad_clip"]))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        # Read after the step, not between clip and step (a second host sync); on every rank,
        # since reading a sharded (FSDP2) norm may be collective.
        if tp.get("tensorboard", True):
            grad_norm = distributed.as_float(grad_norm)
        step += 1
        done_here += 1
        tokens += step_tokens
        # waits for the step to finish, so the timing below is real
        loss = float(distributed.all_sum(step_nats, world, device)[0]) / n_targets
        dt = time.perf_counter() - t0
        if STEP_TIMES is not None:
            STEP_TIMES.append(dt)
        elapsed += dt
        history.append({"step": step, "loss": loss, "lr": lr, "tokens": state["tokens_before"] + tokens})
        if writer is not None:
            writer.add_scalar("train/loss", loss, step)
            writer.add_scalar("train/lr", lr, step)
            writer.add_scalar("train/grad_norm", grad_norm, step)
            writer.add_scalar("train/tokens_per_s", step_tokens / dt, step)
        if step % 10 == 0 or step == phase.end_step:
            log.info("%s step %d loss %.4f lr %.2e", name, step, history[-1]["loss"], lr)
        if step % every == 0 or step == phase.end_step:
            if average_last:
                snapshots = (snapshots + [{k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}])
                snapshots = snapshots[-average_last:]
                if step == phase.end_step and len(snapshots) > 1:
                    _load_average(model, snapshots)
            checkpoint()
            saved_step = step

    if writer is not None:
        writer.close()
    if step < phase.end_step:  # stopped early on purpose: leave a checkpoint of this step to resume from
        if saved_step != step:
            checkpoint()
        return {"phase": name, "step": step, "finished": False}
    if not world.is_main:
        return {"phase": name, "step": step, "finished": True, "rank": world.rank}
    return write_metrics(name, phase, tokens, elapsed, history, model, world.size)


def _parallel(model, tp: dict, device: torch.device, world: distributed.World):
    """(mode, module to call) for this world: `none`, `ddp` or `fsdp` (train.parallel)."""
    mode = distributed.choose_parallel(tp.get("parallel", "auto"), count_parameters(model), world)
    if mode != "none":
        log.info("rank %d/%d: %s", world.rank, world.size, mode)
    return mode, distributed.wrap(model, mode, device)


def _tensorboard(log_dir: Path, tp: dict):
    """A SummaryWriter into models/tb_<phase> (outside the checkpoint dir, which is swapped atomically)."""
    if not tp.get("tensorboard", True):
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir))


def _load_average(model, snapshots: list[dict]) -> None:
    """Replace the weights by the mean of the snapshots (checkpoint averaging at the end of the anneal).

    Snapshots live in memory: an anneal resumed mid-way averages only the checkpoints taken since."""
    log.info("averaging the last %d anneal checkpoints", len(snapshots))
    avg = {k: sum(s[k].float() for s in snapshots) / len(snapshots) for k in snapshots[0]}
    model.load_state_dict({k: v.to(snapshots[-1][k].dtype) for k, v in avg.items()})


def write_metrics(name: str, phase: Phase, tokens: int, elapsed: float, history: list[dict], model,
                  world_size: int = 1) -> dict:
    last = history[-1] if history else {"loss": float("nan"), "lr": 0.0}
    tail = history[-10:]
    metrics = {
        "phase": name,
        "steps": phase.end_step - phase.start_step,
        "step_final": phase.end_step,
        "tokens": tokens,
        "tokens_total": history[-1]["tokens"] if history else 0,
        "loss_final": last["loss"],
        "loss_final_avg10": sum(h["loss"] for h in tail) / max(1, len(tail)),
        "lr_final": last["lr"],
        "parameters": count_parameters(model),
        "tokens_per_s": round(tokens / elapsed, 1) if elapsed > 0 else None,
        "world_size": world_size,
    }
    write_json_atomic(resolve(f"metrics/train_{name}.json"), metrics)
    lines = [",".join(CURVE_COLUMNS)] + [",".join(repr(h[c]) for c in CURVE_COLUMNS) for h in history]
    write_bytes_atomic(resolve(f"metrics/train_{name}.csv"), ("\n".join(lines) + "\n").encode())
    return metrics
