"""Does ZIP-FIT (``select.method: zipfit``) give a better model than the quality classifier's top-k?
-> reports/zipfit.json and the "ZIP-FIT" section of reports/science.md.

Two arms, differing only in how select chooses the web records it keeps (the same share each way):

  quality_topk  the product's default: the in-stage n-gram classifier's top ``web_keep_fraction``
  zipfit        ZIP-FIT (Obbad et al. 2024, arXiv:2410.18194): the records most aligned, by gzip
                normalized compression distance, with a seeded sample of the target sources

For each arm the data is built in a scratch workspace (``select -> mix -> pack``, the stages' own CLIs,
on this workspace's ``data/dedup``), then the tiny proxy is trained for the product's phase-1 steps
(``train.phase1_steps``, phase 1 only) per seed on 1 CPU thread and scored with the evaluate stage's bits
per byte. Both arms are scored on the *same* held-out documents: the union of the two arms' held-out
splits less every record either arm trains on (the split is by id hash, but its top-up to
``mix.min_heldout_per_source`` depends on which web records select kept). The claim is shown only when
the arms' 95% intervals over seeds do not overlap (pipelines/experiments/_ci.py); the paired delta (same
seed: same init) is reported beside it.

``python -m pipelines.experiments zipfit [--seeds 3] [--steps N] [--report-only]`` in a workspace with
``data/dedup`` (``dvc repro dedup``). Not part of the test suite: about 20 minutes on 1 CPU thread.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import yaml

from pipelines import stages
from pipelines.config import load_params, resolve, section
from pipelines.core.atomic import write_json_atomic
from pipelines.core.shards import read_all
from pipelines.evaluate.stage import evaluate_checkpoint
from pipelines.experiments._branches import in_workspace, make_workspace
from pipelines.experiments._ci import lower_is_shown, t_interval
from pipelines.experiments._report import upsert_section
from pipelines.experiments._two_arms import fmt
from pipelines.experiments.science import experiment_params
from pipelines.train.loop import train_phase

log = logging.getLogger(__name__)
SCRATCH = "models/zipfit"
ARMS = ("quality_topk", "zipfit")
BASE, NEW = ARMS
SECTION = "## ZIP-FIT"
MEAN = "mean"
BUILD = ("select", "mix", "pack")


def arm_params(params: dict, arm: str) -> dict:
    p = copy.deepcopy(params)
    p["select"]["method"] = arm
    return p


def build_arm(arm: str, params: dict, dedup: Path, root: Path) -> dict:
    """select -> mix -> pack of one arm in a scratch workspace on ``dedup``; their wall times."""
    if root.exists():
        shutil.rmtree(root)
    (root / "data").mkdir(parents=True)
    (root / "data" / "dedup").symlink_to(dedup.resolve(), target_is_directory=True)
    (root / "params.yaml").write_text(yaml.safe_dump(arm_params(params, arm), sort_keys=False))
    code = str(Path(__file__).resolve().parents[2])  # this checkout's pipelines, not an installed copy
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [code, os.environ.get("PYTHONPATH")])),
           "PIPELINES_WORKSPACE": str(root), "PIPELINES_WORKERS": "1", "OMP_NUM_THREADS": "1",
           "RAYON_NUM_THREADS": "1"}
    times = {}
    for stage in BUILD:
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "pipelines", stage], cwd=root, env=env, check=True)
        times[stage] = round(time.time() - t0, 1)
    return times


def _ids(directory: Path) -> set[str]:
    return set(read_all(directory, columns=["id"]).column("id").to_pylist()) if directory.exists() else set()


def common_heldout(roots: dict[str, Path]) -> dict[str, list[str]]:
    """Held-out texts per source that no arm trains on: the union of the arms' held-out splits less every
    id in any arm's phase-1 or phase-2 blend."""
    trained, held = set(), {}
    for root in roots.values():
        mix = stages.output_dir("mix", root)
        trained |= _ids(mix / "phase1") | _ids(mix / "phase2")
        for r in read_all(mix / "heldout", columns=["id", "source", "text"]).to_pylist():
            held[r["id"]] = r
    docs: dict[str, list[str]] = {}
    for rid in sorted(held):
        r = held[rid]
        if rid not in trained and r["text"]:
            docs.setdefault(r["source"], []).append(r["text"])
    return dict(sorted(docs.items()))


def selection_summary(roots: dict[str, Path], keep_sources: set[str]) -> dict:
    """Per arm: web records kept, the KL reduction towards the target n-gram model; and the kept web sets' overlap."""
    out, kept = {}, {}
    for arm, root in roots.items():
        sel = stages.output_dir("select", root)
        manifest = json.loads((sel / "_manifest.json").read_text())
        q, s = manifest["quality"], manifest["selection"]
        t = read_all(sel, columns=["id", "source"]).to_pylist()
        kept[arm] = {r["id"] for r in t if r["source"] not in keep_sources}
        out[arm] = {"web_records": q["web_records"], "web_kept": q["web_kept"],
                    "kl_reduction": s.get("kl_reduction"), **({"zipfit": s["zipfit"]} if "zipfit" in s else {})}
    target = json.loads((stages.output_dir("select", roots[NEW]) / "zipfit_target.json").read_text())["ids"]
    source_of = {r["id"]: r["source"] for r in read_all(stages.output_dir("select", roots[NEW]),
                                                         columns=["id", "source"]).to_pylist()}
    out[NEW]["target_sample_sources"] = dict(sorted(Counter(source_of.get(i, "?") for i in target).items()))
    a, b = kept[BASE], kept[NEW]
    out["kept_web_overlap"] = {"both": len(a & b), "only_" + BASE: len(a - b), "only_" + NEW: len(b - a),
                               "jaccard": len(a & b) / len(a | b) if a | b else None}
    return out


def run(arm: str, seed: int, params: dict, pack: Path, root: Path, docs: dict, ep: dict) -> dict:
    p = arm_params(params, arm)
    p["seed"] = seed
    work = root / f"train_seed{seed}"
    t0 = time.time()
    with in_workspace(make_workspace(work, p, pack, pack / "phase2")):
        train_phase(p, "phase1")
    train_s = time.time() - t0
    result = evaluate_checkpoint(work / "models" / "phase1", docs, ep, torch.device("cpu"))
    shutil.rmtree(work)
    return {"seed": seed, "arm": arm, "bpb": result["bpb"], "bpb_mean": result["bpb_mean"], "step": result["step"],
            "train_s": round(train_s, 1), "eval_s": round(time.time() - t0 - train_s, 1)}


def summarize(rows: list[dict]) -> dict:
    by_arm = {a: sorted((r for r in rows if r["arm"] == a), key=lambda r: r["seed"]) for a in ARMS}
    sources = sorted(by_arm[BASE][0]["bpb"])
    table, deltas, verdicts = {}, {}, {}
    for src in sources + [MEAN]:
        get = (lambda r: r["bpb_mean"]) if src == MEAN else (lambda r, s=src: r["bpb"][s])  # noqa: E731
        iv = {a: t_interval([get(r) for r in rs]) for a, rs in by_arm.items()}
        table[src] = {a: i.as_dict() for a, i in iv.items()}
        deltas[src] = t_interval([get(b) - get(a) for a, b in zip(by_arm[BASE], by_arm[NEW])]).as_dict()
        verdicts[src] = {"zipfit_better": lower_is_shown(iv[NEW], iv[BASE]),
                         "zipfit_worse": lower_is_shown(iv[BASE], iv[NEW])}
    return {"sources": sources, "bpb": table, "paired_delta_zipfit_minus_topk": deltas, "verdict": verdicts,
            "runs": by_arm, "train_wall_s": round(sum(r["train_s"] + r["eval_s"] for r in rows), 1)}


def _signed(i: dict) -> str:
    return f"{i['mean']:+.4f} ± {i['half_width']:.4f}" if i["half_width"] is not None else f"{i['mean']:+.4f}"


def markdown(result: dict) -> str:
    s, sel = result["summary"], result["selection"]
    targets = result["target_sources"]
    z = sel[NEW].get("zipfit", {})
    ov = sel["kept_web_overlap"]
    mean_v = s["verdict"][MEAN]
    lines = [
        SECTION,
        "",
        "`select.method: zipfit` against the product's default `quality_topk`, generated by `python -m pipelines.experiments "
        "zipfit` (pipelines/experiments/zipfit.py; numbers in `reports/zipfit.json`).",
        "",
        "**Paper's claim** (Obbad et al. 2024, *ZIP-FIT: Embedding-Free Data Selection via Compression-Based Alignment*, "
        "arXiv:2410.18194): selecting by gzip alignment with the target task (1 − mean normalized compression distance) "
        "gives a lower cross-entropy on the target task than DSIR and D4 at the same token budget, and converges faster, "
        "while the selection itself runs faster than those methods (no embeddings).",
        "",
        f"**Setup**: both arms select the same share of the web records (`web_keep_fraction` "
        f"{result['web_keep_fraction']}: {sel[BASE]['web_kept']} of {sel[BASE]['web_records']} for quality_topk, "
        f"{sel[NEW]['web_kept']} of {sel[NEW]['web_records']} for zipfit) from this workspace's `data/dedup`, then mix and "
        f"pack; the ZIP-FIT target is {z.get('target_records', '?')} records of {targets} (`select.zipfit.target_docs` "
        f"{z.get('target_docs', '?')}, `max_chars` {z.get('max_chars', '?')}). The two kept web sets share {ov['both']} "
        f"records ({ov['only_' + BASE]} only in quality_topk, {ov['only_' + NEW]} only in zipfit; Jaccard "
        f"{ov['jaccard']:.2f}). KL reduction towards the target n-gram model: quality_topk "
        f"{sel[BASE]['kl_reduction']:.4f}, zipfit {sel[NEW]['kl_reduction']:.4f} nats. Proxy: preset `tiny`, "
        f"{result['steps']} steps of phase 1 only{result['steps_note']}, 1 CPU thread, seeds {result['seeds']}. "
        f"Held-out: the documents neither arm trains on ({result['heldout_docs']} over {len(s['sources'])} sources). "
        f"Select wall time: quality_topk {result['build_s'][BASE]['select']} s, zipfit {result['build_s'][NEW]['select']} s "
        f"(whole stage, classifier training included in both). Total wall time {result['wall_s'] / 60:.1f} min.",
        "",
        "| source | quality_topk | zipfit | paired delta (zipfit − topk) | zipfit lower: |",
        "|---|---|---|---|---|",
    ]
    for src in s["sources"] + [MEAN]:
        b = s["bpb"][src]
        name = f"**{src}**" if src == MEAN else (f"{src} (target)" if src in targets else src)
        lines.append(f"| {name} | {fmt(b[BASE])} | {fmt(b[NEW])} | {_signed(s['paired_delta_zipfit_minus_topk'][src])} "
                     f"| {s['verdict'][src]['zipfit_better']} |")
    target_shown = [src for src in targets if s["verdict"].get(src, {}).get("zipfit_better") == "shown"]
    worse = [src for src in s["sources"] + [MEAN] if s["verdict"][src]["zipfit_worse"] == "shown"]
    d = s["paired_delta_zipfit_minus_topk"][MEAN]
    lines += [
        "",
        f"Bits per byte, mean ± the half-width of the 95% interval over seeds (lower is better). **Verdict: ZIP-FIT "
        f"beats the quality top-k on mean held-out bpb: {mean_v['zipfit_better']}**"
        f"{'' if not target_shown else f'; on the target sources {target_shown}: shown'}"
        f"{'' if not worse else f'; zipfit is *worse* (intervals apart) on {worse}'}. Paired mean delta {_signed(d)}.",
        "",
        result["reading"],
    ]
    return "\n".join(lines) + "\n"


def reading(result: dict) -> str:
    s, sel = result["summary"], result["selection"]
    changed = sel["kept_web_overlap"]["only_" + NEW]
    d = s["paired_delta_zipfit_minus_topk"]
    apart = {src: i for src, i in d.items() if i["half_width"] is not None and (i["low"] > 0 or i["high"] < 0)}
    held = result.get("heldout_docs_per_source", {})
    paired = ("No paired interval excludes zero either." if not apart else
              "The paired intervals (same seed, a sharper test the verdict does not use) exclude zero only for "
              + ", ".join(f"{src} ({_signed(i)}, zipfit {'worse' if i['low'] > 0 else 'better'}"
                          f"{f'; {held[src]} held-out documents' if src in held else ''})" for src, i in apart.items())
              + ".")
    kl_z, kl_t = sel[NEW]["kl_reduction"], sel[BASE]["kl_reduction"]
    return (f"Reading: the paper's claim (better target-task loss at the same token budget) is **not shown at this scale**: "
            f"on the target sources and on the mean the arms' intervals overlap and the mean moves by "
            f"{d[MEAN]['mean']:+.4f} bpb. {paired} The arms differ in {changed} of {sel[BASE]['web_records']} web records, "
            "a small slice of a blend dominated by the curated sources select never drops, so only a small effect was "
            "possible here; the paper selected from a large pool for a narrow target task (autoformalization, code) and "
            "compared against DSIR and D4, not against a quality classifier. ZIP-FIT's choice also moved the web set "
            f"*away* from the target sources' n-gram distribution (KL reduction {kl_z:+.4f} nats against "
            f"{kl_t:+.4f} for the classifier): gzip alignment rewards shared strings with the target sample "
            f"({', '.join(f'{n} {src}' for src, n in sel[NEW].get('target_sample_sources', {}).items())}), "
            "not the target's word distribution. Speed: the whole select stage took "
            f"{result['build_s'][NEW]['select']} s with zipfit against {result['build_s'][BASE]['select']} s with "
            "quality_topk on this data; per web record ZIP-FIT at the defaults costs about 6 ms on one core (64 gzip "
            "compressions of up to 2,000 characters, twice), far more than this repo's hashed DSIR (~4,000 records/s, "
            "docs/benchmarks.md), so the paper's speed claim (against DSIR's and D4's original implementations) does not "
            "carry over here. The default stays quality_topk.")


def write_report(result: dict, out: Path) -> None:
    result["reading"] = reading(result)
    write_json_atomic(out.with_suffix(".json"), result)
    upsert_section(resolve("reports/science.md"), SECTION, markdown(result))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.experiments zipfit", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=0, help="phase-1 steps (default: train.phase1_steps)")
    parser.add_argument("--out", default="reports/zipfit")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from its JSON")
    args = parser.parse_args(argv)
    out = resolve(args.out)
    if args.report_only:
        write_report(json.loads(out.with_suffix(".json").read_text()), out)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(1)
    started = time.time()
    params = experiment_params(load_params())
    product_steps = int(params["train"]["phase1_steps"])
    steps = args.steps or product_steps
    params["train"]["phase1_steps"] = steps
    ep = {**section(params, "evaluate"), "max_docs_per_source": 0, "device": "cpu"}
    params["evaluate"] = ep
    dedup = stages.output_dir("dedup")
    if not (dedup / "_manifest.json").exists():
        raise SystemExit(f"{dedup} has no finished dedup output: run `dvc repro dedup` (or the stages up to dedup) first")
    scratch = resolve(SCRATCH)
    roots = {arm: scratch / arm for arm in ARMS}
    build_s = {arm: build_arm(arm, params, dedup, roots[arm]) for arm in ARMS}
    docs = common_heldout(roots)
    rows = []
    for seed in range(1, args.seeds + 1):
        for arm in ARMS:
            rows.append(run(arm, seed, params, stages.output_dir("pack", roots[arm]), roots[arm], docs, ep))
            log.info("seed %d %s: bpb_mean %.4f", seed, arm, rows[-1]["bpb_mean"])
    result = {"steps": steps, "product_phase1_steps": product_steps,
              "steps_note": "" if steps == product_steps else f" (the product's phase 1 is {product_steps} steps)",
              "seeds": list(range(1, args.seeds + 1)), "web_keep_fraction": params["select"]["web_keep_fraction"],
              "target_sources": params["select"].get("dsir", {}).get("target_sources") or params["select"]["positive_sources"],
              "heldout_docs": sum(len(v) for v in docs.values()),
              "heldout_docs_per_source": {k: len(v) for k, v in docs.items()},
              "build_s": build_s, "selection": selection_summary(roots, set(params["select"].get("keep_sources") or [])), "summary": summarize(rows)}
    result["wall_s"] = round(time.time() - started, 1)
    write_report(result, out)
    print(json.dumps({k: result["summary"][k] for k in ("bpb", "verdict")}, indent=1)[:3000])
    return 0
