"""What a training phase reports: the log line and tensorboard scalars of each step, and at the end
``metrics/details/train_<phase>.json`` (summary; ``metrics/train_<phase>.json`` its headline) and ``metrics/train_<phase>.csv`` (the loss curve)."""
from __future__ import annotations

import logging
from pathlib import Path

from pipelines.config import resolve
from pipelines.core.atomic import write_bytes_atomic, write_json_atomic
from pipelines.core.headline import details_path, write_headline
from pipelines.train.model import count_parameters
from pipelines.train.plan import Phase

log = logging.getLogger(__name__)
CURVE_COLUMNS = ("step", "loss", "lr", "tokens")


def open_tensorboard(log_dir: Path, tp: dict):
    """A SummaryWriter into models/tb_<phase> (outside the checkpoint dir, which is swapped atomically)."""
    if not tp.get("tensorboard", True):
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir))


PROGRESS = "reports/progress/train_{name}.json"  # where a watcher (make demo) reads how far a phase is


def log_step(writer, name: str, step, end_step: int, main: bool = True) -> None:
    """Tensorboard scalars of one step (``step`` is a loop.StepStats), and a log line and the progress file
    (``PROGRESS``, main process only) every 10 steps and at the end."""
    if writer is not None:
        writer.add_scalar("train/loss", step.loss, step.step)
        writer.add_scalar("train/lr", step.lr, step.step)
        writer.add_scalar("train/grad_norm", step.grad_norm, step.step)
        writer.add_scalar("train/tokens_per_s", step.tokens / step.seconds, step.step)
    if step.step % 10 == 0 or step.step == end_step:
        log.info("%s step %d loss %.4f lr %.2e", name, step.step, step.loss, step.lr)
        if main:
            write_json_atomic(resolve(PROGRESS.format(name=name)), {
                "phase": name, "step": step.step, "end_step": end_step, "loss": round(step.loss, 4), "lr": step.lr,
                "tokens_per_s": round(step.tokens / step.seconds, 1) if step.seconds else None})


def write_metrics(name: str, phase: Phase, tokens: int, elapsed: float, history: list[dict], model,
                  world_size: int = 1, extra: dict | None = None) -> dict:
    """metrics/details/train_<name>.json (summary of the finished phase), metrics/train_<name>.json (its headline:
    loss and tokens) and metrics/train_<name>.csv (one row per step, the loss plot)."""
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
        **(extra or {}),
    }
    write_json_atomic(details_path(f"train_{name}"), metrics)
    write_headline(f"train_{name}", {"loss": metrics["loss_final_avg10"], "tokens": tokens})
    lines = [",".join(CURVE_COLUMNS)] + [",".join(repr(h[c]) for c in CURVE_COLUMNS) for h in history]
    write_bytes_atomic(resolve(f"metrics/train_{name}.csv"), ("\n".join(lines) + "\n").encode())
    return metrics
