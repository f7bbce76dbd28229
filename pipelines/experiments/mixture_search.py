"""Does the mixture search earn its keep? The proxy's noise, and the search's report read as claims.

``python -m pipelines.experiments mixture_search`` (needs ``data/select``; ~4 min on 2 cores):

- **proxy noise**: the search's own candidates (its anchors and Dirichlet samples within the caps),
  each trained at several seeds, at the proxy LR the search used to run (0.003) and at today's
  (``mixture.proxy.lr``). Per LR: the spread of a candidate's score over seeds once each seed's
  shift common to every candidate is removed (what re-orders candidates), the spread between the
  candidates' means (what the search looks for), and the rank correlation between two seeds'
  orderings of the same candidates: the best any predictor can do on one seed's scores.
- **the search**: reads the report runs in ``RUNS`` that are present (``python -m
  pipelines.mixture_search.report`` with ``--seeds-per-candidate 2 --tag replicated``,
  ``--seeds-per-candidate 1`` (the product's params), ``--seeds-per-candidate 1 --max-repeat none --tag
  uncapped``), and states each claim with its intervals.

Writes ``reports/mixture_search.json`` and the section "Mixture search" of ``reports/science.md``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import time

import numpy as np

from pipelines.config import load_params, resolve
from pipelines.core.atomic import write_json_atomic
from pipelines.core.executor import get_executor
from pipelines.experiments._ci import SHOWN, t_interval
from pipelines.experiments._report import upsert_section
from pipelines.mixture_search import decision, search
from pipelines.mixture_search.predictors import MEASURED

SECTION = "## Mixture search"
# Candidate sets of the noise runs: Dirichlet samples moved within the product's caps, and left as drawn.
WITHIN_CAPS, UNCAPPED_SET = "within the caps", "uncapped"
CAPPED, UNCAPPED = "capped, 1 seed per candidate (the product's params)", "uncapped, 1 seed per candidate"
REPLICATED = "capped, 2 seeds per candidate"
TARGETED = "capped, 2 seeds per candidate, target math"
# The report runs read (python -m pipelines.mixture_search.report ... [--tag T] -> reports/mixture_eval[_T].json).
RUNS = {REPLICATED: "mixture_eval_replicated.json",
        CAPPED: "mixture_eval.json", UNCAPPED: "mixture_eval_uncapped.json", TARGETED: "mixture_eval_math.json"}
OLD_LR = 0.003  # the proxy's LR before this experiment (the trainer's)


def _job(job: tuple[dict, dict, int]) -> float:
    params, weights, seed = job
    return search.run_proxy(params, {"name": "noise", "round": -1, "seed": seed, "weights": weights})["bpb_mean"]


def noise_stats(Y: np.ndarray) -> dict:
    """``Y``: candidates x seeds scores. Interaction sd (residual of candidate + seed effects), the sd
    between candidate means, and the Spearman correlation of every pair of seeds' orderings."""
    from scipy.stats import spearmanr

    n, k = Y.shape
    if n < 3 or k < 2:
        raise ValueError("need at least 3 candidates and 2 seeds")
    R = Y - Y.mean(axis=0, keepdims=True) - Y.mean(axis=1, keepdims=True) + Y.mean()
    rhos = [float(spearmanr(Y[:, i], Y[:, j]).statistic) for i, j in itertools.combinations(range(k), 2)]
    return {"interaction_sd": float(np.sqrt((R ** 2).sum() / ((n - 1) * (k - 1)))),
            "between_candidates_sd": float(Y.mean(axis=1).std(ddof=1)),
            "seed_pair_spearman": rhos, "mean_seed_pair_spearman": float(np.mean(rhos))}


def measure_noise(params: dict, candidates: int, seeds: int, max_repeat) -> dict:
    params = {**params, "mixture": {**params["mixture"], "max_repeat": max_repeat}}
    search.prepare(params)
    cfg = search.config(params)
    info = json.loads((search.work_dir() / "prepared.json").read_text())
    names, cap = info["domains"], search.caps(cfg, info)
    W = search.within_caps(np.random.default_rng([cfg["seed"], 30_000]).dirichlet(
        np.full(len(names), float(cfg["dirichlet_alpha"])), size=candidates - 2), cap)
    mixtures = [search.anchor_weights("uniform", info, cap), search.anchor_weights("natural", info, cap), *W]
    out = {}
    for lr in (OLD_LR, float(cfg["proxy"]["lr"])):
        p = {**params, "mixture": {**params["mixture"], "proxy": {**params["mixture"].get("proxy", {}), "lr": lr}}}
        t0 = time.time()
        jobs = [(p, dict(zip(names, map(float, w))), cfg["seed"] + 2000 + s) for w in mixtures for s in range(seeds)]
        Y = np.asarray(get_executor(params.get("executor")).map(_job, jobs)).reshape(len(mixtures), seeds)
        out[str(lr)] = {**noise_stats(Y), "scores": Y.tolist(), "seconds": round(time.time() - t0, 1)}
    return {"lrs": out, "candidates": len(mixtures), "seeds": seeds, "proxy": cfg["proxy"],
            "max_repeat": cfg["max_repeat"]}


def _noise_wall(run: dict) -> str:
    walls = [f"{x['seconds']:.0f} s at LR {lr}" for lr, x in run["lrs"].items() if "seconds" in x]
    return f" (wall time {', '.join(walls)})" if walls else ""


def _search_lines(name: str, ev: dict) -> list[str]:
    s, v, d = ev["summary"], ev["verdict"], ev.get("decision_accuracy") or {}
    iv = {m: f"{x['mean']:.4f} ± {x['half_width']:.4f}" for m, x in s.items()}
    held, fresh = ev.get("predictor_holdout") or {}, ev.get("predictor_holdout_fresh") or {}
    cfg = ev["config"]
    lines = [f"- **{name}** (`target: {cfg.get('target', 'mean')}`, `max_repeat: {cfg.get('max_repeat')}`, "
             f"predictor `{cfg.get('predictor')}`, "
             f"`seeds_per_candidate: {cfg.get('seeds_per_candidate', 1)}`, {ev['candidates']} candidates, "
             f"{len(s['searched']['bpb_mean'])} fresh seeds): searched {iv['searched']}, uniform {iv['uniform']}, "
             f"natural {iv['natural']}. Searched beats uniform: **{v['uniform']}**; beats natural: **{v['natural']}**.",
             "  Predictors' Spearman on " + f"{len(ev['holdout_candidates'])} held-out candidates (fitted on the search's): "
             + ", ".join(f"{k} {x['spearman']:.2f}" for k, x in held.items())
             + "".join("; leave-one-out over the random candidates: " + ", ".join(f"{k} {x:.2f}" for k, x in loo.items())
                       for loo in [ev.get("predictor_random_loo") or {}] if loo) + "."]
    if fresh:
        lines.append("  The same held-out candidates scored at fresh seeds (draws the search never shared): "
                     + ", ".join(f"{k} {x:.2f}" for k, x in fresh.items()) + ".")
    if "total_seconds" in ev:
        lines.append(f"  Wall time: search {ev['search_seconds']:.0f} s; search, comparison, held-out candidates and "
                     f"larger proxies {ev['total_seconds']:.0f} s ({ev['total_cpu_seconds']:.0f} CPU-s).")
    if d:
        lines.append(f"  Decision accuracy against a 4x larger proxy: {d['accuracy']:.0%} of {d['pairs']} pairs "
                     f"({decision.share(d['accuracy_wide_gap'])} where the proxy's gap is above its median "
                     f"{d['median_gap']:.3f}).")
    return lines


def reading(runs: dict) -> list[str]:
    """What the runs say, from their numbers: the predictor target (Spearman >= 0.5) and the paired gaps."""
    out = []
    for name, ev in runs.items():
        fresh = {k: v for k, v in (ev.get("predictor_holdout_fresh") or {}).items() if k != MEASURED}
        for what, rho in (("held-out candidates", {k: v["spearman"] for k, v in (ev.get("predictor_holdout") or {}).items()}),
                          ("held-out candidates at fresh seeds", fresh),
                          ("random candidates, leave-one-out", ev.get("predictor_random_loo") or {})):
            if rho:
                best = max(rho, key=rho.get)
                met = "met" if rho[best] >= 0.5 else "not met"
                out.append(f"- {name}, {what}: best predictor {best} ({rho[best]:.2f}); the target Spearman >= 0.5 "
                           f"is {met}.")
        paired = {o: float(np.mean(d)) for o, d in (ev.get("paired_diff_searched_minus") or {}).items()}
        if paired:
            out.append("  Paired searched - anchor over the fresh seeds (negative: searched better): "
                       + ", ".join(f"{o} {d:+.4f}" for o, d in paired.items()) + ".")
        target = ev["config"].get("target", "mean")
        if target != "mean" and ev.get("evals"):
            w = {m: next(e["weights"] for e in ev["evals"] if e["mixture"] == m).get(target, 0.0)
                 for m in ("searched", "uniform", "natural")}
            out.append(f"  Aimed at {target}: its weight is {w['searched']:.2f} in the searched mixture, "
                       f"{w['uniform']:.2f} in uniform and {w['natural']:.2f} in natural.")
    out += ["", "Where searched does not beat uniform, the report's \"Inside the search\" line shows the best "
            "candidate ahead of the uniform anchor at the search seed; a gap that does not survive fresh seeds is "
            "the winner's curse on a landscape flat to within the seed spread."]
    aimed = {n: ev for n, ev in runs.items() if ev["config"].get("target", "mean") != "mean"}
    on_mean = {n: ev for n, ev in runs.items() if n not in aimed}
    if aimed and on_mean:
        won = lambda ev: all(v == SHOWN for v in ev["verdict"].values())  # noqa: E731
        if all(map(won, aimed.values())) and not any(map(won, on_mean.values())):
            out.append("Aimed at one source, the search beats both anchors; on the mean over sources it beats both "
                       "in no run. A target that one source's share moves is steep enough for the proxies to find at "
                       "this scale; the mean over sources, within the caps, is not. Aimed at one source, the optimum is "
                       "mostly that source (its weight above): the run checks that the search and its predictors find a "
                       "slope where there is one, not that they find a mixture nobody would have guessed.")
        else:
            out.append("Aimed at one source: beats both anchors in " + f"{sum(map(won, aimed.values()))} of {len(aimed)} "
                       f"runs; on the mean over sources: in {sum(map(won, on_mean.values()))} of {len(on_mean)}.")
    if REPLICATED in runs and CAPPED in runs:
        two, one = runs[REPLICATED], runs[CAPPED]
        d = t_interval([a - b for a, b in zip(two["summary"]["searched"]["bpb_mean"],
                                              one["summary"]["searched"]["bpb_mean"])])
        f2, f1 = (r.get("predictor_holdout_fresh", {}).get(r["config"].get("predictor", "lightgbm")) for r in (two, one))
        out.append(f"Two seeds per candidate against one: the searched mixture moves by {d.mean:+.4f} ± {d.half_width:.4f} "
                   "bpb (paired over the fresh seeds), and the search's predictor ranks the held-out candidates at fresh "
                   + (f"seeds at {f2:.2f} against {f1:.2f}" if f2 is not None and f1 is not None else "seeds as shown above")
                   + ". Where the interval includes 0 the second seed's gains at the search's own seeds (above) do not "
                   "reach the outcome, and `mixture.seeds_per_candidate` is 1 (half the search's cost).")
    if CAPPED in runs and UNCAPPED in runs:
        out.append(f"Searched at the same fresh seeds: {UNCAPPED} {runs[UNCAPPED]['summary']['searched']['mean']:.4f}, "
                   f"{CAPPED} {runs[CAPPED]['summary']['searched']['mean']:.4f}. `max_repeat` stays on whatever the proxy prefers: "
                   "uncapped, the search may repeat a domain of a few thousand tokens hundreds of times, which "
                   "data-constrained scaling (Muennighoff et al., 2023) finds worth little beyond ~4 epochs at real "
                   "scale, a cost a proxy of ~10^5 tokens cannot see.")
    return out + [""]


def write_section(doc: dict, path) -> None:
    noise = doc["noise"]
    rows = [f"| {name} | {lr} | {x['interaction_sd']:.4f} | {x['between_candidates_sd']:.4f} | "
            f"{x['mean_seed_pair_spearman']:.2f} ({', '.join(f'{r:.2f}' for r in x['seed_pair_spearman'])}) |"
            for name, run in noise.items() for lr, x in run["lrs"].items()]
    first = next(iter(noise.values()))
    runs = [line for name, ev in doc["search"].items() for line in _search_lines(name, ev)]
    text = "\n".join([
        SECTION, "",
        "Generated by `python -m pipelines.experiments mixture_search` from its noise runs and the search's own "
        "reports (`reports/mixture_replicated.md`, `reports/mixture.md`, `reports/mixture_uncapped.md`, "
        "`reports/mixture_math.md`); numbers in "
        "`reports/mixture_search.json`.", "",
        "**What the papers claim.** RegMix (Liu et al., 2024) and CLIMB (Diao et al., 2025): a mixture chosen by "
        "regression over many small proxy runs beats uniform and natural (human) mixtures at the target scale, "
        "and the regression ranks unseen mixtures well. DataDecide (Magnusson et al., 2025): small-scale runs pick "
        "the better of two data recipes at a larger scale about 80% of the time.", "",
        f"**Proxy noise** ({first['candidates']} candidates (uniform, natural and Dirichlet samples) × "
        f"{first['seeds']} seeds per proxy LR and candidate set; proxy {first['proxy']['steps']} steps of the "
        f"`{first['proxy']['preset']}` model). "
        "Interaction sd: a candidate's seed-to-seed spread after removing each seed's shift shared by all "
        "candidates (what re-orders them). Seed-pair Spearman: two seeds' orderings of the same candidates, "
        "the ceiling for any predictor fitted on one seed.", "",
        "| candidates | proxy LR | interaction sd | sd between candidates | seed-pair Spearman (each pair) |",
        "|---|---|---|---|---|", *rows, "",
        *[f"{name}: interaction sd / sd between candidates "
          + ", ".join(f"{x['interaction_sd'] / x['between_candidates_sd']:.2f} at LR {lr}" for lr, x in run["lrs"].items())
          + f"; the smaller (candidates re-ordered less by the seed) at LR "
          f"{min(run['lrs'], key=lambda lr: run['lrs'][lr]['interaction_sd'] / run['lrs'][lr]['between_candidates_sd'])}"
          + _noise_wall(run) + "."
          for name, run in noise.items()],
        f"The default `mixture.proxy.lr` is {first['proxy']['lr']}. A ratio above 1 means one run's ranking of these "
        "candidates is mostly its seed's: the predictor's held-out rank correlation and the decision accuracy below "
        "are measured at the search's own seeds (common random numbers: every candidate sees the same draws), so "
        "they describe those seeds' landscape, and carry to other seeds only as far as the seed-pair correlation "
        "here allows. The fresh-seed line of each run measures how far: the held-out candidates trained again at "
        "seeds the search never used, ranked against the same predictions; `measured (search seed)` there is the "
        "candidates' own search-seed score, the best any predictor fitted on those scores could do.", "",
        "**The search** (`python -m pipelines.mixture_search.report --rounds 3 --candidates 12 --holdout 16 "
        "--seeds 8 --decision 10` with `--seeds-per-candidate 2 --tag replicated`, `--seeds-per-candidate 1` and "
        "`--seeds-per-candidate 1 --max-repeat none --tag uncapped`, and `--seeds-per-candidate 2 --target math "
        "--tag math` (the search aimed at one source's bpb, as CLIMB aims at a target task); each with "
        "`--holdout-seeds 2`; reports/mixture*.md):", "", *runs, "",
        *reading(doc["search"]),
    ])
    upsert_section(path, SECTION, text)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.experiments mixture_search", description=__doc__.split("\n")[0])
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sets", default=f"{WITHIN_CAPS},{UNCAPPED_SET}",
                    help="comma-separated candidate sets to measure (the others are kept from the last run)")
    ap.add_argument("--report-only", action="store_true", help="rewrite the section from reports/mixture_search.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = resolve("reports/mixture_search.json")
    doc = json.loads(out.read_text()) if out.exists() else {"noise": {}}
    if not args.report_only:
        params = load_params()
        params["mixture"] = {**(params.get("mixture") or {}), "enabled": True}
        caps = search.config(params)["max_repeat"]
        for name in [n for n in args.sets.split(",") if n]:
            if name not in (WITHIN_CAPS, UNCAPPED_SET):
                ap.error(f"--sets: unknown set {name!r}")
            doc["noise"][name] = measure_noise(params, args.candidates, args.seeds, caps if name == WITHIN_CAPS else None)
    doc["search"] = {}
    for name, file in RUNS.items():
        f = resolve("reports") / file
        if f.exists():
            doc["search"][name] = json.loads(f.read_text())
    write_json_atomic(out, {**doc, "search": {k: {key: v[key] for key in (
        "summary", "verdict", "paired_diff_searched_minus", "predictor_holdout", "predictor_holdout_fresh",
        "holdout_fresh_bpb_mean", "predictor_random_loo", "decision_accuracy", "candidates",
        "search_seconds", "total_seconds", "total_cpu_seconds",
        "config", "holdout_candidates")
        if key in v} for k, v in doc["search"].items()}})
    write_section(doc, resolve("reports/science.md"))
    return 0
