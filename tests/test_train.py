"""Trainer: WSD schedule, batches (padding, per-document positions and mask), learning, anneal hand-off, exact resume.

Inputs are built here from real text (wikitext-2, news, gsm8k): a tiny byte-level
BPE tokenizer and packed sequences in the pack format, as the pack stage would.
"""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from pipelines.core.schema import make_record_id
from pipelines.core.shards import write_shard
from pipelines.pack.format import PackedDataset, PackedSequence, token_dtype, write_index, write_packed_shard

TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "text"
EOS, PAD = "<|endoftext|>", "<|pad|>"


# ---------------------------------------------------------------- real-text fixtures

def real_documents() -> dict[str, list[str]]:
    """Documents per source from the shared real text, in file order."""
    wiki, para = [], []
    for line in (TEXT / "wikipedia" / "wikitext-2_valid.txt").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("= ") and not line.startswith("= = "):  # a new article
            if para:
                wiki.append("\n".join(para))
            para = []
        elif line and not line.startswith("="):
            para.append(line)
    if para:
        wiki.append("\n".join(para))
    news = [ln.strip() for ln in (TEXT / "news" / "lee_background.cor").read_text(encoding="utf-8").splitlines() if ln.strip()]
    with gzip.open(TEXT / "math" / "gsm8k_train_lines0001-3737.jsonl.gz", "rt", encoding="utf-8") as f:
        math_docs = [f"{r['question']}\n{r['answer']}" for r in map(json.loads, f)]
    return {"wikipedia": wiki, "news": news, "math": math_docs}


def train_tokenizer(out_dir: Path, texts: list[str], vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)
    fast.save_pretrained(out_dir)
    return fast


def pack_documents(phase_dir: Path, tokenizer, docs: list[str], seq_len: int) -> None:
    """Greedy packing: documents (+ EOS) concatenated and cut into seq_len rows; the last row padded."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    stream, starts = [], []
    for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        starts.append(len(stream))
        stream.extend(ids + [eos])
    n_seq = math.ceil(len(stream) / seq_len)
    tokens = np.full((n_seq, seq_len), pad, dtype=token_dtype(len(tokenizer)))
    doc_starts = []
    for i in range(n_seq):
        row = stream[i * seq_len:(i + 1) * seq_len]
        tokens[i, :len(row)] = row
        doc_starts.append(sorted({0} | {s - i * seq_len for s in starts if i * seq_len <= s < (i + 1) * seq_len}))
    shard = write_packed_shard(phase_dir, 0, tokens, doc_starts)
    n_real = len(stream)
    write_index(phase_dir, {"seq_len": seq_len, "dtype": str(tokens.dtype), "vocab_size": len(tokenizer),
                            "eos_id": eos, "pad_id": pad, "n_seq": n_seq, "tokens": n_real,
                            "padding": n_seq * seq_len - n_real, "shards": [shard]})


def write_heldout(mix_dir: Path, docs: dict[str, list[str]]) -> None:
    rows = [{"id": make_record_id(src, str(i)), "url": None, "source": src, "text": t}
            for src, texts in docs.items() for i, t in enumerate(texts)]
    write_shard(mix_dir / "heldout" / "part-00000.parquet", pa.Table.from_pylist(rows))


def build_inputs(root: Path, seq_len: int = 64, n_train: int = 60, n_heldout: int = 4) -> dict[str, list[str]]:
    """data/pack/{tokenizer,phase1,phase2} and data/mix/heldout under ``root``; returns the held-out docs."""
    docs = real_documents()
    train = {s: d[n_heldout:n_heldout + n_train] for s, d in docs.items()}
    heldout = {s: d[:n_heldout] for s, d in docs.items()}
    tokenizer = train_tokenizer(root / "data/pack/tokenizer", [t for d in train.values() for t in d])
    phase1 = [t for i in range(n_train) for s in ("wikipedia", "news", "math") for t in train[s][i:i + 1]]
    phase2 = train["wikipedia"][: n_train // 2] + train["news"][: n_train // 2]  # "high quality" anneal mix
    pack_documents(root / "data/pack/phase1", tokenizer, phase1, seq_len)
    pack_documents(root / "data/pack/phase2", tokenizer, phase2, seq_len)
    write_heldout(root / "data/mix", heldout)
    return heldout


def tiny_params(ws, **train) -> dict:
    """The workspace params with a fast tiny trainer (overrides through params, as a user would)."""
    params = ws.params()
    params["train"].update({"seq_len": 64, "micro_batch": 4, "grad_accum": 1, "phase1_steps": 24, "warmup_steps": 4,
                            "anneal_fraction": 0.2, "checkpoint_every": 8, "lr": 0.003, "min_lr": 0.0003,
                            "model": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                                      "num_key_value_heads": 2, "intermediate_size": 176}, **train})
    ws.set_params(params)
    return params


@pytest.fixture(scope="module")
def built_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    heldout = build_inputs(root)
    return root, heldout


@pytest.fixture
def ws(workspace, built_inputs):
    import shutil

    root, _ = built_inputs
    shutil.copytree(root / "data", workspace.path("data"))
    return workspace
