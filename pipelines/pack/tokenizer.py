"""The tokenizer: a byte-level BPE trained on a deterministic phase-1 sample, or a local
Hugging Face tokenizer directory (``pack.tokenizer_dir``); either way saved for transformers.

Byte-level means every string encodes losslessly (all 256 byte symbols are in the
initial alphabet), so ``decode(encode(text)) == text``. Special tokens written
literally in a document ("<|endoftext|>" inside a web page) are encoded as plain
text, never as the special ids: only the packer inserts EOS, and padding can be
found by ``pad_id`` alone.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS = "<|endoftext|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [EOS, PAD]
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)


def sample_texts(ids: list[str], texts: list[str], max_chars: int) -> Iterator[str]:
    """Unique documents in id order until ``max_chars`` (the last one cut to fit)."""
    seen: dict[str, str] = {}
    for i, t in zip(ids, texts):
        seen.setdefault(i, t)
    budget = max_chars
    for i in sorted(seen):
        if budget <= 0:
            return
        text = seen[i][:budget]
        budget -= len(text)
        yield text


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    if vocab_size < MIN_VOCAB:
        raise ValueError(f"params pack.vocab_size must be >= {MIN_VOCAB} (256 bytes + special tokens), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,  # ids 0 and 1
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.encode_special_tokens = True
    return tok


def save_tokenizer(tok: Tokenizer, out_dir: Path) -> None:
    """Save a freshly trained tokenizer (EOS and PAD are ours) for ``AutoTokenizer``."""
    from transformers import PreTrainedTokenizerFast

    _save_wrapped(PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD,
                                          split_special_tokens=True), out_dir)


def import_tokenizer(src_dir: Path, out_dir: Path) -> None:
    """Re-save a local Hugging Face tokenizer directory (fast tokenizer, ``tokenizer.json``) as pack's artifact.

    It must have an EOS token; a PAD token distinct from EOS is added when missing,
    because the packed format finds padding by ``pad_id`` alone.
    """
    from transformers import PreTrainedTokenizerFast

    src_dir = Path(src_dir)
    if not (src_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(f"params pack.tokenizer_dir={src_dir}: no tokenizer.json (a fast tokenizer is needed)")
    wrapped = PreTrainedTokenizerFast.from_pretrained(str(src_dir), local_files_only=True)
    if wrapped.eos_token is None:
        raise ValueError(f"params pack.tokenizer_dir={src_dir}: the tokenizer has no eos_token")
    if wrapped.pad_token is None or wrapped.pad_token_id == wrapped.eos_token_id:
        wrapped.add_special_tokens({"pad_token": PAD})
    _save_wrapped(wrapped, out_dir)


def special_ids(out_dir: Path) -> tuple[int, int, int]:
    """(eos_id, pad_id, vocab_size) of a saved tokenizer, as transformers sees it."""
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast.from_pretrained(str(out_dir), local_files_only=True)
    return int(wrapped.eos_token_id), int(wrapped.pad_token_id), len(wrapped)


def _save_wrapped(wrapped, out_dir: Path) -> None:
    """``save_pretrained`` into a side directory, then swap it in: readers never see half a tokenizer."""
    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    old = out_dir.with_name(out_dir.name + ".old")
    for p in (partial, old):
        if p.exists():
            shutil.rmtree(p)
    wrapped.save_pretrained(str(partial))
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(partial, out_dir)
    if old.exists():
        shutil.rmtree(old)


# ---------------------------------------------------------------- batch encoding (process-pool tasks)

@lru_cache(maxsize=2)
def _worker_tokenizer(tokenizer_json: str, digest: str) -> Tokenizer:
    """Loaded once per process; ``digest`` (of tokenizer.json) keys the cache, so a rewritten tokenizer reloads."""
    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.encode_special_tokens = True
    return tok


def encode_task(task: tuple[str, str, list[str], list[str] | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One batch: (flat token ids, tokens per text, prefix tokens per text).

    A text's tokens are its prefix's (if any), then its own, encoded separately so
    the prefix ends on a token boundary (MeCo marks exactly those tokens no-loss).
    ``tokenizer_json``: a local tokenizer.json (its ``digest`` keys the per-process cache).
    """
    tokenizer_json, digest, texts, prefixes = task
    if mp.parent_process() is not None:  # a pool worker: one thread each, the pool is the parallelism
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    tok = _worker_tokenizer(tokenizer_json, digest)
    body = tok.encode_batch(texts, add_special_tokens=False)
    head = tok.encode_batch(prefixes, add_special_tokens=False) if prefixes is not None else None
    ids, lengths, prefix_lengths = [], [], []
    for k, enc in enumerate(body):
        pre = head[k].ids if head is not None else []
        ids.append(pre)
        ids.append(enc.ids)
        prefix_lengths.append(len(pre))
        lengths.append(len(pre) + len(enc.ids))
    flat = np.fromiter((t for part in ids for t in part), dtype=np.uint32, count=sum(lengths))
    return flat, np.asarray(lengths, np.int64), np.asarray(prefix_lengths, np.int64)
