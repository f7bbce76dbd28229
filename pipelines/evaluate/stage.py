"""The `evaluate` stage: bits-per-byte per source on held-out records, for both checkpoints.

Reads ``data/mix/heldout`` (records never trained on) and ``models/phase1``,
``models/phase2``; writes ``metrics/eval.json``:
``{"phase1": {"bpb": {source: x}, "bpb_mean": m, "bpb_all": b, "docs": {...}, "bytes": {...},
"tokens": {...}}, "phase2": {...}, "delta": {source: phase2 - phase1}}``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from pipelines.config import resolve, section
from pipelines.core.atomic import write_json_atomic
from pipelines.core.shards import list_shards, read_all
from pipelines.evaluate.bpb import Score, score_documents
from pipelines.train.checkpoint import load_model, load_state
from pipelines.train.loop import pick_device

log = logging.getLogger(__name__)
HELDOUT_DIR = "data/mix/heldout"
PHASES = {"phase1": "models/phase1", "phase2": "models/phase2"}


def heldout_documents(max_docs_per_source: int) -> dict[str, list[str]]:
    """Held-out texts per source: the first ``max_docs_per_source`` by id (a stable, seed-free choice)."""
    heldout = resolve(HELDOUT_DIR)
    if not list_shards(heldout):
        raise FileNotFoundError(f"{heldout} holds no part-*.parquet shards (run the mix stage first)")
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


def evaluate_checkpoint(directory: Path, docs: dict[str, list[str]], ep: dict, device: torch.device) -> dict:
    if not (directory / "model.safetensors").exists() and not any(directory.glob("model*.safetensors")):
        raise FileNotFoundError(f"{directory} holds no model (run the train/anneal stages first)")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(directory)
    model = load_model(directory, device)
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
        for phase, path in PHASES.items():
            result[phase] = evaluate_checkpoint(resolve(path), docs, ep, device)
            log.info("%s: bpb %s", phase, {s: round(v, 4) for s, v in result[phase]["bpb"].items()})
    finally:
        torch.set_num_threads(threads)
    result["delta"] = {s: result["phase2"]["bpb"][s] - result["phase1"]["bpb"][s] for s in result["phase1"]["bpb"]}
    write_json_atomic(resolve("metrics/eval.json"), result)
    return {"bpb_mean": {p: result[p]["bpb_mean"] for p in PHASES}, "delta": result["delta"]}
