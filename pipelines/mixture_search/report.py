"""``python -m pipelines.mixture_search.report``: the evidence for the mixture search at demo size.

Runs the search (``mixture.enabled`` forced on) in the current workspace (needs
``data/select``), then re-trains proxies at fresh seeds (``--seeds``, the same
seeds for every mixture: paired differences) on three mixtures, the searched one,
uniform over domains (within the ``max_repeat`` caps) and the natural distribution
(the pool's own token shares); "searched beats X" is shown only when the 95%
intervals over seeds do not overlap. It measures ``--holdout`` fresh random
candidates to score the predictors (``predictors.PREDICTORS``) on candidates they
never saw, and again at ``--holdout-seeds`` fresh seeds (does their ranking survive
draws the search never shared?), and trains the first ``--decision`` of them again at
4x the proxy's size for the DataDecide decision accuracy. ``--target`` overrides
``mixture.target`` (the mean over held-out sources, or one source). Writes ``reports/mixture.md``,
``reports/mixture_weights.png`` and ``reports/mixture_eval.json`` (``--tag T``:
``mixture_T.md`` ...). Size knobs: ``--rounds``, ``--candidates``, ``--steps``,
``--max-repeat``, ``--seeds-per-candidate`` (override params). Scores are measured, never assumed: if the
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
from pipelines.experiments._ci import lower_is_shown, t_interval
from pipelines.mixture_search import decision, predictors, search
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
    uniform = [doc["uniform_weights"][d] for d in names]
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
    if args.seeds_per_candidate is not None:
        mixture["seeds_per_candidate"] = args.seeds_per_candidate
    if args.max_repeat is not None:
        mixture["max_repeat"] = None if args.max_repeat.lower() == "none" else float(args.max_repeat)
    if args.target is not None:
        mixture["target"] = args.target
    return {**params, "mixture": mixture}


def verdicts(summary: dict) -> dict[str, str]:
    """Searched against each anchor: shown only when the 95% intervals over seeds do not overlap."""
    iv = {m: t_interval(v["bpb_mean"]) for m, v in summary.items()}
    return {other: lower_is_shown(iv["searched"], iv[other]) for other in ("uniform", "natural")}


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


def decision_lines(decided: dict, n: int) -> list[str]:
    if not decided:
        return []
    return ["## Decision accuracy (DataDecide)", "",
            f"The first {n} held-out candidates re-trained at the same seed with 4x the proxy's non-embedding "
            f"parameters (`{decision.LARGER}`: same depth, steps and tokens). Of the {decided['pairs']} pairs, the "
            f"proxy orders **{decided['accuracy']:.0%}** as the larger proxy does "
            f"({decision.share(decided['accuracy_wide_gap'])} of the pairs whose proxy gap is above the median "
            f"{decided['median_gap']:.3f} bpb, {decision.share(decided['accuracy_narrow_gap'])} of the rest); Spearman between "
            f"the two rankings {decided['spearman']:.2f}. Chance is 50%.", ""]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default=None)
    ap.add_argument("--seeds", type=int, default=3, help="fresh proxy seeds per compared mixture (>= 2)")
    ap.add_argument("--holdout", type=int, default=6,
                    help="random candidates measured after the search, for the predictors' held-out rank correlation")
    ap.add_argument("--holdout-seeds", type=int, default=2,
                    help="fresh seeds at which the held-out candidates train again, for the predictors' rank "
                         "correlation with scores no search seed produced (0: skip)")
    ap.add_argument("--decision", type=int, default=8,
                    help="held-out candidates also trained at 4x the proxy's size, for the decision accuracy (0: skip)")
    ap.add_argument("--rounds", type=int, default=None, help="override mixture.rounds")
    ap.add_argument("--candidates", type=int, default=None, help="override mixture.candidates_per_round")
    ap.add_argument("--steps", type=int, default=None, help="override mixture.proxy.steps")
    ap.add_argument("--max-repeat", default=None, help="override mixture.max_repeat (a number, or none: no cap)")
    ap.add_argument("--seeds-per-candidate", type=int, default=None, help="override mixture.seeds_per_candidate")
    ap.add_argument("--target", default=None, help="override mixture.target (mean, or one held-out source's name)")
    ap.add_argument("--tag", default="", help="suffix of the output names (reports/mixture_TAG.md ...), to keep a variant's run")
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
    mixtures = {"searched": doc["phase1_weights"], "uniform": doc["uniform_weights"],
                "natural": doc["natural_weights"]}
    cfg = search.config(params)
    base = cfg["seed"]
    # Each fresh seed is one sample of the comparison: one proxy run, whatever the search replicated.
    single = {**params, "mixture": {**params["mixture"], "seeds_per_candidate": 1}}
    jobs = [(single, m, w, base + 1000 + k) for m, w in mixtures.items() for k in range(args.seeds)]
    # Held-out candidates: fresh Dirichlet samples within the caps, as the search's first round draws them, at
    # the search's own seed (comparable with its scores).
    rng = np.random.default_rng([base, 20_000])
    held = search.within_caps(rng.dirichlet(np.full(len(names), float(cfg["dirichlet_alpha"])), size=args.holdout),
                              np.asarray([doc["caps"][d] for d in names]))
    jobs += [(params, f"holdout{j}", {d: float(x) for d, x in zip(names, w)}, base) for j, w in enumerate(held)]
    # The same held-out candidates at the comparison's fresh seeds: a predictor fitted on scores that share the
    # search's draws is only useful as far as its ranking survives other draws.
    jobs += [(single, f"fresh{j}", {d: float(x) for d, x in zip(names, w)}, base + 1000 + k)
             for j, w in enumerate(held) for k in range(args.holdout_seeds)]
    # DataDecide: the first --decision held-out candidates again, at 4x the proxy's non-embedding parameters.
    larger = {**params, "mixture": {**params["mixture"], "proxy": decision.larger_proxy(cfg["proxy"])}}
    jobs += [(larger, f"larger{j}", {d: float(x) for d, x in zip(names, w)}, base)
             for j, w in enumerate(held[:args.decision])]
    evals = get_executor(params.get("executor")).map(_eval_job, jobs)
    total_s, total_cpu = time.monotonic() - started, _cpu_seconds() - cpu0
    compared = [e for e in evals if e["mixture"] in mixtures]
    holdout = [e for e in evals if e["mixture"].startswith("holdout")]
    larger_evals = [e for e in evals if e["mixture"].startswith("larger")]
    fresh = [float(np.mean([e["bpb_mean"] for e in evals if e["mixture"] == f"fresh{j}"]))
             for j in range(len(holdout))] if args.holdout_seeds else []
    summary = {}
    for m in mixtures:
        vals = [e["bpb_mean"] for e in compared if e["mixture"] == m]
        summary[m] = {"bpb_mean": vals, "std": float(np.std(vals, ddof=1)), **t_interval(vals).as_dict()}
    diffs = {other: [a - b for a, b in zip(summary["searched"]["bpb_mean"], summary[other]["bpb_mean"])]
             for other in ("uniform", "natural")}
    held_rho = predictors.holdout_spearman(doc["candidates"], holdout, names) if len(holdout) >= 3 else {}
    fresh_rho = predictors.fresh_spearman(held_rho, holdout, fresh) if fresh and held_rho else {}
    # The random candidates alone (round 0 and the held-out ones), each predicted by a model fitted on the
    # others: RegMix's setting, where the search's later rounds (crowded near the best) do not skew the fit.
    randoms = [c for c in doc["candidates"] if c["round"] == 0] + holdout
    random_loo = predictors.compare(randoms, names)
    decided = (decision.decision_accuracy([e["bpb_mean"] for e in holdout[:len(larger_evals)]],
                                          [e["bpb_mean"] for e in larger_evals]) if len(larger_evals) >= 2 else {})
    verdict = verdicts(summary)
    out = resolve(REPORT_DIR)
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"_{args.tag}" if args.tag else ""
    write_json_atomic(out / f"mixture_eval{suffix}.json", {
        "summary": summary, "paired_diff_searched_minus": diffs, "verdict": verdict, "evals": compared,
        "holdout_candidates": holdout, "predictor_holdout": held_rho,
        "predictor_holdout_fresh": fresh_rho, "holdout_fresh_bpb_mean": fresh,
        "predictor_random_loo": {k: v["spearman_loo"] for k, v in random_loo.items()}, "larger_proxy": decision.LARGER,
        "larger_evals": larger_evals, "decision_accuracy": decided,
        "predictor_loo": doc["predictor"]["comparison"], "search_seconds": searched_s,
        "search_cpu_seconds": searched_cpu, "total_seconds": total_s, "total_cpu_seconds": total_cpu,
        "candidates": len(doc["candidates"]), "config": doc["config"], "final": doc["final"],
        "args": vars(args)})
    bar_chart(doc, out / f"mixture_weights{suffix}.png")
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
        f"Phase-1 weights: `{doc['final']}`; the search's predictor: `{doc['config']['predictor']}`; "
        f"`max_repeat: {doc['config']['max_repeat']}` (each domain's weight at most that many times its natural "
        f"share; the cap column below); `seeds_per_candidate: {doc['config']['seeds_per_candidate']}` (search and "
        "held-out candidates; the comparison below is one run per fresh seed).", "",
        f"Search: {searched_s:.0f} s wall, {searched_cpu:.0f} CPU-s; search + comparison + held-out candidates + "
        f"larger proxies: {total_s:.0f} s wall, {total_cpu:.0f} CPU-s ({os.cpu_count()} cores; wall time depends on "
        "what else the machine runs).", "",
        f"## Searched vs uniform vs natural ({args.seeds} fresh proxy seeds, the same for every mixture)", "",
        "| mixture | bpb_mean per seed | mean ± 95% CI | std |", "|---|---|---|---|",
        *[f"| {m} | {', '.join(f'{x:.4f}' for x in v['bpb_mean'])} | {v['mean']:.4f} ± {v['half_width']:.4f} | "
          f"{v['std']:.4f} |" for m, v in summary.items()], "",
        *[f"Paired searched - {o} per seed: {', '.join(f'{d:+.4f}' for d in ds)} (mean {np.mean(ds):+.4f})."
          for o, ds in diffs.items()], "",
        f"**Searched beats uniform: {verdict['uniform']}. Searched beats natural: {verdict['natural']}.** "
        "Shown = the 95% intervals over seeds do not overlap (pipelines/experiments/_ci.py). The held-out "
        "documents scored are the ones the search optimised (fresh training seeds only), so any bias favours "
        "the searched mixture.", "",
        f"Inside the search (search seed): best candidate {best['name']} {best['bpb_mean']:.4f}; "
        + ", ".join(f"{k} {v:.4f}" for k, v in sorted(anchors.items())) + ".", "",
        *noise_lines(compared, json.loads((search.work_dir() / "prepared.json").read_text())["heldout_docs"]),
        "## Predictors", "",
        f"Held-out: fitted on the {len(doc['candidates'])} search candidates, scored on {len(holdout)} fresh random "
        "candidates (Dirichlet, the search's seed) measured afterwards. LOO: leave-one-out over the search "
        "candidates, most of which sit close to the best (later rounds), so their spread is small.", "",
        f"Random LOO: the {len(randoms)} random "
        "candidates (round 0: the anchors and Dirichlet samples; and the held-out ones), each predicted by the "
        "predictor fitted on all the others.", "",
        f"Fresh seeds: the held-out candidates' mean score over {args.holdout_seeds} fresh seeds (those of the "
        "comparison above), against the same predictions; the row `measured (search seed)` ranks them by their own "
        "score at the search's seed, the ceiling of any predictor fitted on that seed's scores.", "",
        "| predictor | Spearman, held-out candidates | Spearman, held-out at fresh seeds | Spearman, LOO (search) | "
        "Spearman, random LOO |", "|---|---|---|---|---|",
        *[f"| {k} | {held_rho.get(k, {}).get('spearman', float('nan')):.3f} | {fresh_rho.get(k, float('nan')):.3f} | "
          f"{comp.get(k, {}).get('spearman_loo', float('nan')):.3f} | "
          f"{random_loo.get(k, {}).get('spearman_loo', float('nan')):.3f} |" for k in predictors.PREDICTORS],
        f"| measured (search seed) | 1.000 | {fresh_rho.get(predictors.MEASURED, float('nan')):.3f} | | |", "",
        "per_source: a log-linear ridge per held-out source, their mean (pipelines/mixture_search/predictors.py); "
        "lightgbm: RegMix's LightGBM (linear leaves); linear_regmix: RegMix's linear regression baseline; "
        "mixing_law: the data-mixing law L = c + exp(a + t.w) (Ye et al., 2024) on the mean.", "",
        *decision_lines(decided, len(larger_evals)),
        "## Weights", "", f"![weights](mixture_weights{suffix}.png)", "",
        "| domain | searched | natural | uniform | cap |", "|---|---|---|---|---|",
        *[f"| {d} | {doc['phase1_weights'][d]:.3f} | {doc['natural_weights'][d]:.3f} | {doc['uniform_weights'][d]:.3f} |"
          f" {doc['caps'][d]:.3f} |" for d in names], "",
        "## Candidates", "", "| name | measured bpb_mean | predicted (search's predictor, in-sample) |", "|---|---|---|",
        *[f"| {c['name']} | {c['bpb_mean']:.4f} | {c['predicted_bpb_mean']:.4f} |" for c in doc["candidates"]], "",
    ]
    (out / f"mixture{suffix}.md").write_text("\n".join(lines))
    print("\n".join(lines[:24]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
