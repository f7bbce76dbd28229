"""The byte-level BPE tokenizer: trained on a deterministic phase-1 sample, saved for transformers.

Byte-level means every string encodes losslessly (all 256 byte symbols are in the
initial alphabet), so ``decode(encode(text)) == text``. Special tokens written
literally in a document ("<|endoftext|>" inside a web page) are encoded as plain
text, never as the special ids: only the packer inserts EOS, and padding can be
found by ``pad_id`` alone.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable, Iterator

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
    """``save_pretrained`` into a side directory, then swap it in: readers never see half a tokenizer."""
    from transformers import PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    old = out_dir.with_name(out_dir.name + ".old")
    for p in (partial, old):
        if p.exists():
            shutil.rmtree(p)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, split_special_tokens=True)
    wrapped.save_pretrained(str(partial))
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(partial, out_dir)
    if old.exists():
        shutil.rmtree(old)


def load_tokenizer(out_dir: Path) -> Tokenizer:
    tok = Tokenizer.from_file(str(Path(out_dir) / "tokenizer.json"))
    tok.encode_special_tokens = True
    return tok
