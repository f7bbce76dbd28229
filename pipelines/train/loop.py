"""The training loop (nanoGPT style), read top to bottom: train_phase -> init_or_resume -> train_step ->
log_step / save -> finish. Config is data (params.yaml's ``train``); resume is exact.

Phase 1 trains from scratch on ``data/pack/phase1`` with warmup + constant LR.
Phase 2 (the anneal) starts from the phase-1 checkpoint (weights, optimizer,
step counter) and decays the LR on ``data/pack/phase2`` (see plan.py). Each phase
checkpoints to ``models/<phase>/`` and resumes from there when the checkpoint
matches the current params and data.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from pipelines.config import resolve, section
from pipelines.pack.format import PackedDataset
from pipelines.train import attention, distributed, step_law
from pipelines.train.checkpoint import (average_checkpoints, load_model, load_state, recover, rng_state, save_checkpoint,
                                         set_rng_state)
from pipelines.train.data import IGNORE, Batch, BatchStream
from pipelines.train.metrics import log_step, open_tensorboard, write_metrics
from pipelines.train.model import build_config, build_model, count_parameters, make_optimizer
from pipelines.train.plan import STATE_FORMAT, TOKENIZER_DIR, Phase, plan_phase, resumable
from pipelines.train.schedule import lr_at

log = logging.getLogger(__name__)


@dataclass
class StepStats:
    """One optimizer step, as the log, tensorboard and an ``on_step`` callback see it."""
    step: int  # the global step just taken (1-based)
    loss: float  # mean next-token loss over every target of the step, all ranks
    lr: float
    tokens: int  # input tokens of the step, all ranks
    grad_norm: float | None  # pre-clip gradient norm; None when not read (train.tensorboard off: one host sync less)
    seconds: float  # wall time of the step, up to its loss reaching the host


@dataclass
class Progress:
    """How far a phase is: the counters its checkpoint saves next to the weights, optimizer and RNG."""
    step: int  # global optimizer steps taken
    tokens: int = 0  # tokens trained on in this phase
    tokens_before: int = 0  # tokens of the phases before it (the curve's token axis continues)
    elapsed_s: float = 0.0  # seconds spent in steps
    history: list[dict] = field(default_factory=list)  # one {"step", "loss", "lr", "tokens"} per step

    @classmethod
    def of(cls, state: dict) -> Progress:
        return cls(state["step"], state["tokens"], state["tokens_before"], float(state["elapsed_s"]),
                   list(state["history"]))

    def advance(self, s: StepStats) -> None:
        self.step = s.step
        self.tokens += s.tokens
        self.elapsed_s += s.seconds
        self.history.append({"step": s.step, "loss": s.loss, "lr": s.lr, "tokens": self.tokens_before + self.tokens})


@dataclass
class Run:
    """One phase's training as init_or_resume builds it: what is trained, on what data, and how far it is."""
    phase: Phase
    model: torch.nn.Module  # the module saved and averaged (under FSDP2 sharded in place)
    synced: torch.nn.Module  # what grad_sync toggles: the DDP wrapper under DDP, else `model`
    forward: Callable  # what a micro-batch calls: `synced`, torch.compile'd when train.compile
    mode: str  # parallelism: none | ddp | fsdp
    optimizer: torch.optim.Optimizer
    stream: BatchStream
    attn: str  # attention implementation; flex_attention takes a BlockMask instead of a dense mask
    device: torch.device
    world: distributed.World
    progress: Progress
    saved_step: int | None  # the step the checkpoint on disk holds (None: none of this run yet)


def pick_device(name: str) -> torch.device:
    """The device a `device` param names; `auto` (or unset) = cuda when available, else cpu."""
    if name in (None, "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def train_phase(params: dict, name: str, *, stop_after: int | None = None,
                on_step: Callable[[StepStats], None] | None = None) -> dict:
    """Train one phase to its end step (or ``stop_after`` steps of this call, to simulate an interruption).

    ``on_step`` is called with each optimizer step's StepStats (bench/bench_train_gpu.py times steps with it)."""
    device = pick_device(section(params, "train").get("device", "auto"))
    if device.type == "cuda" and distributed.launched():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    world = distributed.init(device)
    params = step_law.resolve(params, world.size)  # train.lr / batch_tokens: auto -> numbers
    # Process-wide torch settings, restored afterwards (tests run many stages in one process).
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        if device.type == "cpu":
            torch.set_num_threads(int(section(params, "train").get("threads", 2)))
            torch.use_deterministic_algorithms(True)
        else:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        return _train(params, plan_phase(params, name, world.size), device, world, stop_after, on_step)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        distributed.shutdown(world)


def _train(params: dict, phase: Phase, device: torch.device, world: distributed.World, stop_after: int | None,
           on_step: Callable[[StepStats], None] | None) -> dict:
    """Init or resume, then step to the phase's end (or ``stop_after`` steps): log every step, checkpoint
    every ``train.checkpoint_every`` steps and at the end."""
    tp = section(params, "train")
    run = init_or_resume(params, phase, device, world)
    progress = run.progress
    writer = open_tensorboard(phase.out_dir.parent / f"tb_{phase.name}", tp) if world.is_main else None
    average_last = int(tp.get("average_last", 0) or 0) if phase.name == "phase2" else 0
    snapshots: list[dict] = []  # CPU copies of the weights at the anneal's last checkpoints
    every = int(tp.get("checkpoint_every", 0)) or phase.end_step
    run.model.train()
    if progress.step < phase.end_step:
        log.info("%s: steps %d..%d, %d parameters, device %s", phase.name, progress.step, phase.end_step,
                 count_parameters(run.model), device)
    taken = 0
    while progress.step < phase.end_step and (stop_after is None or taken < stop_after):
        stats = train_step(run, lr_at(progress.step, tp), int(tp["grad_accum"]), float(tp["grad_clip"]),
                           read_grad_norm=tp.get("tensorboard", True))
        taken += 1
        progress.advance(stats)
        log_step(writer, phase.name, stats, phase.end_step, main=world.is_main)
        if on_step is not None:
            on_step(stats)
        if progress.step % every == 0 or progress.step == phase.end_step:
            if average_last:
                snapshots = average_checkpoints(run.model, snapshots, average_last,
                                                final=progress.step == phase.end_step)
            save(run)
    if writer is not None:
        writer.close()
    return finish(run)


# ---------------------------------------------------------------- init or resume

def init_or_resume(params: dict, phase: Phase, device: torch.device, world: distributed.World) -> Run:
    """The phase's run: resumed from its own checkpoint when that one matches the params and data; else the
    anneal from the finished phase-1 checkpoint; else phase 1 from scratch (seeded). Every rank builds or
    loads the same full model; the parallel wrapper then replicates (DDP) or shards (FSDP2) it."""
    tp = section(params, "train")
    seed = int(params.get("seed", 0))
    hf_logging.disable_progress_bar()  # per-checkpoint progress bars drown the training log
    dataset, vocab = open_pack(phase, tp)
    state = own_checkpoint(phase, world)
    if state is not None:  # resume this phase
        model, source, progress = load_model(phase.out_dir, device), state, Progress.of(state)
        log.info("%s: resuming at step %d", phase.name, state["step"])
    elif phase.name == "phase2":  # the anneal continues the phase-1 run
        phase1, source = finished_phase1(params, phase, world)
        model = load_model(phase1.out_dir, device)
        progress = Progress(phase.start_step, tokens_before=source["tokens_before"] + source["tokens"])
    else:  # phase 1 from scratch
        torch.manual_seed(seed)
        config = build_config(tp["preset"], vocab, eos_id=dataset.eos_id, pad_id=dataset.pad_id,
                              overrides=tp.get("model"))
        model, source, progress = build_model(config).to(device), None, Progress(0)
    mode, synced = distributed.parallelize(model, tp.get("parallel", "auto"), device, world)
    optimizer = make_optimizer(model, tp, device)
    if source is not None:  # the optimizer and the RNG continue from that checkpoint
        distributed.load_optimizer_state(model, optimizer, source["optimizer"], mode)
        set_rng_state(source["rng"], device)
    attn = attention.choose(tp.get("attention", "auto"), device)
    attention.set_implementation(model, attn)
    stream = BatchStream(dataset, int(tp["micro_batch"]), seed=seed + (0 if phase.name == "phase1" else 1),
                         position=state["position"] if state is not None else 0,
                         dense_mask=attn != "flex_attention", rank=world.rank, world=world.size,
                         cross_document=bool(tp.get("cross_document_attention", False)))
    # torch.compile wraps the forward only; `model` stays the module that is saved and averaged.
    forward = torch.compile(synced) if tp.get("compile") else synced
    return Run(phase, model, synced, forward, mode, optimizer, stream, attn, device, world, progress,
               saved_step=progress.step if state is not None else None)


def open_pack(phase: Phase, tp: dict) -> tuple[PackedDataset, int]:
    """The phase's packed data and the tokenizer's vocab size, checked against the train params."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(resolve(TOKENIZER_DIR))
    dataset = PackedDataset(phase.data_dir)
    seq_len = int(tp["seq_len"])
    if dataset.seq_len != seq_len:
        raise ValueError(f"train.seq_len={seq_len} but {phase.data_dir} is packed at seq_len={dataset.seq_len}")
    vocab = len(tokenizer)
    if int(dataset.index.get("vocab_size", vocab)) > vocab:
        raise ValueError(f"{phase.data_dir} uses vocab_size {dataset.index['vocab_size']} > tokenizer's {vocab}")
    return dataset, vocab


def own_checkpoint(phase: Phase, world: distributed.World) -> dict | None:
    """The trainer state of the phase's own checkpoint to resume; None when there is none or it does not match."""
    if world.is_main:
        recover(phase.out_dir)
    distributed.barrier(world)
    state = load_state(phase.out_dir)
    if state is not None and not resumable(state, phase):
        log.warning("%s: existing checkpoint does not match the current params/data; starting over", phase.out_dir)
        return None
    return state


def finished_phase1(params: dict, anneal: Phase, world: distributed.World) -> tuple[Phase, dict]:
    """Phase 1's plan and the trainer state of its finished checkpoint, which the anneal starts from."""
    phase1 = plan_phase(params, "phase1", world.size)
    state = load_state(phase1.out_dir)
    if state is None or state.get("fingerprint") != phase1.fingerprint or state["step"] != anneal.start_step:
        raise RuntimeError(f"{phase1.out_dir} is not a finished phase-1 checkpoint for these params "
                           f"(need step {anneal.start_step}); run the train stage first")
    return phase1, state


# ---------------------------------------------------------------- one optimizer step

def train_step(run: Run, lr: float, grad_accum: int, grad_clip: float, read_grad_norm: bool) -> StepStats:
    """One optimizer step over ``grad_accum`` micro-batches per rank, with one host sync (the loss).

    The loss is the mean over every target of the whole (all-rank) step."""
    t0 = time.perf_counter()
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    micro = [run.stream.next() for _ in range(grad_accum)]
    n_targets, tokens = (int(v) for v in distributed.all_sum(
        [sum(b.n_targets for b in micro), sum(b.n_tokens for b in micro)], run.world, run.device).tolist())
    n_targets = max(1, n_targets)
    step_nats = torch.zeros((), device=run.device)
    for i, batch in enumerate(micro):
        step_nats += micro_step(run, batch, n_targets, last=i == len(micro) - 1)  # summed on the device
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    # Read after the step, not between clip and step (a second host sync); on every rank,
    # since reading a sharded (FSDP2) norm may be collective.
    norm = distributed.as_float(grad_norm) if read_grad_norm else None
    # waits for the step to finish, so the timing is real
    loss = float(distributed.all_sum(step_nats, run.world, run.device)[0]) / n_targets
    return StepStats(run.progress.step + 1, loss, lr, tokens, norm, time.perf_counter() - t0)


def micro_step(run: Run, batch: Batch, n_targets: int, last: bool) -> torch.Tensor:
    """Forward and backward of one micro-batch (gradients synced on the last one); its summed loss in nats."""
    batch = batch.to(run.device)
    mask = (attention.document_block_mask(batch.segment_ids) if run.attn == "flex_attention"
            else batch.attention_mask)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if run.device.type == "cuda"
                else contextlib.nullcontext())
    with distributed.grad_sync(run.synced, run.mode, last=last):
        with autocast:
            logits = run.forward(input_ids=batch.input_ids, attention_mask=mask,
                                 position_ids=batch.position_ids).logits
        nats = F.cross_entropy(logits.float().flatten(0, 1), batch.labels.flatten(),
                               ignore_index=IGNORE, reduction="sum")
        # x world: DDP/FSDP average the ranks' gradients, and the sum over ranks is what we want.
        (nats * (run.world.size / n_targets)).backward()
    return nats.detach()


# ---------------------------------------------------------------- checkpointing

def save(run: Run) -> None:
    """Checkpoint models/<phase>: weights, optimizer, RNG and progress, swapped in atomically.

    Gathering full states is collective under FSDP2 (every rank); writing is rank 0's alone."""
    weights = distributed.full_model_state(run.model) if run.mode == "fsdp" else None
    optim = distributed.optimizer_state(run.model, run.optimizer, run.mode)
    if run.world.is_main:
        p = run.progress
        state = {"format": STATE_FORMAT, "phase": run.phase.name, "fingerprint": run.phase.fingerprint,
                 "step": p.step, "position": run.stream.position, "tokens": p.tokens,
                 "tokens_before": p.tokens_before, "elapsed_s": p.elapsed_s, "history": p.history,
                 "optimizer": optim, "rng": rng_state(run.device), "seq_len": run.stream.dataset.seq_len,
                 "world_size": run.world.size}
        model = run.model if weights is None else distributed.plain_copy(run.model, weights)
        save_checkpoint(run.phase.out_dir, model, resolve(TOKENIZER_DIR), state)
    distributed.barrier(run.world)
    run.saved_step = run.progress.step


def finish(run: Run) -> dict:
    """The phase's result. Stopped early on purpose: leave a checkpoint of this step to resume from.
    Finished: rank 0 writes metrics/train_<phase>.{json,csv}."""
    p, phase = run.progress, run.phase
    if p.step < phase.end_step:
        if run.saved_step != p.step:
            save(run)
        return {"phase": phase.name, "step": p.step, "finished": False}
    if not run.world.is_main:
        return {"phase": phase.name, "step": p.step, "finished": True, "rank": run.world.rank}
    return write_metrics(phase.name, phase, p.tokens, p.elapsed_s, p.history, run.model, run.world.size)
