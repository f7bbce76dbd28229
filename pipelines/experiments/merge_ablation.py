"""Data ablation by model merging: predict what adding a data slice to the anneal does, without training
on the mixture -> reports/merge_ablation.json and the "## Data ablation by model merging" section of
reports/science.md.

Na et al. 2024 (*Scalable Data Ablation Approximations for Language Models through Modular Training
and Merging*, arXiv:2410.15661): the perplexity of a model trained on a mixture is predicted by
averaging the weights of models trained on its parts, each continued from the same base. A part
trained once is reused by every mixture that contains it, so N candidate slices cost N + 1
continuations instead of N full retrains of the mixture.

Per seed, from the product's phase-1 checkpoint (the same steps as the product's run), each
continuation being the product's anneal (``train_phase(..., "phase2")`` on another pack):

  base      anneal on B, the phase-1 pack (replay only)                       -> theta_B
  part S    anneal on S alone: the phase-1 sequences of one source            -> theta_S
  real S    anneal on B + S, S's sequences repeated to ``share`` of the pack   -> the truth
  merged S  (1 - share) * theta_B + share * theta_S                           -> the prediction

all scored with the evaluate stage's bits per byte on every held-out document. The report: per slice
the real and merged mean bpb (and on the slice's own source), the rank agreement over slices
(Spearman), the mean absolute error, and whether the merge picks the real best slice.

Over seeds: each slice's real and merged bpb and each seed's agreement as mean ± 95% interval. A seed
is saved as it finishes, with the fingerprint of what it trained on (the phase-1 pack, tokenizer, train
and mix params, steps, share); a later run reuses the seeds whose fingerprint still matches.

``python -m pipelines.experiments merge_ablation [--seeds 3] [--steps 400] [--share 0.3]`` in a
workspace with packed data. Not part of the test suite: ~2 anneals and 2 evaluations per slice, about
13 min per seed on one CPU thread (7 slices).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from pipelines import stages
from pipelines.config import resolve
from pipelines.core.atomic import write_json_atomic
from pipelines.evaluate.stage import evaluate_checkpoint, load_checkpoint
from pipelines.experiments._branches import in_workspace, make_workspace, train_phase1_checkpoints
from pipelines.experiments._ci import t_interval
from pipelines.experiments._report import upsert_section
from pipelines.experiments._two_arms import fmt, seeded, setup
from pipelines.experiments.science import fingerprint
from pipelines.pack.format import PackedDataset, write_index, write_packed_shard
from pipelines.train.loop import train_phase
from pipelines.train.online_mixing import sequence_domains

log = logging.getLogger(__name__)
SCRATCH = "models/merge_ablation"
SECTION = "## Data ablation by model merging"
MIN_SEQUENCES = 8  # a source with fewer phase-1 sequences is not a candidate slice


def write_pack(out: Path, source: PackedDataset, rows: np.ndarray) -> Path:
    """A pack directory holding ``source``'s sequences ``rows`` (in that order; repeats allowed)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    seqs = [source[int(i)] for i in rows]
    tokens = np.stack([s.tokens for s in seqs])
    mask = np.stack([s.loss_mask for s in seqs]) if seqs and seqs[0].loss_mask is not None else None
    shard = write_packed_shard(out, 0, tokens, [s.doc_starts.tolist() for s in seqs], mask)
    n_real = sum(s.n_real for s in seqs)
    index = {**source.index, "n_seq": len(seqs), "tokens": n_real, "padding": tokens.size - n_real, "shards": [shard]}
    index.pop("lineage", None)
    write_index(out, index)
    return out


def slice_packs(root: Path, share: float) -> tuple[dict[str, Path], dict[str, Path], list[str]]:
    """(part packs by source, real-mixture packs by source, the sources): from the workspace's phase-1 pack."""
    phase1 = stages.output_dir("pack") / "phase1"
    data = PackedDataset(phase1)
    names, of_seq = sequence_domains(phase1, len(data))
    every = np.arange(len(data))
    parts, mixes, sources = {}, {}, []
    for k, name in enumerate(names):
        rows = np.flatnonzero(of_seq == k)
        if len(rows) < MIN_SEQUENCES:
            continue
        sources.append(name)
        parts[name] = write_pack(root / "packs" / f"part_{name}", data, rows)
        # B + S with S at `share` of the pack's sequences: S repeated (whole copies, then a seeded remainder)
        want = int(round(share / (1 - share) * len(every)))
        extra = np.concatenate([np.tile(rows, want // len(rows)),
                                np.random.default_rng([len(rows), k]).choice(rows, want % len(rows), replace=False)])
        mixes[name] = write_pack(root / "packs" / f"mix_{name}", data, np.concatenate([every, extra]))
    return parts, mixes, sources


def anneal(p: dict, root: Path, data: Path, checkpoint: Path) -> Path:
    """The product's anneal from ``checkpoint`` on the pack ``data``; the finished model's directory."""
    work = make_workspace(root, p, stages.output_dir("pack"), data, phase1_model=checkpoint)
    with in_workspace(work):
        train_phase(p, "phase2")
    return work / "models" / "phase2"


def merged_score(base: Path, part: Path, share: float, docs: dict, ep: dict) -> dict:
    """Evaluate (1 - share) * base + share * part, merged in memory (the base checkpoint's settings)."""
    model, tokenizer = load_checkpoint(base, torch.device("cpu"))
    other, _ = load_checkpoint(part, torch.device("cpu"))
    theirs = other.state_dict()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.mul_(1 - share).add_(theirs[name], alpha=share)
    return evaluate_checkpoint(base, docs, ep, torch.device("cpu"), loaded=(model, tokenizer))


def run_seed(seed: int, params: dict, steps: int, share: float, docs: dict, ep: dict) -> dict:
    p = seeded(params, seed, steps)
    root = resolve(SCRATCH) / f"seed{seed}"
    t0 = time.time()
    checkpoint = train_phase1_checkpoints(p, root, stages.output_dir("pack"),
                                          [int(p["train"]["phase1_steps"])])[int(p["train"]["phase1_steps"])]
    parts, mixes, sources = slice_packs(root, share)
    score = lambda model: evaluate_checkpoint(model, docs, ep, torch.device("cpu"))  # noqa: E731
    base = anneal(p, root / "base", stages.output_dir("pack") / "phase1", checkpoint)
    result = {"seed": seed, "base": score(base), "slices": {}}
    for s in sources:
        part = anneal(p, root / f"part_{s}", parts[s], checkpoint)
        real = anneal(p, root / f"real_{s}", mixes[s], checkpoint)
        result["slices"][s] = {"real": score(real), "merged": merged_score(base, part, share, docs, ep)}
        shutil.rmtree(root / f"real_{s}")
        shutil.rmtree(root / f"part_{s}")
        log.info("merge ablation seed %d %s: real %.4f merged %.4f", seed, s,
                 result["slices"][s]["real"]["bpb_mean"], result["slices"][s]["merged"]["bpb_mean"])
    result["seconds"] = round(time.time() - t0, 1)
    return result


def agreement(seed_result: dict) -> dict:
    """How well the merged models predict the real ones over the slices of one seed."""
    sl = seed_result["slices"]
    names = sorted(sl)
    real = np.array([sl[s]["real"]["bpb_mean"] for s in names])
    merged = np.array([sl[s]["merged"]["bpb_mean"] for s in names])
    own_real = np.array([sl[s]["real"]["bpb"].get(s, np.nan) for s in names])
    own_merged = np.array([sl[s]["merged"]["bpb"].get(s, np.nan) for s in names])
    ok = ~np.isnan(own_real)
    return {
        "slices": names,
        "spearman_mean_bpb": float(stats.spearmanr(real, merged).statistic) if len(names) > 2 else None,
        # two-sided p of no rank agreement (exact for few slices): one seed has no interval, this is its error bar
        "spearman_mean_bpb_p": float(stats.spearmanr(real, merged).pvalue) if len(names) > 2 else None,
        "spearman_own_source_bpb": float(stats.spearmanr(own_real[ok], own_merged[ok]).statistic) if ok.sum() > 2 else None,
        "mae_mean_bpb": float(np.abs(real - merged).mean()),
        "best_real": names[int(real.argmin())], "best_merged": names[int(merged.argmin())],
        # does adding the slice help over the base anneal, really and by the merge?
        "helps_real": {s: bool(r < seed_result["base"]["bpb_mean"]) for s, r in zip(names, real)},
        "helps_merged": {s: bool(m < seed_result["base"]["bpb_mean"]) for s, m in zip(names, merged)},
    }


def over_seeds(saved: dict) -> dict:
    """Per slice, the real and merged mean bpb over seeds; the agreement statistics over seeds (intervals)."""
    seeds = saved["seeds"]
    agree = [agreement(r) for r in seeds]
    names = agree[0]["slices"] if agree else []

    def iv(xs):  # None: nothing measured (e.g. fewer than 3 slices with their own held-out source)
        xs = [x for x in xs if x is not None]
        return t_interval(xs).as_dict() if xs else None

    return {"slices": {s: {**{k: iv([r["slices"][s][k]["bpb_mean"] for r in seeds]) for k in ("real", "merged")},
                           **{f"{k}_own": iv([r["slices"][s][k]["bpb"].get(s) for r in seeds]) for k in ("real", "merged")}}
                       for s in names},
            "base": iv([r["base"]["bpb_mean"] for r in seeds]),
            "spearman_mean_bpb": iv([a["spearman_mean_bpb"] for a in agree]),
            "spearman_own_source_bpb": iv([a["spearman_own_source_bpb"] for a in agree]),
            "mae_mean_bpb": iv([a["mae_mean_bpb"] for a in agree]),
            "best_agrees": sum(a["best_real"] == a["best_merged"] for a in agree), "seeds": len(seeds),
            "minutes": round(sum(r["seconds"] for r in seeds) / 60, 1)}


def _fmt(iv: dict | None) -> str:
    return "—" if iv is None else fmt(iv)


def markdown(saved: dict) -> str:
    o = over_seeds(saved)
    lines = [SECTION, "",
             "Generated by `python -m pipelines.experiments merge_ablation` (pipelines/experiments/merge_ablation.py; "
             "numbers in reports/merge_ablation.json).", "",
             "**Paper's claim** (Na et al. 2024, arXiv:2410.15661): the perplexity of a model trained on a data mixture "
             "is predicted by averaging the weights of models trained on its parts from the same base, with high rank "
             "correlation to real retrains, at a fraction of the cost (each part is trained once and reused).", "",
             f"**Setup**: from the product's phase-1 checkpoint, {saved['steps']} steps in all, preset `tiny`, 1 CPU "
             f"thread; a candidate slice = the phase-1 sequences of one source; real = the product's anneal on the "
             f"phase-1 pack plus the slice at {saved['share']:.0%} of the sequences; merged = "
             f"{1 - saved['share']:.1f} × (anneal on the phase-1 pack) + {saved['share']:.1f} × (anneal on the slice "
             f"alone). Seeds: {[r['seed'] for r in saved['seeds']]} (a seed sets the phase-1 init and data order); "
             f"{o['minutes']} min in all.", "",
             "Bits per byte, mean ± 95% interval over seeds: the mean over held-out sources, and the slice's own "
             f"source (base anneal, no slice added: {_fmt(o['base'])}):", "",
             "| slice | real | merged | real: the slice's own source | merged: own source |", "|---|---|---|---|---|",
             *[f"| {s} | {_fmt(x['real'])} | {_fmt(x['merged'])} | {_fmt(x['real_own'])} | {_fmt(x['merged_own'])} |"
               for s, x in o["slices"].items()], "",
             "Per seed:", ""]
    for r in saved["seeds"]:
        a = agreement(r)
        sp, so, pv = a["spearman_mean_bpb"], a["spearman_own_source_bpb"], a["spearman_mean_bpb_p"]
        lines.append(f"- seed {r['seed']} ({r['seconds'] / 60:.1f} min): Spearman over {len(a['slices'])} slices, "
                     f"mean bpb {'—' if sp is None else f'{sp:.2f}'} (p = {'—' if pv is None else f'{pv:.3f}'}), the "
                     f"slice's own source {'—' if so is None else f'{so:.2f}'}; mean absolute error "
                     f"{a['mae_mean_bpb']:.4f} bpb; best slice real `{a['best_real']}`, merged `{a['best_merged']}`; "
                     f"slices that help over the base anneal: real {sorted(k for k, v in a['helps_real'].items() if v)}, "
                     f"merged {sorted(k for k, v in a['helps_merged'].items() if v)}.")
    sp = o["spearman_mean_bpb"]
    lines += ["", f"**Over {o['seeds']} seeds**: rank agreement (Spearman, mean bpb) {_fmt(sp)}; on the slice's own "
              f"source {_fmt(o['spearman_own_source_bpb'])}; mean absolute error {_fmt(o['mae_mean_bpb'])} bpb; the merge "
              f"picks the real best slice in {o['best_agrees']} of {o['seeds']} seeds. " + reading(o), "",
              "The merged models cost one anneal per slice plus one for the base, like the real ones here; the saving "
              "comes with combinations (a mixture of k slices is one more weighted average, not one more anneal)."]
    return "\n".join(lines).rstrip("\n") + "\n"


def verdict(iv: dict | None) -> str:
    """The paper's rank-agreement claim, read from the interval over seeds."""
    if iv is None:
        return "is not measured (fewer than 3 slices)"
    if iv["half_width"] is None:
        return "has one seed: no interval over seeds (its p-value is the measure of chance)"
    if iv["low"] > 0.5:
        return "holds at this scale (the interval lies above 0.5: the merge ranks slices like real retrains)"
    if iv["low"] > 0:
        return ("is better than chance but not reliably good (the interval lies above 0 and reaches below 0.5): a signal, "
                "not a replacement for retrains at this scale")
    return "is not shown at this scale (the interval includes 0)"


def reading(o: dict) -> str:
    return (f"On mean bpb the claim {verdict(o['spearman_mean_bpb'])}. On the slice's own source it "
            f"{verdict(o['spearman_own_source_bpb'])}.")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.experiments merge_ablation",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--share", type=float, default=0.3)
    parser.add_argument("--report-only", action="store_true", help="rewrite the section from its JSON")
    args = parser.parse_args(argv)
    out = resolve("reports/merge_ablation.json")
    if not args.report_only:
        if not 0 < args.share < 1:
            raise SystemExit("--share must be in (0, 1)")
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        params, ep, docs = setup()
        key = fingerprint(params, args.steps, phase2=False) + f"/share={args.share}"
        old = json.loads(out.read_text()) if out.exists() else {}
        done = {r["seed"]: r for r in old.get("seeds", []) if r.get("fingerprint") == key}
        seeds = []
        for seed in range(1, args.seeds + 1):
            if seed in done:
                log.info("merge ablation seed %d: reused (same fingerprint %s)", seed, key)
                seeds.append(done[seed])
            else:
                seeds.append({**run_seed(seed, params, args.steps, args.share, docs, ep), "fingerprint": key})
            # Saved per seed: an interrupted run keeps the seeds it finished.
            write_json_atomic(out, {"steps": args.steps, "share": args.share, "seeds": seeds,
                                    "agreement": [agreement(r) for r in seeds]})
    saved = json.loads(out.read_text())
    upsert_section(resolve("reports/science.md"), SECTION, markdown(saved))
    print(json.dumps(saved["agreement"], indent=1))
    return 0
