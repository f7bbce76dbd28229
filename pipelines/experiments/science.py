"""Science you can trust: the anneal ablation over seeds, with 95% intervals, -> reports/science.{md,json,png}.

Every arm of a seed branches from that seed's phase-1 checkpoint and ends on the same total step
(same tokens), so arms differ only in what follows the branch point:

  constant          phase 1 continued at the stable LR on the phase-1 pack
  decay_phase1      LR decay on the phase-1 pack (the schedule alone)
  anneal            LR decay on the phase-2 blend (the product's anneal: upsampled sources + replay)
  anneal_no_replay  LR decay on the phase-2 blend built without replay

and the product's arm is swept over decay length (10/20/30% of the steps, default shape) and shape
(linear, cosine, 1-sqrt, default length). Each finished (seed, arm) is scored with the evaluate stage's bits-per-byte on
every held-out document and cached, so an interrupted run resumes where it stopped.

The cache is per arm: a run is reused while the data it trained on is unchanged. Arms on the phase-1
pack (constant, decay_phase1) and the phase-1 checkpoints depend on the phase-1 pack, the tokenizer and
the mix params other than ``mix.phase2``; arms on a phase-2 pack also on that pack and ``mix.phase2``.
A change to the phase-2 blend therefore keeps the phase-1 checkpoints and the phase-1 arms, and moves
the runs of the phase-2 arms to ``superseded`` (listed in the report, not mixed into its numbers).

``python -m pipelines.experiments science [--seeds 5] [--sweep-seeds 5] [--steps 400] [--arms a,b] [--rerun a]
[--report-only]`` in a workspace with packed data (``dvc repro pack``). Not part of the test suite: about an
hour on 1 CPU thread for every arm from scratch.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import hashlib
import json
import logging
import resource
import shutil
import time
from pathlib import Path

import torch

from pipelines import stages
from pipelines.config import load_params, resolve, section, workspace
from pipelines.core.atomic import write_json_atomic
from pipelines.evaluate.stage import evaluate_checkpoint, heldout_documents, load_checkpoint
from pipelines.experiments import _report
from pipelines.experiments._branches import Arm, phase1_steps, run_arm, train_phase1_checkpoints
from pipelines.experiments._heldout_error import heldout_standard_errors
from pipelines.experiments._no_replay import build_no_replay_pack
from pipelines.train.schedule import DECAY_SHAPES

log = logging.getLogger(__name__)
SCRATCH = "models/science"  # checkpoints and branch workspaces; runs.json caches every scored arm
FRACTIONS = (0.1, 0.2, 0.3)


def main_arms(tp: dict) -> list[Arm]:
    """The four arms at the product's decay length and shape."""
    f, shape = float(tp["anneal_fraction"]), tp.get("decay_shape", "linear")
    return [Arm("constant", "phase1", f, shape, constant=True), Arm("decay_phase1", "phase1", f, shape),
            Arm("anneal", "phase2", f, shape), Arm("anneal_no_replay", "phase2_no_replay", f, shape)]


def sweep_arms(tp: dict) -> list[Arm]:
    """The product's arm with one knob moved at a time: every decay length at the default shape, every
    shape at the default length (the default cell is the main `anneal` arm). One factor at a time, not
    the full grid, to fit the CPU budget."""
    f0, s0 = float(tp["anneal_fraction"]), tp.get("decay_shape", "linear")
    cells = [(f, s0) for f in FRACTIONS if f != f0] + [(f0, s) for s in DECAY_SHAPES if s != s0]
    return [Arm(sweep_name(f, s), "phase2", f, s) for f, s in cells]


def sweep_name(fraction: float, shape: str) -> str:
    return f"anneal_{shape}_{round(fraction * 100)}"


def experiment_params(params: dict) -> dict:
    """The product's params with the trainer made quiet and single-threaded (same model, data and LR)."""
    p = copy.deepcopy(params)
    p["train"].update(threads=1, tensorboard=False, checkpoint_every=0, device="cpu", nproc=1)
    return p


def fingerprint(params: dict, total_steps: int, phase2: bool = True) -> str:
    """What a cached result depends on: the train/evaluate params, the step budget and the data. With
    ``phase2`` False, only what the phase-1 checkpoints and the arms on the phase-1 pack read: the phase-1
    pack, the tokenizer and the mix params but ``mix.phase2`` (the held-out split is in them)."""
    pack = stages.output_dir("pack")
    data = [(pack / d / "index.json").read_bytes() for d in (("phase1", "phase2") if phase2 else ("phase1",))]
    data.append((pack / "tokenizer" / "tokenizer.json").read_bytes())
    # The default decay length and shape only say which arms are "main"; each run records its own.
    train = {k: v for k, v in params["train"].items() if k not in ("anneal_fraction", "decay_shape")}
    mix = params["mix"] if phase2 else {k: v for k, v in params["mix"].items() if k != "phase2"}
    blob = json.dumps([train, params["evaluate"], mix, total_steps], sort_keys=True).encode()
    return hashlib.sha256(blob + b"".join(data)).hexdigest()[:16]


def run_fingerprint(anneal_data: str, keys: dict[bool, str]) -> str:
    """The fingerprint a run on ``anneal_data`` is valid under (``keys``: phase2 -> fingerprint)."""
    return keys[anneal_data != "phase1"]


def run_seed(seed: int, arms: list[Arm], params: dict, total_steps: int, packs: dict[str, Path], docs: dict,
             ep: dict, cache: dict, save, branch_steps: set[int] = frozenset(), keys: dict[bool, str] | None = None,
             measured_at: str | None = None, previous: dict | None = None) -> None:
    """Train and score the arms of one seed not yet in ``cache`` (key "seed/arm"). Phase 1 is also
    stopped at ``branch_steps`` (later calls' branch points), so it runs once per seed. Each row records the
    fingerprint of the data it trained on (``keys``), the session (``measured_at``) and, when it replaces a run
    of ``previous`` (``--rerun``), that run's mean bpb."""
    todo = [a for a in arms if f"{seed}/{a.name}" not in cache]
    if not todo:
        return
    p = copy.deepcopy(params)
    p["seed"] = seed
    root = resolve(SCRATCH) / f"seed{seed}"
    steps = sorted({phase1_steps(total_steps, a.decay_fraction) for a in todo} | set(branch_steps))
    t0 = time.time()
    checkpoints = train_phase1_checkpoints(p, root, packs["phase1"].parent, steps)
    phase1_s = time.time() - t0
    device = torch.device("cpu")
    for arm in todo:
        t0 = time.time()
        ckpt = checkpoints[phase1_steps(total_steps, arm.decay_fraction)]
        model_dir = run_arm(arm, p, total_steps, root, packs["phase1"].parent, packs[arm.anneal_data], ckpt)
        train_s = time.time() - t0
        loaded = load_checkpoint(model_dir, device)
        result = evaluate_checkpoint(model_dir, docs, ep, device, loaded=loaded)
        row = {"seed": seed, "arm": arm.name, "fingerprint": run_fingerprint(arm.anneal_data, keys) if keys else None,
               "measured_at": measured_at, "decay_fraction": arm.decay_fraction, "decay_shape": arm.decay_shape,
               "anneal_data": arm.anneal_data, "constant": arm.constant, "bpb": result["bpb"],
               "bpb_mean": result["bpb_mean"], "bpb_all": result["bpb_all"], "step": result["step"],
               "train_s": round(train_s, 1), "phase1_s": round(phase1_s, 1), "eval_s": round(time.time() - t0 - train_s, 1),
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
        old = (previous or {}).get(f"{seed}/{arm.name}")
        if old is not None:
            row["previous"] = {"bpb_mean": old["bpb_mean"], "bpb": old["bpb"], "measured_at": old.get("measured_at")}
        if arm.name == "anneal":  # the held-out set's own precision, once per seed on the product's model
            row["heldout_error"] = heldout_standard_errors(*loaded, docs, ep, result["seq_len"], device)
        assert result["step"] == total_steps, (arm, result["step"])
        cache[f"{seed}/{arm.name}"] = row
        save()
        shutil.rmtree(root / arm.name)  # the score is kept; the branch's weights are not needed again
        log.info("seed %d %s: bpb_mean %.4f (%.0fs train, %.0fs eval)", seed, arm.name, row["bpb_mean"],
                 row["train_s"], row["eval_s"])


def token_share(phase_dir: Path) -> dict[str, float]:
    """Each source's share of the tokens of a packed phase (the pack stage's pack.json)."""
    pack = json.loads((phase_dir.parent / "pack.json").read_text())
    return pack["phases"][phase_dir.name]["token_share"]


def load_cache(path: Path, keys: dict[bool, str]) -> tuple[dict, dict, bool]:
    """(runs still valid, superseded runs, fresh). Fresh: the phase-1 fingerprint changed (or no cache), so
    neither the phase-1 checkpoints nor any run can be reused. Otherwise a run is valid while the data of
    its arm is unchanged; the others move to ``superseded`` (kept for the record, never reported as current)."""
    cached = json.loads(path.read_text()) if path.exists() else {}
    if cached.get("phase1_fingerprint") != keys[False]:
        return {}, {}, True
    runs, superseded = {}, dict(cached.get("superseded", {}))
    for k, row in cached["runs"].items():
        if row.get("fingerprint") == run_fingerprint(row["anneal_data"], keys):
            runs[k] = row
        else:
            superseded[k] = row
    return runs, superseded, False


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.experiments science", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds of the four main arms (1..N)")
    parser.add_argument("--sweep-seeds", type=int, default=5, help="seeds of the decay length x shape sweep")
    parser.add_argument("--steps", type=int, default=400, help="total optimizer steps of every arm")
    parser.add_argument("--arms", default="", help="comma-separated main arms to run (default: all four)")
    parser.add_argument("--rerun", default="", help="comma-separated arms to measure again although cached "
                        "(the report says whether the new runs reproduce the cached ones)")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the cached runs")
    parser.add_argument("--out", default="reports/science", help="report path without extension")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(1)  # evaluation too: the box is shared (train_phase sets the trainer's own)

    params = experiment_params(load_params())
    ep = {**section(params, "evaluate"), "max_docs_per_source": 0, "device": "cpu"}  # every held-out document
    params["evaluate"] = ep
    scratch = resolve(SCRATCH)
    cache_path = scratch / "runs.json"
    keys = {False: fingerprint(params, args.steps, phase2=False), True: fingerprint(params, args.steps)}
    cached = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    cache, superseded, fresh = load_cache(cache_path, keys)
    # Which arms are main is fixed by the defaults the runs were made under (a default changed after
    # the ablation must not relabel them).
    main_config = {k: params["train"][k] for k in ("anneal_fraction", "decay_shape")}
    main_config = main_config if fresh else cached.get("main_config", main_config)
    if not args.report_only and main_config != {k: params["train"][k] for k in main_config}:
        raise SystemExit(f"{cache_path} was run with the defaults {main_config}; params.yaml now differs: "
                         "--report-only, or delete it to start over")
    save = lambda: write_json_atomic(cache_path, {"phase1_fingerprint": keys[False], "main_config": main_config,  # noqa: E731
                                                  "runs": cache, "superseded": superseded})

    tp = {**section(params, "train"), **main_config}
    arms, sweep = main_arms(tp), sweep_arms(tp)
    wanted = {a for a in args.arms.split(",") if a}
    unknown = wanted - {a.name for a in arms}
    if unknown:
        raise SystemExit(f"--arms: unknown arm(s) {sorted(unknown)}; the main arms are {[a.name for a in arms]}")
    arms = [a for a in arms if not wanted or a.name in wanted]
    previous = {}
    for name in (a for a in args.rerun.split(",") if a):
        for k in [k for k, r in cache.items() if r["arm"] == name]:
            previous[k] = cache.pop(k)
    t0 = time.time()
    measured_at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
    pack = stages.output_dir("pack")
    packs = {"phase1": pack / "phase1", "phase2": pack / "phase2",
             "phase2_no_replay": build_no_replay_pack(params, workspace(), scratch / "no_replay")}
    if not args.report_only:
        docs = heldout_documents(0)
        if fresh:  # phase-1 checkpoints of other params must not be branched from
            for old in scratch.glob("seed*"):
                shutil.rmtree(old)
        save()
        # The main arms of every seed first, then the sweep: an interrupted run still has the ablation.
        sweep_steps = {phase1_steps(args.steps, a.decay_fraction) for a in sweep}
        for seed in range(1, args.seeds + 1):
            run_seed(seed, arms, params, args.steps, packs, docs, ep, cache, save,
                     branch_steps=sweep_steps if seed <= args.sweep_seeds else set(), keys=keys,
                     measured_at=measured_at, previous=previous)
        for seed in range(1, args.sweep_seeds + 1):
            run_seed(seed, sweep, params, args.steps, packs, docs, ep, cache, save, keys=keys, measured_at=measured_at)
    summary = _report.summarize(list(cache.values()), params, main_config, args.steps,
                                {name: token_share(path) for name, path in packs.items()},
                                superseded=list(superseded.values()))
    summary["session_wall_s"] = round(time.time() - t0, 1)
    out = resolve(args.out)
    _report.write(summary, out)
    rss = [r["peak_rss_mb"] for r in cache.values() if "peak_rss_mb" in r]  # of the runs, not of a --report-only
    row = _report.bench_row(summary, max(rss) if rss else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if row:  # bench/results/anneal_vs_constant.json is a copy of this file
        write_json_atomic(resolve("metrics/anneal_vs_constant.json"), row)
    print(json.dumps({k: summary[k] for k in ("claims", "arms")}, indent=1, default=str)[:4000])
    return 0
