"""``python -m pipelines.mixture.report``: the evidence for the mixture search at demo size.

Runs the search (``mixture.enabled`` forced on) in the current workspace (needs
``data/select``), then re-trains proxies at fresh seeds on three mixtures, the
searched one, uniform over domains and the natural distribution (the pool's own
token shares), and writes ``reports/mixture.md``, ``reports/mixture_weights.png``
and ``reports/mixture_eval.json``. Scores are measured, never assumed: if the
searched mixture does not beat uniform at this scale, the report says so.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time

import numpy as np

from pipelines.config import load_params, resolve
from pipelines.core.atomic import write_json_atomic
from pipelines.core.executor import get_executor
from pipelines.mixture import search

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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default=None)
    ap.add_argument("--seeds", type=int, default=2, help="fresh proxy seeds per compared mixture")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    params = load_params(args.params)
    params["mixture"] = {**(params.get("mixture") or {}), "enabled": True}
    started = time.monotonic()
    search.run(params)
    searched_s = time.monotonic() - started
    doc = json.loads((resolve(search.OUT_DIR) / search.MIXTURE).read_text())
    names = doc["domains"]
    mixtures = {"searched": doc["phase1_weights"], "uniform": {d: 1 / len(names) for d in names},
                "natural": doc["natural_weights"]}
    base = int(params.get("seed", 0))
    jobs = [(params, m, w, base + 1000 + k) for m, w in mixtures.items() for k in range(args.seeds)]
    evals = get_executor(params.get("executor")).map(_eval_job, jobs)
    total_s = time.monotonic() - started
    summary = {m: {"bpb_mean": [e["bpb_mean"] for e in evals if e["mixture"] == m]} for m in mixtures}
    for m, v in summary.items():
        v["mean"], v["std"] = float(np.mean(v["bpb_mean"])), float(np.std(v["bpb_mean"]))
    out = resolve(REPORT_DIR)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "mixture_eval.json", {"summary": summary, "evals": evals, "search_seconds": searched_s,
                                                  "total_seconds": total_s,
                                                  "predictor": doc["predictor"]["comparison"]})
    bar_chart(doc, out / "mixture_weights.png")
    s, u, n = summary["searched"]["mean"], summary["uniform"]["mean"], summary["natural"]["mean"]
    beats = s < u
    margin = max(summary["searched"]["std"], summary["uniform"]["std"])
    verdict = ("searched beats uniform" if beats and u - s > margin else
               "searched is not clearly better than uniform (difference within seed spread)" if beats else
               "searched does NOT beat uniform")
    comp = doc["predictor"]["comparison"]
    lines = [
        "# Mixture search (CLIMB-style) at demo size", "",
        f"Target: {doc['target']}. Proxy: {doc['config']['proxy']}. "
        f"{len(doc['candidates'])} candidates over {doc['config']['rounds']} rounds; "
        f"domains: {', '.join(names)} (embedder: {doc['config']['embedder']}).", "",
        f"Search took {searched_s:.0f} s, search + comparison {total_s:.0f} s (2 shared cores).", "",
        "## Searched vs uniform vs natural (fresh proxy seeds)", "",
        "| mixture | bpb_mean per seed | mean | std |", "|---|---|---|---|",
        *[f"| {m} | {', '.join(f'{x:.4f}' for x in v['bpb_mean'])} | {v['mean']:.4f} | {v['std']:.4f} |"
          for m, v in summary.items()], "",
        f"**Verdict: {verdict}** (searched {s:.4f} vs uniform {u:.4f} vs natural {n:.4f}; lower is better).", "",
        "## Predictors (leave-one-out over all measured candidates)", "",
        "| predictor | Spearman rank correlation |", "|---|---|",
        *[f"| {k} | {v['spearman_loo']:.3f} |" for k, v in comp.items()], "",
        "## Weights", "", "![weights](mixture_weights.png)", "",
        "| domain | searched | natural | uniform |", "|---|---|---|---|",
        *[f"| {d} | {doc['phase1_weights'][d]:.3f} | {doc['natural_weights'][d]:.3f} | {1 / len(names):.3f} |"
          for d in names], "",
        "## Candidates", "", "| name | measured bpb_mean | predicted (LightGBM, in-sample) |", "|---|---|---|",
        *[f"| {c['name']} | {c['bpb_mean']:.4f} | {c['predicted_bpb_mean']:.4f} |" for c in doc["candidates"]], "",
    ]
    (out / "mixture.md").write_text("\n".join(lines))
    print("\n".join(lines[:20]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
