"""``python -m pipelines.mixture_search.report``: the evidence for the mixture search at demo size.

Runs the search (``mixture.enabled`` forced on) in the current workspace (needs
``data/select``), then re-trains proxies at fresh seeds (``--seeds``, the same
seeds for every mixture: paired differences) on three mixtures, the searched one,
uniform over domains and the natural distribution (the pool's own token shares),
and measures ``--holdout`` fresh random candidates to score the predictors
(LightGBM, RegMix linear, data-mixing law) on candidates they never saw. Writes
``reports/mixture.md``, ``reports/mixture_weights.png`` and
``reports/mixture_eval.json``. Size knobs: ``--rounds``, ``--candidates``,
``--steps`` (override params). Scores are measured, never assumed: if the
searched mixture does not beat uniform at this scale, the report says so.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import numpy as np

from pipelines.config import load_params, resolve
from pipelines.core.atomic import write_json_atomic
from pipelines.core.executor import get_executor
from pipelines.mixture_search import search
from pipelines.runtime import quiet_threads

REPORT_DIR = "reports"


def _eval_job(job):
    params, name, weights, seed = job
    return {"mixture": name, "seed": seed, **search.run_proxy(params, {"name": f"{name}_s{seed}", "round": -1,
                                                                        "seed": seed, "weights": weights})}


def bar_chart(doc: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = doc["domains"]
    uniform = [1 / len(names)] * len(names)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.8), 3.5))
    for k, (label, w) in enumerate((("searched", [doc["phase1_weights"][d] for d in names]),
                                    ("natural", [doc["natural_weights"][d] for d in names]), ("uniform", uniform))):
        ax.bar(x + (k - 1) * 0.27, w, width=0.27, label=label)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("phase-1 weight")
    ax.set_title("Phase-1 mixture weights per domain")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _cpu_seconds() -> float:
    import resource

    return sum(resource.getrusage(w).ru_utime + resource.getrusage(w).ru_stime
               for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def _overrides(params: dict, args) -> dict:
    mixture = {**(params.get("mixture") or {}), "enabled": True}
    if args.rounds is not None:
        mixture["rounds"] = args.rounds
    if args.candidates is not None:
        mixture["candidates_per_round"] = args.candidates
    if args.steps is not None:
        mixture["proxy"] = {**(mixture.get("proxy") or {}), "steps": args.steps}
    if args.final is not None:
        mixture["final"] = {**(mixture.get("final") or {}), "method": args.final}
    return {**params, "mixture": mixture}


def _verdict(diffs: list[float]) -> str:
    """Paired (same seed) differences searched - uniform; lower bpb is better."""
    mean = float(np.mean(diffs))
    if mean < 0 and all(d < 0 for d in diffs):
        return "searched beats uniform (lower bpb at every seed)"
    if mean < 0:
        return "searched is not clearly better than uniform (lower on average, not at every seed)"
    return "searched does NOT beat uniform"


def noise_lines(evals: list[dict], heldout_docs: dict[str, int]) -> list[str]:
    """Per held-out source: docs scored, seed-to-seed std of its bpb per mixture, paired searched - uniform."""
    by = {m: [e for e in evals if e["mixture"] == m] for m in ("searched", "uniform", "natural")}
    sources = sorted(by["uniform"][0]["bpb"]) if by["uniform"] else []
    lines = ["## Where the noise is (per held-out source)", "",
             "| source | held-out docs | std over seeds (searched / uniform / natural) | searched - uniform per seed |",
             "|---|---|---|---|"]
    for src in sources:
        std = " / ".join(f"{np.std([e['bpb'][src] for e in by[m]]):.3f}" for m in by)
        diff = ", ".join(f"{a['bpb'][src] - b['bpb'][src]:+.3f}" for a, b in zip(by["searched"], by["uniform"]))
        lines.append(f"| {src} | {heldout_docs.get(src, 0)} | {std} | {diff} |")
    return lines + [""]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default=None)
    ap.add_argument("--seeds", type=int, default=3, help="fresh proxy seeds per compared mixture (>= 2)")
    ap.add_argument("--holdout", type=int, default=6,
                    help="random candidates measured after the search, for the predictors' held-out rank correlation")
    ap.add_argument("--rounds", type=int, default=None, help="override mixture.rounds")
    ap.add_argument("--candidates", type=int, default=None, help="override mixture.candidates_per_round")
    ap.add_argument("--steps", type=int, default=None, help="override mixture.proxy.steps")
    ap.add_argument("--final", default=None, choices=["top_k_mean", "best", "predicted"], help="override mixture.final.method")
    args = ap.parse_args(argv)
    if args.seeds < 2:
        ap.error("--seeds must be >= 2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_threads()
    params = _overrides(load_params(args.params), args)
    started, cpu0 = time.monotonic(), _cpu_seconds()
    search.run(params)
    searched_s, searched_cpu = time.monotonic() - started, _cpu_seconds() - cpu0
    doc = json.loads((resolve(search.OUT_DIR) / search.MIXTURE).read_text())
    names = doc["domains"]
    mixtures = {"searched": doc["phase1_weights"], "uniform": {d: 1 / len(names) for d in names},
                "natural": doc["natural_weights"]}
    cfg = search.config(params)
    base = cfg["seed"]
    jobs = [(params, m, w, base + 1000 + k) for m, w in mixtures.items() for k in range(args.seeds)]
    # Held-out candidates: fresh Dirichlet samples at the search's own seed (comparable with its scores).
    rng = np.random.default_rng([base, 20_000])
    held = rng.dirichlet(np.full(len(names), float(cfg["dirichlet_alpha"])), size=args.holdout)
    jobs += [(params, f"holdout{j}", {d: float(x) for d, x in zip(names, w)}, base) for j, w in enumerate(held)]
    evals = get_executor(params.get("executor")).map(_eval_job, jobs)
    total_s, total_cpu = time.monotonic() - started, _cpu_seconds() - cpu0
    compared = [e for e in evals if e["mixture"] in mixtures]
    holdout = [e for e in evals if e["mixture"] not in mixtures]
    summary = {m: {"bpb_mean": [e["bpb_mean"] for e in compared if e["mixture"] == m]} for m in mixtures}
    for m, v in summary.items():
        v["mean"], v["std"] = float(np.mean(v["bpb_mean"])), float(np.std(v["bpb_mean"]))
    diffs = [a - b for a, b in zip(summary["searched"]["bpb_mean"], summary["uniform"]["bpb_mean"])]
    diffs_nat = [a - b for a, b in zip(summary["searched"]["bpb_mean"], summary["natural"]["bpb_mean"])]
    held_rho = search.holdout_spearman(doc["candidates"], holdout, names) if len(holdout) >= 3 else {}
    verdict = _verdict(diffs)
    out = resolve(REPORT_DIR)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "mixture_eval.json", {
        "summary": summary, "paired_diff_searched_minus_uniform": diffs,
        "paired_diff_searched_minus_natural": diffs_nat, "verdict": verdict, "evals": compared,
        "holdout_candidates": holdout, "predictor_holdout": held_rho,
        "predictor_loo": doc["predictor"]["comparison"], "search_seconds": searched_s,
        "search_cpu_seconds": searched_cpu, "total_seconds": total_s, "total_cpu_seconds": total_cpu,
        "candidates": len(doc["candidates"]), "config": doc["config"], "final": doc["final"],
        "args": vars(args)})
    bar_chart(doc, out / "mixture_weights.png")
    s, u, n = summary["searched"]["mean"], summary["uniform"]["mean"], summary["natural"]["mean"]
    comp = doc["predictor"]["comparison"]
    best = min(doc["candidates"], key=lambda c: c["bpb_mean"])
    anchors = {c["name"]: c["bpb_mean"] for c in doc["candidates"] if c["round"] == 0}
    lines = [
        "# Mixture search (CLIMB-style) at demo size", "",
        f"Command: `{' '.join(['python -m pipelines.mixture_search.report', *(argv if argv is not None else sys.argv[1:])])}`.",
        "",
        f"Target: {doc['target']} (`mixture.target: {doc['config']['target']}`). Proxy: {doc['config']['proxy']}. "
        f"{len(doc['candidates'])} candidates over {doc['config']['rounds']} rounds (round 0 includes the anchors "
        f"{doc['config']['anchors']}); domains: {', '.join(names)} (embedder: {doc['config']['embedder']}). "
        f"Phase-1 weights: `{doc['final']}`.", "",
        f"Search: {searched_s:.0f} s wall, {searched_cpu:.0f} CPU-s; search + comparison + held-out candidates: "
        f"{total_s:.0f} s wall, {total_cpu:.0f} CPU-s ({os.cpu_count()} cores; wall time depends on what else the machine runs).", "",
        "## Searched vs uniform vs natural (fresh proxy seeds, same seeds for every mixture)", "",
        "| mixture | bpb_mean per seed | mean | std |", "|---|---|---|---|",
        *[f"| {m} | {', '.join(f'{x:.4f}' for x in v['bpb_mean'])} | {v['mean']:.4f} | {v['std']:.4f} |"
          for m, v in summary.items()], "",
        f"Paired differences searched - uniform per seed: {', '.join(f'{d:+.4f}' for d in diffs)}; "
        f"searched - natural: {', '.join(f'{d:+.4f}' for d in diffs_nat)}.", "",
        f"**Verdict: {verdict}** (searched {s:.4f} vs uniform {u:.4f} vs natural {n:.4f}; lower is better). "
        "The held-out documents scored are the ones the search optimised (fresh training seeds only), "
        "so any bias favours the searched mixture.", "",
        f"Inside the search (search seed): best candidate {best['name']} {best['bpb_mean']:.4f}; "
        + ", ".join(f"{k} {v:.4f}" for k, v in sorted(anchors.items())) + ".", "",
        *noise_lines(compared, json.loads((search.work_dir() / "prepared.json").read_text())["heldout_docs"]),
        "## Predictors", "",
        f"Held-out: fitted on the {len(doc['candidates'])} search candidates, scored on {len(holdout)} fresh random "
        "candidates measured afterwards. LOO: leave-one-out over the search candidates.", "",
        "| predictor | Spearman, held-out candidates | Spearman, LOO |", "|---|---|---|",
        *[f"| {k} | {held_rho.get(k, {}).get('spearman', float('nan')):.3f} | {comp.get(k, {}).get('spearman_loo', float('nan')):.3f} |"
          for k in search.PREDICTORS], "",
        "lightgbm: the search's predictor (LightGBM, linear leaves); linear_regmix: RegMix's linear "
        "regression baseline; mixing_law: the data-mixing law L = c + exp(a + t.w) (Ye et al., 2024).", "",
        "## Weights", "", "![weights](mixture_weights.png)", "",
        "| domain | searched | natural | uniform |", "|---|---|---|---|",
        *[f"| {d} | {doc['phase1_weights'][d]:.3f} | {doc['natural_weights'][d]:.3f} | {1 / len(names):.3f} |"
          for d in names], "",
        "## Candidates", "", "| name | measured bpb_mean | predicted (LightGBM, in-sample) |", "|---|---|---|",
        *[f"| {c['name']} | {c['bpb_mean']:.4f} | {c['predicted_bpb_mean']:.4f} |" for c in doc["candidates"]], "",
    ]
    (out / "mixture.md").write_text("\n".join(lines))
    print("\n".join(lines[:26]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
