"""The `evaluate` stage: bits-per-byte per source on held-out records, for both checkpoints.

Reads ``data/mix/heldout`` (records never trained on) and ``models/phase1``,
``models/phase2``; writes ``metrics/details/eval.json`` (headline: ``metrics/eval.json``):
``{"phase1": {"bpb": {source: x}, "bpb_mean": m, "bpb_all": b, "docs": {...}, "bytes": {...},
"tokens": {...}}, "phase2": {...}, "delta": {source: phase2 - phase1}}``;
``metrics/details/lm_eval.json`` (lm-eval-harness on local task files, per phase) and
``metrics/details/contamination.json`` (Min-K% Prob audit of the final checkpoint on the
``dedup.decontam`` eval sets, next to the n-gram decontamination drop counts).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from pipelines import stages
from pipelines.config import resolve, section, workspace
from pipelines.core.atomic import write_json_atomic
from pipelines.core.headline import details_path, write_headline
from pipelines.core.shards import read_all, stage_shards
from pipelines.evaluate.bpb import Score, score_documents
from pipelines.train.checkpoint import load_model, load_state
from pipelines.train.loop import pick_device

log = logging.getLogger(__name__)
HELDOUT_DIR = f"{stages.output('mix')}/heldout"
PHASES = {"phase1": "models/phase1", "phase2": "models/phase2"}


def heldout_documents(max_docs_per_source: int) -> dict[str, list[str]]:
    """Held-out texts per source: the first ``max_docs_per_source`` by id (a stable, seed-free choice)."""
    heldout = resolve(HELDOUT_DIR)
    stage_shards(heldout, "mix")  # a missing or empty split is a clear error naming it
    rows = sorted(read_all(heldout, columns=["id", "source", "text"]).to_pylist(), key=lambda r: (r["source"], r["id"]))
    docs: dict[str, list[str]] = {}
    for r in rows:
        texts = docs.setdefault(r["source"], [])
        if r["text"] and (max_docs_per_source <= 0 or len(texts) < max_docs_per_source):
            texts.append(r["text"])
    docs = {s: t for s, t in docs.items() if t}
    if not docs:
        raise ValueError(f"{heldout} has no non-empty held-out texts")
    return docs


def load_checkpoint(directory: Path, device: torch.device) -> tuple:
    """(model, tokenizer) of a checkpoint directory."""
    if not (directory / "model.safetensors").exists() and not any(directory.glob("model*.safetensors")):
        raise FileNotFoundError(f"{directory} holds no model (run the train/anneal stages first)")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(directory)
    return load_model(directory, device), tokenizer


def evaluate_checkpoint(directory: Path, docs: dict[str, list[str]], ep: dict, device: torch.device,
                        loaded: tuple | None = None) -> dict:
    """Bits-per-byte per source; ``loaded`` is the checkpoint's (model, tokenizer) if already loaded."""
    model, tokenizer = loaded or load_checkpoint(directory, device)
    state = load_state(directory) or {}
    seq_len = int(ep.get("seq_len") or state.get("seq_len") or 0)
    if seq_len < 2:
        raise ValueError(f"set evaluate.seq_len: {directory} records no training seq_len")
    scores = {source: score_documents(model, tokenizer, texts, seq_len=seq_len,
                                      max_tokens_per_doc=int(ep["max_tokens_per_doc"]),
                                      batch_size=int(ep.get("batch_size", 8)), device=device)
              for source, texts in sorted(docs.items())}
    total = Score(nats=sum(s.nats for s in scores.values()), bytes=sum(s.bytes for s in scores.values()))
    bpb = {s: sc.bpb for s, sc in scores.items()}
    return {
        "bpb": bpb,
        "bpb_mean": sum(bpb.values()) / len(bpb),  # every source weighs the same
        "bpb_all": total.bpb,  # every byte weighs the same
        "docs": {s: sc.docs for s, sc in scores.items()},
        "bytes": {s: sc.bytes for s, sc in scores.items()},
        "tokens": {s: sc.tokens for s, sc in scores.items()},
        "step": state.get("step"),
        "seq_len": seq_len,
    }


def run_downstream(params: dict, device: torch.device, loaded: dict | None = None) -> dict:
    """lm-eval-harness on the local tasks, for each phase's checkpoint -> metrics/details/lm_eval.json.

    ``loaded``: {phase: (model, tokenizer)} already loaded; a phase not in it is loaded here."""
    from pipelines.evaluate.downstream import run_lm_eval

    cfg = section(params, "evaluate").get("lm_eval") or {}
    if not cfg.get("enabled", True):
        return {}
    limit = cfg.get("limit")
    result = {"limit": limit, "tasks": list(cfg["tasks"])}
    for phase, path in PHASES.items():
        model, tokenizer = (loaded or {}).get(phase) or load_checkpoint(resolve(path), device)
        result[phase] = run_lm_eval(model, tokenizer, list(cfg["tasks"]), limit=int(limit) if limit else None,
                                    batch_size=int(cfg.get("batch_size", 8)), seed=int(params.get("seed", 0)))
        log.info("%s: lm-eval %s", phase, result[phase])
    write_json_atomic(details_path("lm_eval"), result)
    return result


def run_contamination(params: dict, docs: dict[str, list[str]], device: torch.device,
                      loaded: dict | None = None) -> dict:
    """Min-K% Prob of the final checkpoint on the eval sets vs held-out text -> metrics/details/contamination.json.

    ``loaded``: {phase: (model, tokenizer)} already loaded; used when the audited checkpoint is one of them."""
    from pipelines.dedup.eval_sets import load_set
    from pipelines.evaluate.contamination import audit, decontam_stats

    cfg = section(params, "evaluate").get("contamination") or {}
    if not cfg.get("enabled", True):
        return {}
    sets = ((params.get("dedup") or {}).get("decontam") or {}).get("sets") or {}
    names = cfg.get("sets") or sorted(sets)
    max_items = int(cfg.get("max_items", 100))
    items = {}
    for name in names:
        if name not in sets:
            raise ValueError(f"evaluate.contamination.sets: {name!r} is not in dedup.decontam.sets ({sorted(sets)})")
        items[name] = load_set(name, sets[name], workspace()).texts[:max_items]
    # Reference: held-out corpus text (never trained on, not an eval item), round-robin over sources.
    pools = [texts for _, texts in sorted(docs.items())]
    reference = [t for group in zip(*pools) for t in group] if pools else []
    reference = (reference or [t for p in pools for t in p])[:max_items]
    directory = resolve(cfg.get("checkpoint", PHASES["phase2"]))
    pair = next((p for phase, p in (loaded or {}).items() if resolve(PHASES[phase]) == directory), None)
    model, tokenizer = pair or (load_model(directory, device), PreTrainedTokenizerFast.from_pretrained(directory))
    result = audit(model, tokenizer, items, reference, k=float(cfg.get("k", 0.2)),
                   max_tokens=int(cfg.get("max_tokens", 256)), device=device)
    result["checkpoint"] = str(cfg.get("checkpoint", PHASES["phase2"]))
    result["decontam_drops"] = decontam_stats(stages.output_dir("dedup"))
    write_json_atomic(details_path("contamination"), result)
    log.info("contamination audit: %s", {n: round(s["flagged_share"], 3) for n, s in result["sets"].items()})
    return result


def run(params: dict) -> dict:
    ep = section(params, "evaluate")
    device = pick_device(ep.get("device", "auto"))
    hf_logging.disable_progress_bar()
    docs = heldout_documents(int(ep["max_docs_per_source"]))
    result = {}
    threads = torch.get_num_threads()
    try:
        if device.type == "cpu":
            torch.set_num_threads(int(ep.get("threads") or params.get("train", {}).get("threads", 2)))
        loaded = {}  # each phase's (model, tokenizer), loaded once for bpb, lm-eval and the Min-K% audit
        for phase, path in PHASES.items():
            loaded[phase] = load_checkpoint(resolve(path), device)
            result[phase] = evaluate_checkpoint(resolve(path), docs, ep, device, loaded=loaded[phase])
            log.info("%s: bpb %s", phase, {s: round(v, 4) for s, v in result[phase]["bpb"].items()})
        downstream = run_downstream(params, device, loaded)
        contamination = run_contamination(params, docs, device, loaded)
    finally:
        torch.set_num_threads(threads)
    result["delta"] = {s: result["phase2"]["bpb"][s] - result["phase1"]["bpb"][s] for s in result["phase1"]["bpb"]}
    write_json_atomic(details_path("eval"), result)
    write_headline("eval", {"bpb": result["phase2"]["bpb_mean"]})  # the final model's mean over sources
    return {"bpb_mean": {p: result[p]["bpb_mean"] for p in PHASES}, "delta": result["delta"],
            "lm_eval": {p: downstream.get(p) for p in PHASES} if downstream else None,
            "contamination": {n: s["flagged_share"] for n, s in contamination.get("sets", {}).items()}}
