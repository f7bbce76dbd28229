"""The science report: per-arm intervals over seeds, the claims and their verdicts -> .json, .md and .png.

``summarize`` is pure (runs in, numbers and verdicts out); ``write`` renders it.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from pipelines.core.atomic import write_bytes_atomic, write_json_atomic
from pipelines.experiments._ci import SHOWN, Interval, lower_is_shown, t_interval
from pipelines.experiments._heldout_error import documents_for

MAIN_ARMS = ("constant", "decay_phase1", "anneal", "anneal_no_replay")
# Sections of reports/science.md that other experiments write (python -m pipelines.experiments <name>): kept
# as they are when this report is regenerated.
OTHER_SECTIONS = ("## Data Mixture Inference audit", "## Step Law", "## ZIP-FIT", "## In-Context Pretraining",
                  "## Online domain reweighting", "## Data ablation by model merging", "## Mixture search")
ARM_TEXT = {
    "constant": "constant LR on the phase-1 pack (no decay)",
    "decay_phase1": "LR decay on the phase-1 pack (the schedule alone)",
    "anneal": "LR decay on the phase-2 blend (the product's anneal)",
    "anneal_no_replay": "LR decay on the phase-2 blend without replay",
}
MEAN = "mean"  # the overall row: bpb averaged over sources, every source weighing the same


def upsampled_sources(params: dict) -> list[str]:
    """Sources the phase-2 blend repeats more than once (mix.phase2.weights > 1)."""
    return sorted(s for s, w in params["mix"]["phase2"]["weights"].items() if float(w) > 1.0)


def arm_intervals(runs: list[dict]) -> dict[str, dict[str, Interval]]:
    """arm -> {source | MEAN: interval over that arm's seeds}."""
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in sorted(runs, key=lambda r: (r["arm"], r["seed"])):
        for source, v in r["bpb"].items():
            values[r["arm"]][source].append(v)
        values[r["arm"]][MEAN].append(r["bpb_mean"])
    return {arm: {s: t_interval(v) for s, v in by.items()} for arm, by in values.items()}


def paired_delta(runs: list[dict], arm: str, baseline: str, source: str) -> Interval | None:
    """Interval of (arm - baseline) over the seeds both ran: same seed, same phase-1 checkpoint."""
    by = {(r["arm"], r["seed"]): (r["bpb_mean"] if source == MEAN else r["bpb"][source]) for r in runs}
    seeds = sorted(s for a, s in by if a == arm and (baseline, s) in by)
    return t_interval([by[arm, s] - by[baseline, s] for s in seeds]) if seeds else None


def compare(runs: list[dict], intervals: dict, better: str, worse: str, source: str) -> dict:
    """Does ``better`` have lower bpb than ``worse`` on ``source``? The verdict reads the two arms' own
    intervals (non-overlap); the paired delta is reported beside it."""
    a, b = intervals[better][source], intervals[worse][source]
    verdict = lower_is_shown(a, b)
    delta = paired_delta(runs, better, worse, source)
    if verdict == SHOWN:
        why = "the intervals do not overlap"
    elif math.isnan(a.half_width) or math.isnan(b.half_width):
        why = "one seed: no interval to compare"
    elif a.mean >= b.mean:
        why = f"the mean goes the other way ({a.mean - b.mean:+.4f} bpb)"
    else:
        why = (f"the difference of means ({a.mean - b.mean:+.4f}) is within the seed spread "
               f"(+-{a.half_width:.4f} and +-{b.half_width:.4f})")
    return {"better": better, "worse": worse, "source": source, "verdict": verdict, "why": why,
            "better_interval": a.as_dict(), "worse_interval": b.as_dict(),
            "paired_delta": delta.as_dict() if delta else None}


def share_change(token_share: dict | None, source: str) -> str:
    """ "token share 11.5% -> 8.9%": the source's share of the phase-1 vs the phase-2 pack."""
    if not token_share or "phase1" not in token_share or "phase2" not in token_share:
        return ""
    return f"; token share {token_share['phase1'].get(source, 0):.1%} → {token_share['phase2'].get(source, 0):.1%}"


def claims(runs: list[dict], intervals: dict, params: dict, token_share: dict | None = None) -> list[dict]:
    out = []
    if {"constant", "decay_phase1"} <= set(intervals):
        out.append({"claim": "LR decay beats a constant LR (same data, same steps)",
                    **compare(runs, intervals, "decay_phase1", "constant", MEAN)})
    if {"constant", "anneal"} <= set(intervals):
        out.append({"claim": "the product's anneal beats a constant LR", **compare(runs, intervals, "anneal", "constant", MEAN)})
    if {"decay_phase1", "anneal"} <= set(intervals):
        for source in upsampled_sources(params):
            if source in intervals["anneal"]:
                weight = params["mix"]["phase2"]["weights"][source]
                out.append({"claim": f"phase-2 upsampling improves {source} (phase-2 weight {weight}"
                                     f"{share_change(token_share, source)}) over decay on phase-1 data",
                            **compare(runs, intervals, "anneal", "decay_phase1", source)})
        out.append({"claim": "the phase-2 blend improves mean held-out bpb over decay on phase-1 data",
                    **compare(runs, intervals, "anneal", "decay_phase1", MEAN)})
    if {"anneal", "anneal_no_replay"} <= set(intervals):
        out.append({"claim": "replaying phase-1 data in the anneal improves mean held-out bpb",
                    **compare(runs, intervals, "anneal", "anneal_no_replay", MEAN)})
    return out


def sweep_table(runs: list[dict], intervals: dict, main_config: dict) -> list[dict]:
    """The product's arm by decay length x shape: the main `anneal` arm is the default cell."""
    from pipelines.experiments.science import sweep_name

    cells = []
    default = (float(main_config["anneal_fraction"]), main_config["decay_shape"])
    for r in runs:
        if r["anneal_data"] != "phase2" or r["arm"] not in intervals:
            continue
        cell = (r["decay_fraction"], r["decay_shape"])
        name = "anneal" if cell == default else sweep_name(*cell)
        if name == r["arm"] and all(c["arm"] != name for c in cells):
            cells.append({"arm": name, "decay_fraction": cell[0], "decay_shape": cell[1], "default": cell == default,
                          "bpb_mean": intervals[name][MEAN].as_dict()})
    return sorted(cells, key=lambda c: (c["decay_fraction"], c["decay_shape"]))


def best_sweep_cell(runs: list[dict], cells: list[dict], intervals: dict) -> dict | None:
    """The sweep cell with the lowest mean over the seeds every cell ran, compared with the default."""
    if len(cells) < 2:
        return None
    seeds = set.intersection(*({r["seed"] for r in runs if r["arm"] == c["arm"]} for c in cells))
    common = [r for r in runs if r["seed"] in seeds]
    common_iv = arm_intervals(common)
    best = min(cells, key=lambda c: common_iv[c["arm"]][MEAN].mean)
    default = next((c for c in cells if c["default"]), None)
    result = {"arm": best["arm"], "seeds": sorted(seeds), "decay_fraction": best["decay_fraction"],
              "decay_shape": best["decay_shape"], "is_default": best["default"]}
    if default is not None and not best["default"]:
        result["vs_default"] = compare(common, common_iv, best["arm"], default["arm"], MEAN)
    return result


def heldout_precision(runs: list[dict]) -> dict[str, dict]:
    """Per source: held-out documents and the largest standard error of its bpb over the seeds."""
    out: dict[str, dict] = {}
    for r in runs:
        for source, e in (r.get("heldout_error") or {}).items():
            cur = out.setdefault(source, {"docs": e["docs"], "standard_error_max": 0.0})
            if not math.isnan(e["standard_error"]):
                cur["standard_error_max"] = max(cur["standard_error_max"], e["standard_error"])
    for cur in out.values():
        cur["docs_for_0.01"] = documents_for(cur["standard_error_max"], cur["docs"]) if cur["standard_error_max"] else None
    return dict(sorted(out.items()))


def wall_time(runs: list[dict]) -> dict:
    phase1 = {(r["seed"], r["phase1_s"]) for r in runs}  # one phase-1 run per (seed, session)
    return {"phase1_s": round(sum(s for _, s in phase1), 1), "branches_s": round(sum(r["train_s"] for r in runs), 1),
            "eval_s": round(sum(r["eval_s"] for r in runs), 1),
            "total_s": round(sum(s for _, s in phase1) + sum(r["train_s"] + r["eval_s"] for r in runs), 1)}


def paired_by_source(runs: list[dict], pairs: list[tuple[str, str]]) -> dict[str, dict]:
    """"arm - baseline" -> {source: paired delta interval}, largest mean first (every source and the mean)."""
    out = {}
    for arm, baseline in pairs:
        srcs = sorted({s for r in runs if r["arm"] == arm for s in r["bpb"]}) + [MEAN]
        deltas = {s: paired_delta(runs, arm, baseline, s) for s in srcs}
        deltas = {s: d.as_dict() for s, d in deltas.items() if d is not None}
        if deltas:
            out[f"{arm} - {baseline}"] = dict(sorted(deltas.items(), key=lambda kv: -kv[1]["mean"]))
    return out


def sessions(runs: list[dict]) -> list[dict]:
    """Which arms each session measured (``measured_at``; runs from before sessions were recorded: None),
    with that session's wall time."""
    by: dict = defaultdict(list)
    for r in runs:
        by[r.get("measured_at")].append(r)
    return [{"measured_at": at, "arms": {a: sum(1 for r in rs if r["arm"] == a) for a in sorted({r["arm"] for r in rs})},
             "wall_time": wall_time(rs)} for at, rs in sorted(by.items(), key=lambda kv: kv[0] or "")]


def reproduced(runs: list[dict]) -> dict[str, dict]:
    """Arms measured again over a cached run (``--rerun``): the largest |new - cached| bpb over sources and
    the mean, per arm."""
    out: dict[str, dict] = {}
    for r in runs:
        prev = r.get("previous")
        if not prev:
            continue
        diffs = [abs(r["bpb_mean"] - prev["bpb_mean"])] + [abs(v - prev["bpb"][s]) for s, v in r["bpb"].items()
                                                           if s in prev.get("bpb", {})]
        e = out.setdefault(r["arm"], {"runs": 0, "max_abs_diff": 0.0, "previous_measured_at": prev.get("measured_at")})
        e["runs"] += 1
        e["max_abs_diff"] = max(e["max_abs_diff"], max(diffs))
    return out


def summarize(runs: list[dict], params: dict, main_config: dict, total_steps: int,
              token_share: dict | None = None, superseded: list[dict] | None = None) -> dict:
    intervals = arm_intervals(runs)
    cells = sweep_table(runs, intervals, main_config)
    tp = params["train"]
    return {
        "setup": {"preset": tp["preset"], "model": tp.get("model"), "total_steps": total_steps,
                  "tokens_per_step": int(tp["micro_batch"]) * int(tp["grad_accum"]) * int(tp["seq_len"]),
                  "lr": tp["lr"], "min_lr": tp["min_lr"], "warmup_steps": tp["warmup_steps"],
                  "defaults_measured": main_config, "upsampled_sources": upsampled_sources(params),
                  "phase2_weights": params["mix"]["phase2"]["weights"],
                  "phase1_weights": params["mix"]["phase1"]["weights"],
                  "replay_fraction": params["mix"]["phase2"]["replay_fraction"],
                  "max_tokens_per_doc": params["evaluate"]["max_tokens_per_doc"],
                  "min_heldout_per_source": params["mix"].get("min_heldout_per_source")},
        "arms": {arm: {s: iv.as_dict() for s, iv in by.items()} | {"seeds": sorted(r["seed"] for r in runs if r["arm"] == arm)}
                 for arm, by in sorted(intervals.items())},
        "claims": claims(runs, intervals, params, token_share),
        "token_share": token_share,
        "sweep": cells,
        "sweep_best": best_sweep_cell(runs, cells, intervals),
        "heldout_precision": heldout_precision(runs),
        "wall_time": wall_time(runs),
        "sessions": sessions(runs),
        "paired_by_source": paired_by_source(runs, [("anneal", "decay_phase1")]),
        "reproduced": reproduced(runs),
        "superseded": {a: {"seeds": sorted(r["seed"] for r in superseded if r["arm"] == a),
                           "measured_at": sorted({r.get("measured_at") or "" for r in superseded if r["arm"] == a})}
                       for a in sorted({r["arm"] for r in superseded or []})},
        "runs": sorted(runs, key=lambda r: (r["arm"], r["seed"])),
    }


def bench_row(summary: dict, peak_rss_mb: float) -> dict | None:
    """The anneal-vs-constant row in bench/results' contract (ours = the product's anneal, anchor = constant
    LR, mean held-out bpb over seeds; ratio > 1 = the anneal is better), with the intervals beside it."""
    arms = summary["arms"]
    if not {"anneal", "constant"} <= set(arms):
        return None
    ours, anchor = arms["anneal"][MEAN], arms["constant"][MEAN]
    s = summary["setup"]
    return {"name": "anneal_vs_constant", "metric": "held-out bits-per-byte, mean over sources and seeds (lower is better)",
            "ours": round(ours["mean"], 5), "anchor": round(anchor["mean"], 5),
            "anchor_name": "constant LR on the phase-1 pack from the same phase-1 checkpoint, same steps",
            "ratio": round(anchor["mean"] / ours["mean"], 4),
            "input": f"demo data (dvc repro pack), preset {s['preset']}, {s['total_steps']} steps x "
                     f"{s['tokens_per_step']} tokens, {ours['n']} seeds; reports/science.md",
            "peak_rss_mb": round(peak_rss_mb, 1), "ours_ci95": ours["half_width"], "anchor_ci95": anchor["half_width"],
            "verdict": next((c["verdict"] for c in summary["claims"] if c["better"] == "anneal" and c["worse"] == "constant"), None),
            "producer": "python -m pipelines.experiments science"}


# ---------------------------------------------------------------- rendering

def _fmt(iv: dict) -> str:
    return f"{iv['mean']:.4f} ± {iv['half_width']:.4f}" if iv["half_width"] is not None else f"{iv['mean']:.4f} (1 seed)"


def figure(summary: dict) -> bytes | None:
    """Left: each main arm's bpb per source minus the constant arm's mean, with 95% intervals. Middle: each
    claim's paired delta (same seed). Right: the sweep's mean bpb by decay length, one line per shape."""
    from pipelines.versions.figures import _png, _pyplot

    arms = [a for a in MAIN_ARMS if a in summary["arms"]]
    if "constant" not in arms:
        return None
    plt = _pyplot()
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(19, 4.8), gridspec_kw={"width_ratios": [2, 1.3, 1]})
    sources = [s for s in summary["arms"]["constant"] if s not in ("seeds", MEAN)] + [MEAN]
    width = 0.8 / len(arms)
    for i, arm in enumerate(arms):
        xs = [j + (i - (len(arms) - 1) / 2) * width for j in range(len(sources))]
        ys = [summary["arms"][arm][s]["mean"] - summary["arms"]["constant"][s]["mean"] for s in sources]
        err = [summary["arms"][arm][s]["half_width"] or 0.0 for s in sources]
        left.errorbar(xs, ys, yerr=err, fmt="o", capsize=3, label=arm)
    left.axhline(0, color="grey", lw=0.8)
    left.set_xticks(range(len(sources)), sources, rotation=30, ha="right")
    left.set_ylabel("bpb − constant-LR mean (lower is better)")
    left.set_title("Anneal ablation: mean ± 95% CI over seeds")
    left.legend(fontsize=8)
    paired = [c for c in summary["claims"] if c["paired_delta"] and c["paired_delta"]["half_width"] is not None]
    labels = [f"{c['better']} − {c['worse']} ({c['source']})" for c in paired]
    middle.errorbar([c["paired_delta"]["mean"] for c in paired], range(len(paired)),
                    xerr=[c["paired_delta"]["half_width"] for c in paired], fmt="o", capsize=3)
    middle.axvline(0, color="grey", lw=0.8)
    middle.set_yticks(range(len(paired)), labels, fontsize=8)
    middle.invert_yaxis()
    middle.set_xlabel("paired bpb delta, same seed (< 0: the first arm is better)")
    middle.set_title("Claims, paired over seeds (95% CI)")
    for shape in sorted({c["decay_shape"] for c in summary["sweep"]}):
        cells = [c for c in summary["sweep"] if c["decay_shape"] == shape]
        right.errorbar([c["decay_fraction"] * 100 for c in cells], [c["bpb_mean"]["mean"] for c in cells],
                       yerr=[c["bpb_mean"]["half_width"] or 0.0 for c in cells], fmt="o-", capsize=3, label=shape)
    right.set_xlabel("decay length, % of steps")
    right.set_ylabel("mean held-out bpb")
    right.set_title("Product's anneal: length × shape")
    if summary["sweep"]:
        right.legend(fontsize=8)
    fig.tight_layout()  # the claim labels of the middle panel need room
    return _png(fig)


def relative_weights(setup: dict) -> str:
    """ "wikipedia x3.0, books x2.0, ...": each phase-2 weight over the source's phase-1 weight."""
    import fnmatch

    def phase1(src: str) -> float:
        return next((float(w) for pat, w in setup["phase1_weights"].items() if fnmatch.fnmatch(src, pat)), 1.0)

    ratios = {src: float(w) / phase1(src) for src, w in setup["phase2_weights"].items() if phase1(src) > 0}
    return ", ".join(f"{src} x{r:g}" for src, r in sorted(ratios.items(), key=lambda kv: -kv[1]))


def paired_note(claim: dict) -> str:
    """Whether the paired delta's interval excludes 0 when the arms' own intervals overlap: a consistent
    effect smaller than the seed-to-seed spread of absolute bpb."""
    d = claim["paired_delta"]
    if claim["verdict"] == SHOWN or not d or d["half_width"] is None:
        return ""
    if d["high"] < 0:
        return (" The paired delta's interval lies below 0: the same seed's arm is lower every time, but the "
                "spread of absolute bpb across seeds (init and data order) is larger than the effect, so by the "
                "report's rule it is not shown.")
    if d["low"] > 0:
        return " The paired delta's interval lies above 0: at this scale it is the other way round."
    return ""


def side(claim: dict) -> str:
    """ "; paired interval below 0" when the paired delta excludes 0 (either side)."""
    d = claim["paired_delta"]
    if not d or d["half_width"] is None:
        return ""
    return "; paired interval below 0" if d["high"] < 0 else "; paired interval above 0" if d["low"] > 0 else ""


def reading(summary: dict) -> list[str]:
    """What the numbers say, claim by claim, in sentences built from the verdicts (no hand-written numbers)."""
    out = []
    by = {(c["better"], c["worse"], c["source"]): c for c in summary["claims"]}
    decay = by.get(("decay_phase1", "constant", MEAN))
    if decay:
        d = decay["paired_delta"]
        out.append(f"- **Decay vs constant LR** ({decay['verdict']}): decaying the LR over the last "
                   f"{float(summary['setup']['defaults_measured']['anneal_fraction']):.0%} of the steps on the same data "
                   f"changes mean held-out bpb by {_fmt(d)} (paired over seeds). This is the WSD claim; "
                   + ("it holds at this scale." if decay["verdict"] == SHOWN else "at this scale it is not separated "
                      "from the seed spread.") + paired_note(decay))
    blend = by.get(("anneal", "decay_phase1", MEAN))
    if blend:
        shares = summary.get("token_share") or {}
        diluted = [src for src in summary["setup"]["upsampled_sources"]
                   if shares and shares["phase2"].get(src, 0) < shares["phase1"].get(src, 0)]
        out.append(f"- **Phase-2 blend vs decay on phase-1 data** ({blend['verdict']}): the product's blend changes mean "
                   f"bpb by {_fmt(blend['paired_delta'])} against the same decay on the phase-1 pack."
                   + paired_note(blend))
        per_source = [by[("anneal", "decay_phase1", src)] for src in summary["setup"]["upsampled_sources"]
                      if ("anneal", "decay_phase1", src) in by]
        if per_source:
            out.append("  Per source with phase-2 weight > 1 (paired delta, anneal − decay on phase-1 data): "
                       + "; ".join(f"{c['source']} {_fmt(c['paired_delta'])} ({c['verdict']}{side(c)})"
                                   for c in per_source) + ".")
        every = summary.get("paired_by_source", {}).get("anneal - decay_phase1")
        if every:
            out.append("  Every source, paired delta (anneal − decay on phase-1 data), largest rise first: "
                       + "; ".join(f"{src} {_fmt(iv)}" for src, iv in every.items()) + ".")
        if diluted:
            out.append(f"  Measured explanation: `mix.phase2.weights` repeat records, and every source is repeated, so "
                       f"what counts is a source's *share* of the anneal's tokens. {', '.join(diluted)} "
                       f"{'has' if len(diluted) == 1 else 'have'} phase-2 weight > 1 but a *smaller* token share in the "
                       "phase-2 pack than in the phase-1 pack (table above): relative to their phase-1 weights the "
                       f"phase-2 weights are {relative_weights(summary['setup'])}, so the sources repeated most dilute "
                       "the others. Only a source whose share rises is upsampled in the sense of the papers.")
    replay = by.get(("anneal", "anneal_no_replay", MEAN))
    if replay:
        out.append(f"- **Replay** ({replay['verdict']}): with vs without the replay slice, mean bpb changes by "
                   f"{_fmt(replay['paired_delta'])}." + paired_note(replay))
    best = summary.get("sweep_best")
    if best:
        if best["is_default"]:
            out.append("- **Decay length and shape**: the default has the lowest mean of the sweep.")
        else:
            v = best["vs_default"]
            d = summary["setup"]["defaults_measured"]
            out.append(f"- **Decay length and shape**: `{best['arm']}` has the lowest mean "
                       f"({_fmt(v['paired_delta'])} paired vs the default): {v['verdict']}. "
                       + (f"The default ({float(d['anneal_fraction']):.0%}, {d['decay_shape']}) should move to it."
                          if v["verdict"] == SHOWN else
                          f"The defaults stay ({float(d['anneal_fraction']):.0%} of the steps, {d['decay_shape']}): "
                          "no cell is shown better."))
    prec = summary.get("heldout_precision") or {}
    if prec:
        under = [src for src, e in prec.items() if e["standard_error_max"] < 0.01]
        out.append(f"- **Held-out precision**: {len(under)} of {len(prec)} sources reach a standard error under 0.01 "
                   f"({', '.join(under) or 'none'}); the bundled samples hold too few documents for the rest (every "
                   "document available is used, up to half of a small source; the table below gives how many each "
                   "would need, which sets `mix.min_heldout_per_source` for a real corpus). All arms are scored on the same "
                   "documents, so the set's own error is shared by the arms and mostly cancels in their differences; "
                   "the seed spread is what the intervals measure.")
    return out


def provenance(summary: dict) -> list[str]:
    """Which session measured which arms (and its wall time), which arms were re-measured and reproduced, and
    which cached arms were superseded by a data change and are not in this report."""
    out = []
    for sess in summary.get("sessions") or []:
        wt = sess["wall_time"]
        when = sess["measured_at"] or "an earlier session (before runs recorded their session)"
        reused = " (the phase-1 checkpoints of an earlier session reused)" if wt["phase1_s"] < 1 else ""
        out.append(f"  - Measured {when}: {', '.join(f'{a} ({n} seeds)' for a, n in sess['arms'].items())}; "
                   f"{wt['total_s'] / 60:.1f} min (phase 1 {wt['phase1_s'] / 60:.1f}{reused}, branches "
                   f"{wt['branches_s'] / 60:.1f}, scoring {wt['eval_s'] / 60:.1f}).")
    for arm, e in (summary.get("reproduced") or {}).items():
        out.append(f"  - `{arm}` re-measured over {e['runs']} cached runs: largest |difference| in bpb over sources "
                   f"and the mean {e['max_abs_diff']:.2e}"
                   + (" (reproduced: same data, same phase-1 checkpoints)." if e["max_abs_diff"] < 1e-6 else "."))
    sup = summary.get("superseded") or {}
    current = set(summary["arms"])
    redone = [a for a in sup if a in current]
    gone = [a for a in sup if a not in current]
    if redone:
        out.append(f"  - Re-run on the current data, replacing runs on earlier data: {', '.join(f'`{a}`' for a in redone)}.")
    if gone:
        out.append("  - Not in this report (their training data changed since they were measured, and they were not "
                   f"re-run): {', '.join(f'`{a}`' for a in gone)}.")
    if sup:
        out.append("  The replaced runs stay in models/science/runs.json under `superseded`.")
    return out


def markdown(summary: dict, png_name: str | None) -> str:
    s = summary["setup"]
    seeds = {a: len(v["seeds"]) for a, v in summary["arms"].items()}
    wt = summary["wall_time"]
    lines = [
        "# Science you can trust: does the anneal do what the product claims?",
        "",
        "Generated by `python -m pipelines.experiments science` (pipelines/experiments/science.py); numbers in "
        "`reports/science.json`. Every number is a mean over seeds ± the half-width of its 95% interval "
        "(t-distribution, n−1 degrees of freedom). A claim is **shown** only when the two arms' intervals do not "
        "overlap; otherwise it is *not shown at this scale*. The paired delta (same seed, same phase-1 checkpoint) "
        "is given beside it: it removes the seed-to-seed spread the arms share, so it is the sharper measurement, "
        "but the verdict does not use it.",
        "",
        "## What the papers claim",
        "",
        "- **WSD / decay** (Hu et al. 2024, MiniCPM; Hägele et al. 2024, *Scaling Laws and Compute-Optimal Training "
        "Beyond Fixed Training Durations*): a constant LR followed by a short decay (10–20% of the steps) matches "
        "a cosine schedule; the decay itself gives a large drop in loss; 1-sqrt beats linear decay.",
        "- **Two-phase / mid-training** (Feng et al. 2024, *Maximize Your Data's Potential: Enhancing LLM Accuracy "
        "with Two-Phase Pretraining*; OLMo 2, 2024): upsampling high-quality sources in the last 10–20% of training, "
        "with replay of the phase-1 mix, improves the model beyond what the decay alone gives.",
        "",
        "## Setup",
        "",
        f"- Model: preset `{s['preset']}` (the product's default), {s['total_steps']} optimizer steps per arm × "
        f"{s['tokens_per_step']} tokens, LR {s['lr']} → {s['min_lr']}, {s['warmup_steps']} warmup steps; "
        f"1 CPU thread, deterministic given the seed.",
        f"- Seeds per arm: {', '.join(f'{a} {n}' for a, n in sorted(seeds.items()))}. A seed sets the model's init "
        "and the data order; every arm of a seed branches from the same phase-1 checkpoint and ends on the same step.",
        f"- Phase-2 blend (the product's params): weights {s['phase2_weights']}, replay fraction "
        f"{s['replay_fraction']}; upsampled sources: {', '.join(s['upsampled_sources'])}. The rule "
        "(docs/params.md): a phase-2 weight multiplies the source's phase-1 share; the sources with weight ≤ 1 "
        "fill the rest.",
        f"- Held-out: every held-out document of every source (`mix.min_heldout_per_source: "
        f"{s['min_heldout_per_source']}`), first {s['max_tokens_per_doc']} tokens of each.",
        f"- Wall time of the heavy runs: {wt['total_s'] / 60:.1f} min on 1 thread of a shared 2-core CPU "
        f"(phase 1 {wt['phase1_s'] / 60:.1f} min, branches {wt['branches_s'] / 60:.1f} min, "
        f"scoring {wt['eval_s'] / 60:.1f} min), over the sessions below.",
        *provenance(summary),
        "",
        "## Claims",
        "",
        "| claim | arm (mean ± CI) | baseline (mean ± CI) | paired delta | verdict | why |",
        "|---|---|---|---|---|---|",
    ]
    for c in summary["claims"]:
        d = c["paired_delta"]
        lines.append(f"| {c['claim']} | {c['better']}: {_fmt(c['better_interval'])} | {c['worse']}: "
                     f"{_fmt(c['worse_interval'])} | {_fmt(d) if d else '–'} | **{c['verdict']}** | {c['why']} |")
    lines += ["", "## Arms (bits per byte, lower is better)", ""]
    main = [a for a in MAIN_ARMS if a in summary["arms"]]
    if main:
        sources = [k for k in summary["arms"][main[0]] if k != "seeds"]
        lines += ["| source | " + " | ".join(main) + " |", "|---|" + "---|" * len(main)]
        for src in sources:
            lines.append(f"| {src} | " + " | ".join(_fmt(summary["arms"][a][src]) for a in main) + " |")
        lines += ["", *(f"- `{a}`: {ARM_TEXT[a]}" for a in main)]
    shares = summary.get("token_share")
    if shares and main:
        names = {"phase1": "phase-1 pack (constant, decay_phase1)", "phase2": "phase-2 pack (anneal)",
                 "phase2_no_replay": "phase-2 without replay"}
        lines += ["", "What each arm trains on after the branch point: each source's share of the tokens "
                  f"({s['total_steps'] - round(s['total_steps'] * (1 - float(s['defaults_measured']['anneal_fraction'])))}"
                  f" steps × {s['tokens_per_step']} tokens at the default decay length).", "",
                  "| source | " + " | ".join(names[k] for k in shares) + " |", "|---|" + "---|" * len(shares)]
        for src in sorted(next(iter(shares.values()))):
            lines.append(f"| {src} | " + " | ".join(f"{shares[k].get(src, 0.0):.1%}" for k in shares) + " |")
    if png_name:
        lines += ["", f"![anneal ablation]({png_name})"]
    if summary["sweep"]:
        lines += ["", "## Decay length × shape (the product's arm)", "",
                  "| decay length | shape | mean bpb | seeds |", "|---|---|---|---|"]
        for c in summary["sweep"]:
            lines.append(f"| {round(c['decay_fraction'] * 100)}% | {c['decay_shape']}{' (default)' if c['default'] else ''}"
                         f" | {_fmt(c['bpb_mean'])} | {c['bpb_mean']['n']} |")
        best = summary["sweep_best"]
        if best:
            lines.append("")
            if best["is_default"]:
                lines.append(f"Lowest mean over seeds {best['seeds']}: the default ({best['arm']}).")
            else:
                v = best["vs_default"]
                lines.append(f"Lowest mean over seeds {best['seeds']}: `{best['arm']}` "
                             f"({_fmt(v['better_interval'])} vs the default's {_fmt(v['worse_interval'])}, paired delta "
                             f"{_fmt(v['paired_delta'])}): **{v['verdict']}** ({v['why']}).")
    lines += ["", "## Reading", "", *reading(summary)]
    prec = summary["heldout_precision"]
    if prec:
        lines += ["", "## How precise is the held-out set?", "",
                  "Standard error of each source's bpb over its held-out documents (delta method for a ratio of sums; "
                  "the largest over the seeds, on the `anneal` model). Target: under 0.01.", "",
                  "Documents for 0.01: the held-out documents the source would need, the error falling as "
                  "1/sqrt(documents) drawn like these (`mix.min_heldout_per_source` sets the floor per source; "
                  "a real corpus can afford it, the bundled samples cannot).", "",
                  "| source | documents | standard error | under 0.01 | documents for 0.01 |", "|---|---|---|---|---|"]
        for src, e in prec.items():
            need = e.get("docs_for_0.01")
            lines.append(f"| {src} | {e['docs']} | {e['standard_error_max']:.4f} | "
                         f"{'yes' if e['standard_error_max'] < 0.01 else 'no'} | {need if need else 'n/a'} |")
    return "\n".join(lines) + "\n"


def write(summary: dict, out: Path) -> None:
    """``out``.json (everything), ``out``.png (the figure) and ``out``.md (the report)."""
    write_json_atomic(out.with_suffix(".json"), summary)
    png = figure(summary)
    if png:
        write_bytes_atomic(out.with_suffix(".png"), png)
    text = markdown(summary, out.with_suffix(".png").name if png else None)
    old = out.with_suffix(".md").read_text() if out.with_suffix(".md").exists() else ""
    for title in OTHER_SECTIONS:
        start = old.find(title)
        if start >= 0:
            end = old.find("\n## ", start + len(title))
            text = text.rstrip("\n") + "\n\n" + (old[start:end + 1] if end >= 0 else old[start:])
    write_bytes_atomic(out.with_suffix(".md"), text.encode())


def upsert_section(path: Path, title: str, text: str) -> None:
    """Replace the section ``title`` of ``path`` with ``text`` (or append it), leaving every other section as it is."""
    old = path.read_text() if path.exists() else ""
    start = old.find(title + "\n")  # the whole heading line: "## Step Law" is not "## Step Law 2"
    if start < 0:
        new = old.rstrip("\n") + ("\n\n" if old else "") + text
    else:
        nxt = old.find("\n## ", start + len(title))
        new = old[:start] + text + (old[nxt:] if nxt >= 0 else "")
    write_bytes_atomic(path, new.encode())
