"""In-Context Pretraining (``pack.order: related``) against the input order -> reports/icp.json and the section
"In-Context Pretraining" of reports/science.md.

Paper: Shi et al. 2023, *In-Context Pretraining: Language Modeling Beyond Document Boundaries* (arXiv:2310.10638):
ordering the pretraining documents so that each is followed by related ones (kNN graph + greedy max-TSP) and
packing them into the same contexts improves in-context learning, reading comprehension, faithfulness to prior
context, long-context reasoning and retrieval-augmented tasks (7B LLaMA-style models, 300B tokens); perplexity
on ordinary text is about unchanged.

Arms (phase 1 of the product's run only: ICP orders phase 1; the anneal would be the same in both arms):

  input     pack.order: input (today's pack), and the trainer's cross-document attention on
  related   pack.order: related, the same trainer

Each arm's pack is rebuilt from the workspace's ``data/mix`` into a scratch workspace (the same trained
tokenizer: ``pack.tokenizer_dir`` is the workspace's), so the arms differ only in which documents share a
sequence. ICP only matters when a document can attend to the one before it, so both arms train with
``train.document_attention: across`` (the paper's setting: plain causal attention over the context); the
product's default masks attention per document, under which the document order within a sequence cannot reach
the model at all.

Scores, per (seed, arm), on the product's phase-1 checkpoint:

- held-out bits per byte per source and their mean (the evaluate stage's, every held-out document alone);
- **related pairs**: each held-out document B paired with its nearest other held-out document A (the pack's
  SimHash similarity, the same embedding as the ordering); bpb of B's first ``PAIR_TOKENS`` tokens after A's
  last tokens in one context (A ‖ EOS ‖ B) against B alone; the gain (alone − in context) is how much the
  model uses a related previous document, the paper's claim in miniature.

Claims are shown only when the arms' 95% intervals over seeds do not overlap (pipelines/experiments/_ci.py);
paired deltas (same seed) beside them.

``python -m pipelines.experiments icp [--seeds 3] [--steps 300]`` in a workspace with ``data/mix`` and
``data/pack`` (for the tokenizer). About 3 minutes per (seed, arm) on one CPU thread at 300 steps.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from pipelines import stages
from pipelines.config import load_params, resolve, section, workspace
from pipelines.core.atomic import write_bytes_atomic, write_json_atomic
from pipelines.evaluate.stage import evaluate_checkpoint, heldout_documents, load_checkpoint
from pipelines.experiments._branches import in_workspace
from pipelines.experiments._ci import NOT_SHOWN, lower_is_shown, t_interval
from pipelines.experiments.science import experiment_params
from pipelines.pack.related import signatures, similarity
from pipelines.train.loop import train_phase

log = logging.getLogger(__name__)
SCRATCH = "models/icp"
ARMS = ("input", "related")
SECTION = "## In-Context Pretraining"
PAIR_TOKENS = 96  # B's scored tokens; A fills the rest of the context
MEAN = "mean"


def build_pack(params: dict, order: str, root: Path) -> Path:
    """``root``/data/pack built by the product's pack stage from the workspace's ``data/mix`` with ``pack.order``
    = ``order``, reusing the workspace's tokenizer; reused while its params are unchanged."""
    ws = workspace()
    p = copy.deepcopy(params)
    p["pack"]["order"] = order
    p["pack"]["tokenizer_dir"] = str((ws / stages.output("pack") / "tokenizer").resolve())
    p["pack"]["mixture_audit"] = {**p["pack"].get("mixture_audit", {}), "enabled": False}
    p["executor"] = {**p.get("executor", {}), "workers": 1}
    out = root / stages.output("pack")
    stamp = root / "pack_params.yaml"
    if out.exists() and stamp.exists() and yaml.safe_load(stamp.read_text()) == p:
        return out
    if root.exists():
        shutil.rmtree(root)
    (root / "data").mkdir(parents=True)
    (root / stages.output("mix")).symlink_to((ws / stages.output("mix")).resolve(), target_is_directory=True)
    with in_workspace(root):
        stages.run("pack", p)
    stamp.write_text(yaml.safe_dump(p, sort_keys=False))
    return out


def related_pairs(docs: dict[str, list[str]]) -> list[tuple[str, str, str, float]]:
    """(source of B, A, B, similarity): every held-out document B with its most similar other held-out document
    A (any source; ties: the first), by the pack's signature. Pairs whose similarity is below the median of all
    pairs are dropped: the claim is about related documents."""
    flat = [(s, t) for s, texts in sorted(docs.items()) for t in texts]
    sig = signatures([t for _, t in flat])
    out = []
    for j, (source, text) in enumerate(flat):
        sim = similarity(sig, np.full(len(sig), sig[j], dtype=np.uint64))
        sim[j] = -1.0
        i = int(np.argmax(sim))
        out.append((source, flat[i][1], text, float(sim[i])))
    cut = float(np.median([r[3] for r in out]))
    return [r for r in out if r[3] >= cut]


def pair_scores(model, tokenizer, pairs, seq_len: int) -> dict:
    """Bits per byte of B's first ``PAIR_TOKENS`` tokens alone and after A (A ‖ EOS ‖ B in one context), per
    source of B and over all pairs."""
    model.eval()
    eos = tokenizer.eos_token_id
    acc: dict[str, list[float]] = {}
    for source, a, b, _ in pairs:
        enc = tokenizer(b, add_special_tokens=False, return_offsets_mapping=True)
        ids_b, offs = enc["input_ids"][:PAIR_TOKENS], enc["offset_mapping"]
        if len(ids_b) < 2:
            continue
        ids_a = tokenizer(a, add_special_tokens=False)["input_ids"][-(seq_len - len(ids_b) - 1):] + [eos]
        n_bytes = len(b[offs[0][1]:offs[len(ids_b) - 1][1]].encode("utf-8"))
        if n_bytes == 0:
            continue
        nats = []
        for ctx in ([], ids_a):
            x = torch.tensor([ctx + ids_b])
            with torch.no_grad():
                logits = model(input_ids=x).logits.float()[0]
            k = len(ctx)  # B's first token is never scored: both arms predict the same tokens
            nats.append(float(F.cross_entropy(logits[k:-1], x[0, k + 1:], reduction="sum")))
        v = acc.setdefault(source, [0.0, 0.0, 0.0])
        v[0] += nats[0]
        v[1] += nats[1]
        v[2] += n_bytes
    per = {s: {"alone": v[0] / v[2] / math.log(2), "after_related": v[1] / v[2] / math.log(2)} for s, v in acc.items()}
    tot = [sum(v[i] for v in acc.values()) for i in range(3)]
    all_ = {"alone": tot[0] / tot[2] / math.log(2), "after_related": tot[1] / tot[2] / math.log(2)}
    for d in (*per.values(), all_):
        d["gain"] = d["alone"] - d["after_related"]
    return {"per_source": per, "all": all_, "pairs": len(pairs)}


def run(arm: str, seed: int, params: dict, steps: int, pack: Path, docs: dict, pairs: list, ep: dict) -> dict:
    p = copy.deepcopy(params)
    p["seed"] = seed
    p["train"]["phase1_steps"] = steps
    p["train"]["document_attention"] = "across"
    root = resolve(SCRATCH) / f"seed{seed}" / arm
    if root.exists():
        shutil.rmtree(root)
    (root / "data" / "pack").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    for part in ("tokenizer", "phase1", "phase2"):
        (root / "data" / "pack" / part).symlink_to((pack / part).resolve(), target_is_directory=True)
    t0 = time.time()
    with in_workspace(root):
        train_phase(p, "phase1")
    train_s = time.time() - t0
    device = torch.device("cpu")
    model_dir = root / "models" / "phase1"
    loaded = load_checkpoint(model_dir, device)
    result = evaluate_checkpoint(model_dir, docs, ep, device, loaded=loaded)
    pair = pair_scores(*loaded, pairs, result["seq_len"])
    shutil.rmtree(root)
    return {"seed": seed, "arm": arm, "bpb": result["bpb"], "bpb_mean": result["bpb_mean"], "step": result["step"],
            "pairs": pair, "train_s": round(train_s, 1), "eval_s": round(time.time() - t0 - train_s, 1)}


def summarize(rows: list[dict], packs: dict) -> dict:
    by_arm = {a: sorted((r for r in rows if r["arm"] == a), key=lambda r: r["seed"]) for a in ARMS}
    sources = sorted(by_arm["input"][0]["bpb"])
    metrics = {s: (lambda r, s=s: r["bpb"][s]) for s in sources}
    metrics[MEAN] = lambda r: r["bpb_mean"]
    table = {}
    for name, get in metrics.items():
        iv = {a: t_interval([get(r) for r in rs]) for a, rs in by_arm.items()}
        delta = t_interval([get(b) - get(a) for a, b in zip(by_arm["input"], by_arm["related"])])
        table[name] = {"input": iv["input"].as_dict(), "related": iv["related"].as_dict(),
                       "delta_related_minus_input": delta.as_dict(),
                       "related_lower": lower_is_shown(iv["related"], iv["input"]),
                       "input_lower": lower_is_shown(iv["input"], iv["related"])}
    pair = {}
    for key in ("after_related", "alone", "gain"):
        iv = {a: t_interval([r["pairs"]["all"][key] for r in rs]) for a, rs in by_arm.items()}
        delta = t_interval([b["pairs"]["all"][key] - a["pairs"]["all"][key]
                            for a, b in zip(by_arm["input"], by_arm["related"])])
        pair[key] = {"input": iv["input"].as_dict(), "related": iv["related"].as_dict(),
                     "delta_related_minus_input": delta.as_dict()}
    iv_in = {a: t_interval([r["pairs"]["all"]["after_related"] for r in rs]) for a, rs in by_arm.items()}
    iv_gain = {a: t_interval([-r["pairs"]["all"]["gain"] for r in rs]) for a, rs in by_arm.items()}  # lower = more gain
    pair["verdict_after_related_lower"] = lower_is_shown(iv_in["related"], iv_in["input"])
    pair["verdict_gain_higher"] = lower_is_shown(iv_gain["related"], iv_gain["input"])
    return {"arms": {a: {"runs": rs} for a, rs in by_arm.items()}, "bpb": table, "pairs": pair,
            "packs": packs, "n_pairs": by_arm["input"][0]["pairs"]["pairs"],
            "wall_s": round(sum(r["train_s"] + r["eval_s"] for r in rows), 1)}


def fmt(i: dict) -> str:
    return f"{i['mean']:.4f} ± {i['half_width']:.4f}" if i["half_width"] is not None else f"{i['mean']:.4f}"


def markdown(s: dict) -> str:
    seeds = [r["seed"] for r in s["arms"]["input"]["runs"]]
    pk = s["packs"]
    lines = [
        SECTION, "",
        "Generated by `python -m pipelines.experiments icp` (pipelines/experiments/icp.py; numbers in "
        "`reports/icp.json`). `pack.order: related` orders phase 1's documents by a greedy walk of an approximate "
        "kNN graph over 64-bit SimHash signatures of their words and packs them in that order (pipelines/pack/related.py).",
        "",
        "**Paper's claim** (Shi et al. 2023, *In-Context Pretraining*, arXiv:2310.10638): packing related documents "
        "into the same context (kNN graph + greedy max-TSP over document embeddings) improves in-context learning, "
        "reading comprehension, faithfulness to prior context and long-context / retrieval-augmented reasoning of "
        "7B models trained on 300B tokens, at about unchanged perplexity on ordinary text.",
        "",
        f"**Setup**: phase 1 only (ICP orders phase 1), {s['steps']} steps, preset `tiny`, 1 CPU thread, seeds {seeds}, "
        "both arms with `train.document_attention: across` (plain causal attention over the packed context, the "
        "paper's setting; with the product's per-document mask the order inside a sequence cannot reach the model). "
        "Each arm's pack rebuilt from the demo's `data/mix` with the same tokenizer. Wall time "
        f"{s['wall_s'] / 60:.1f} min.",
        "",
        f"Packs: mean similarity of adjacent documents in a sequence (1 − Hamming/64 of the signatures; ~0.5 = "
        f"unrelated) {pk['input']['adjacent_similarity']:.3f} (input) → {pk['related']['adjacent_similarity']:.3f} "
        f"(related); fill {pk['input']['fill_ratio']:.4f} → {pk['related']['fill_ratio']:.4f}; tokens "
        f"{pk['input']['tokens']} = {pk['related']['tokens']}; documents {pk['input']['docs']} = {pk['related']['docs']}; "
        f"sequences {pk['input']['n_seq']} → {pk['related']['n_seq']}.",
        "",
        "Held-out bits per byte, every held-out document alone (mean over seeds ± 95% CI half-width):",
        "",
        "| source | input | related | paired Δ (related − input) | related lower |",
        "|---|---|---|---|---|",
    ]
    for name, t in s["bpb"].items():
        verdict = "shown" if t["related_lower"] != NOT_SHOWN else ("**higher (shown)**" if t["input_lower"] != NOT_SHOWN
                                                                 else "not shown")
        lines.append(f"| {name} | {fmt(t['input'])} | {fmt(t['related'])} | {fmt(t['delta_related_minus_input'])} | "
                     f"{verdict} |")
    p = s["pairs"]
    lines += [
        "",
        f"Related pairs ({s['n_pairs']} held-out documents B, each after its most similar other held-out document A, "
        f"the upper half by similarity): bits per byte of B's first {PAIR_TOKENS} tokens",
        "",
        "| | input | related | paired Δ (related − input) |",
        "|---|---|---|---|",
    ]
    for key, label in (("alone", "B alone"), ("after_related", "B after A"), ("gain", "gain (alone − after A)")):
        lines.append(f"| {label} | {fmt(p[key]['input'])} | {fmt(p[key]['related'])} | "
                     f"{fmt(p[key]['delta_related_minus_input'])} |")
    lines += [
        "",
        f"**Verdict**: held-out bpb lower with ICP: {s['bpb'][MEAN]['related_lower']}; B after a related A lower with "
        f"ICP: {p['verdict_after_related_lower']}; larger in-context gain with ICP: {p['verdict_gain_higher']}.",
    ]
    if s.get("note"):
        lines += ["", s["note"]]
    return "\n".join(lines) + "\n"


def upsert_section(path: Path, text: str) -> None:
    old = path.read_text() if path.exists() else ""
    start = old.find(SECTION)
    if start < 0:
        new = old.rstrip("\n") + ("\n\n" if old else "") + text
    else:
        nxt = old.find("\n## ", start + len(SECTION))
        new = old[:start] + text + (old[nxt + 1:] if nxt >= 0 else "")
    write_bytes_atomic(path, new.encode())


def pack_info(pack: Path, seconds: float) -> dict:
    summary = json.loads((pack / "pack.json").read_text())["phases"]["phase1"]
    return {"fill_ratio": summary["fill_ratio"], "tokens": summary["tokens"], "docs": summary["docs"],
            "n_seq": summary["n_seq"], "adjacent_similarity": None, "pack_s": round(seconds, 2)}


def adjacent(pack: Path) -> float:
    """Mean signature similarity of consecutive documents inside a phase-1 sequence (from the lineage)."""
    import pyarrow.parquet as pq

    from pipelines.core.shards import read_all

    lin = pq.read_table(pack / "phase1" / "lineage.parquet").to_pandas()
    mix = read_all(workspace() / stages.output("mix") / "phase1", columns=["id", "text"]).to_pandas()
    sig = dict(zip(mix.id, signatures(mix.text.tolist())))
    lin = lin.sort_values(["seq", "start"])
    a, b = lin.iloc[:-1], lin.iloc[1:]
    same = a.seq.to_numpy() == b.seq.to_numpy()
    sa = np.asarray([sig[i] for i in a.record_id[same]], dtype=np.uint64)
    sb = np.asarray([sig[i] for i in b.record_id[same]], dtype=np.uint64)
    return float(similarity(sa, sb).mean())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.experiments icp", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=0, help="phase-1 steps (default: train.phase1_steps)")
    parser.add_argument("--out", default="reports/icp")
    parser.add_argument("--note", default="", help="a paragraph added under the section (the reading of the numbers)")
    parser.add_argument("--report-only", action="store_true", help="rewrite the section from reports/icp.json")
    args = parser.parse_args(argv)
    out = resolve(args.out)
    if args.report_only:
        saved = json.loads(out.with_suffix(".json").read_text())
        if args.note:
            saved["note"] = args.note
            write_json_atomic(out.with_suffix(".json"), saved)
        upsert_section(resolve("reports/science.md"), markdown(saved))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(1)
    params = experiment_params(load_params())
    steps = args.steps or int(params["train"]["phase1_steps"])
    ep = {**section(params, "evaluate"), "max_docs_per_source": 0, "device": "cpu"}
    params["evaluate"] = ep
    packs, info = {}, {}
    for arm in ARMS:
        t0 = time.time()
        packs[arm] = build_pack(params, arm, resolve(SCRATCH) / f"pack_{arm}")
        info[arm] = pack_info(packs[arm], time.time() - t0)
        info[arm]["adjacent_similarity"] = adjacent(packs[arm])
    log.info("packs: %s", info)
    docs = heldout_documents(0)
    pairs = related_pairs(docs)
    rows = []
    partial = out.with_name(out.name + "_runs.json")
    for seed in range(1, args.seeds + 1):
        for arm in ARMS:
            rows.append(run(arm, seed, params, steps, packs[arm], docs, pairs, ep))
            log.info("seed %d %s: bpb_mean %.4f pairs %s (%.0fs)", seed, arm, rows[-1]["bpb_mean"],
                     rows[-1]["pairs"]["all"], rows[-1]["train_s"] + rows[-1]["eval_s"])
            write_json_atomic(partial, {"steps": steps, "packs": info, "runs": rows})
    summary = {"steps": steps, **summarize(rows, info)}
    if args.note:
        summary["note"] = args.note
    write_json_atomic(out.with_suffix(".json"), summary)
    upsert_section(resolve("reports/science.md"), markdown(summary))
    print(json.dumps({k: summary[k] for k in ("bpb", "pairs")}, indent=1)[:3000])
    return 0
