"""A candidate setting against the product's default, each over the product's whole training run.

Per seed and arm: phase 1, then the anneal on the phase-2 pack (the same steps and data), in a
scratch workspace that links the workspace's packed data; then the evaluate stage's bits per byte on
every held-out document. A seed fixes the init and the data order, so the two arms of a seed are a
pair. The claim "the candidate is better" is shown only when the two arms' 95% intervals over seeds
do not overlap (pipelines/experiments/_ci.py); the paired delta is reported beside it, per source too.
"""
from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from pipelines import stages
from pipelines.config import load_params, resolve, section
from pipelines.evaluate.stage import evaluate_checkpoint, heldout_documents
from pipelines.experiments._branches import in_workspace, make_workspace, phase1_steps
from pipelines.experiments._ci import lower_is_shown, t_interval
from pipelines.train.loop import train_phase


def setup() -> tuple[dict, dict, dict]:
    """(params of the experiment, evaluate params, held-out documents by source): one CPU thread."""
    from pipelines.experiments.science import experiment_params

    torch.set_num_threads(1)
    params = experiment_params(load_params())
    ep = {**section(params, "evaluate"), "max_docs_per_source": 0, "device": "cpu"}
    params["evaluate"] = ep
    return params, ep, heldout_documents(0)


def seeded(params: dict, seed: int, total_steps: int) -> dict:
    p = copy.deepcopy(params)
    p["seed"] = seed
    p["train"]["phase1_steps"] = phase1_steps(total_steps, float(p["train"]["anneal_fraction"]))
    return p


def train_and_score(p: dict, root: Path, docs: dict, ep: dict, inspect: Callable[[Path], dict] | None = None) -> dict:
    """Train both phases with params ``p`` in the scratch workspace ``root`` (deleted after), score the result;
    ``inspect(root)`` adds what the arm wants to keep from the workspace before it goes."""
    pack = stages.output_dir("pack")
    t0 = time.time()
    with in_workspace(make_workspace(root, p, pack, pack / "phase2")):
        train_phase(p, "phase1")
        train_phase(p, "phase2")
    train_s = time.time() - t0
    result = evaluate_checkpoint(root / "models" / "phase2", docs, ep, torch.device("cpu"))
    extra = inspect(root) if inspect is not None else {}
    shutil.rmtree(root)
    return {"seed": p["seed"], "bpb_mean": result["bpb_mean"], "bpb": result["bpb"], "step": result["step"],
            "train_s": round(train_s, 1), "eval_s": round(time.time() - t0 - train_s, 1), **extra}


def summarize(rows: list[dict], baseline: str, candidate: str) -> dict:
    """Per arm the mean ± CI (overall and per source), the paired deltas (candidate - baseline) and the verdict."""
    by_arm = {a: sorted((r for r in rows if r["arm"] == a), key=lambda r: r["seed"]) for a in (baseline, candidate)}
    if [r["seed"] for r in by_arm[baseline]] != [r["seed"] for r in by_arm[candidate]]:
        raise ValueError("the two arms must have run the same seeds")
    pairs = list(zip(by_arm[baseline], by_arm[candidate]))
    sources = sorted(by_arm[baseline][0]["bpb"])
    arms = {a: {"bpb_mean": t_interval([r["bpb_mean"] for r in rs]).as_dict(),
                "bpb": {s: t_interval([r["bpb"][s] for r in rs]).as_dict() for s in sources}, "runs": rs}
            for a, rs in by_arm.items()}
    cand, base = (t_interval([r["bpb_mean"] for r in by_arm[a]]) for a in (candidate, baseline))
    return {"baseline": baseline, "candidate": candidate, "arms": arms,
            "paired_delta": t_interval([c["bpb_mean"] - b["bpb_mean"] for b, c in pairs]).as_dict(),
            "paired_delta_by_source": {s: t_interval([c["bpb"][s] - b["bpb"][s] for b, c in pairs]).as_dict()
                                       for s in sources},
            "verdict": lower_is_shown(cand, base),
            "wall_s": round(sum(r["train_s"] + r["eval_s"] for r in rows), 1)}


def fmt(iv: dict) -> str:
    return f"{iv['mean']:.4f} ± {iv['half_width']:.4f}" if iv["half_width"] is not None else f"{iv['mean']:.4f}"


def table(summary: dict) -> list[str]:
    """Markdown rows: every source and the mean, both arms and the paired delta."""
    b, c = summary["baseline"], summary["candidate"]
    arms = summary["arms"]
    lines = [f"| source | {b} | {c} | paired {c} − {b} |", "|---|---|---|---|"]
    for s, d in summary["paired_delta_by_source"].items():
        lines.append(f"| {s} | {fmt(arms[b]['bpb'][s])} | {fmt(arms[c]['bpb'][s])} | {fmt(d)} |")
    lines.append(f"| **mean** | {fmt(arms[b]['bpb_mean'])} | {fmt(arms[c]['bpb_mean'])} | {fmt(summary['paired_delta'])} |")
    return lines
