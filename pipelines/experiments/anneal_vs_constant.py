"""Evidence: does the anneal help? Same token budget, two continuations of one phase-1 run.

(a) phase 1 + anneal: the `train` and `anneal` stages as configured (LR decay on the phase-2 pack);
(b) constant: phase 1 continued at the stable LR on the phase-1 pack for the same number of steps.
(b) is phase 1 re-run with ``phase1_steps`` extended by the anneal's steps: phase1_steps is not
part of the phase-1 fingerprint (a constant LR makes a longer phase 1 the same run continued),
so it resumes from the phase-1 checkpoint at exactly the step the anneal started from.
Both are scored with the evaluate stage's held-out bits-per-byte per source.

Run it in a workspace with packed data (it overwrites models/ and metrics/train_*):
``python -m pipelines.experiments anneal_vs_constant [out.json]`` (default out:
metrics/anneal_vs_constant.json). Not part of the test suite (minutes on CPU).
"""
from __future__ import annotations

import copy
import json
import logging
import resource
import time
from pathlib import Path

from pipelines.config import load_params, resolve, section
from pipelines.core.atomic import write_json_atomic
from pipelines.evaluate.stage import evaluate_checkpoint, heldout_documents
from pipelines.train.loop import pick_device, train_phase
from pipelines.train.schedule import anneal_steps

log = logging.getLogger(__name__)


def compare(params: dict) -> dict:
    tp, ep = section(params, "train"), section(params, "evaluate")
    p1 = int(tp["phase1_steps"])
    n_anneal = anneal_steps(p1, float(tp["anneal_fraction"]))
    device = pick_device(ep.get("device", "auto"))
    docs = heldout_documents(int(ep["max_docs_per_source"]))
    t0 = time.time()
    train_phase(params, "phase1")
    train_phase(params, "phase2")
    annealed = evaluate_checkpoint(resolve("models/phase2"), docs, ep, device)
    constant_params = copy.deepcopy(params)
    constant_params["train"]["phase1_steps"] = p1 + n_anneal
    train_phase(constant_params, "phase1")  # resumes models/phase1 at step p1, constant LR, phase-1 pack
    constant = evaluate_checkpoint(resolve("models/phase1"), docs, ep, device)
    assert annealed["step"] == constant["step"] == p1 + n_anneal, (annealed["step"], constant["step"])
    return {
        "phase1_steps": p1, "extra_steps": n_anneal,
        "tokens_per_step": int(tp["micro_batch"]) * int(tp["grad_accum"]) * int(tp["seq_len"]),
        "anneal": {"bpb": annealed["bpb"], "bpb_mean": annealed["bpb_mean"], "bpb_all": annealed["bpb_all"]},
        "constant": {"bpb": constant["bpb"], "bpb_mean": constant["bpb_mean"], "bpb_all": constant["bpb_all"]},
        "delta_bpb": {s: annealed["bpb"][s] - constant["bpb"][s] for s in annealed["bpb"]},
        "docs": annealed["docs"], "wall_s": round(time.time() - t0, 1),
    }


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    params = load_params()
    result = compare(params)
    tp = params["train"]
    row = {
        "name": "anneal_vs_constant",
        "metric": "held-out bits-per-byte, mean over sources (lower is better)",
        "ours": round(result["anneal"]["bpb_mean"], 5),
        "anchor": round(result["constant"]["bpb_mean"], 5),
        "anchor_name": "phase 1 continued at the stable LR on the phase-1 pack, same steps",
        "ratio": round(result["constant"]["bpb_mean"] / result["anneal"]["bpb_mean"], 4),
        "input": f"demo data (dvc repro pack), preset {tp['preset']}, {result['phase1_steps']} phase-1 steps "
                 f"+ {result['extra_steps']} steps x {result['tokens_per_step']} tokens",
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        **result,
    }
    out = Path(argv[0]) if argv else resolve("metrics/anneal_vs_constant.json")
    write_json_atomic(out, row)
    print(json.dumps(row, indent=1))
    return 0
