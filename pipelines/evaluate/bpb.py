"""Bits-per-byte of a causal LM on documents.

Each document is tokenized and followed by EOS, then scored in windows of
``seq_len`` tokens that overlap by one token, so every token after the first
is predicted exactly once (the first has no context: there is no BOS, as in
training, where a document's first token is never a target).
bpb = total NLL (nats) / ln 2 / UTF-8 bytes of the predicted text, which,
unlike perplexity, compares across tokenizers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Score:
    nats: float = 0.0
    bytes: int = 0
    tokens: int = 0  # predicted tokens
    docs: int = 0

    @property
    def bpb(self) -> float:
        return self.nats / math.log(2) / self.bytes if self.bytes else float("nan")


def windows(ids: list[int], seq_len: int) -> list[list[int]]:
    """Windows of at most seq_len tokens; each starts on the previous window's last token."""
    if len(ids) < 2:
        return []
    out, start = [], 0
    while start < len(ids) - 1:
        out.append(ids[start:start + seq_len])
        start += seq_len - 1
    return out


@torch.no_grad()
def score_documents(model, tokenizer, texts: list[str], *, seq_len: int, max_tokens_per_doc: int,
                    batch_size: int = 8, device: str | torch.device = "cpu") -> Score:
    """Total NLL of ``texts`` under ``model``. Windows are right-padded into batches: with causal
    attention, padding after a window cannot change the scores of the window's tokens."""
    if seq_len < 2:
        raise ValueError(f"evaluation seq_len must be >= 2, got {seq_len}")
    model.eval()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    score = Score()
    all_windows = []
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    for text, ids, offsets in zip(texts, encoded["input_ids"], encoded["offset_mapping"]):
        if not ids:
            continue
        ids = (ids + [eos])[:max_tokens_per_doc]
        # Bytes of the text the predicted tokens cover: after the first token (never predicted),
        # up to the last kept token when the document is truncated.
        end = len(text) if len(ids) > len(offsets) else offsets[len(ids) - 1][1]
        score.bytes += len(text[offsets[0][1]:end].encode("utf-8"))
        score.docs += 1
        all_windows.extend(windows(ids, seq_len))
    for i in range(0, len(all_windows), batch_size):
        chunk = all_windows[i:i + batch_size]
        width = max(len(w) for w in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        for j, w in enumerate(chunk):
            ids[j, :len(w)] = torch.tensor(w)
            labels[j, :len(w) - 1] = torch.tensor(w[1:])
        logits = model(input_ids=ids.to(device)).logits.float()
        nll = F.cross_entropy(logits.flatten(0, 1), labels.to(device).flatten(), ignore_index=-100, reduction="sum")
        score.nats += float(nll)
        score.tokens += int((labels != -100).sum())
    return score
