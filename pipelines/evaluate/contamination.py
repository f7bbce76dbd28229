"""Contamination audit with Min-K% Prob (Shi et al., 2023) on evaluation items.

Min-K% Prob of a text = the mean log-probability of its k% least likely tokens
under the model. Text the model has memorised has few very unlikely tokens, so
its Min-K% is higher. There is no absolute threshold; we compare each benchmark's
items with a reference of held-out, non-evaluation text of similar length
(never trained on): an item is *flagged* when its score exceeds the reference's
95th percentile, so about 5% of items are flagged by chance alone. A benchmark
whose flagged share is far above that, or whose mean score is far above the
reference's, deserves a look next to the n-gram decontamination stats.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

FLAG_QUANTILE = 0.95


@torch.no_grad()
def token_logprobs(model, tokenizer, texts: list[str], *, max_tokens: int, batch_size: int = 8,
                   device="cpu") -> list[np.ndarray]:
    """log p(token_t | tokens_<t) for every token after the first, per text (first max_tokens tokens)."""
    model.eval()
    encoded = [ids[:max_tokens] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    out: list[np.ndarray] = []
    for i in range(0, len(encoded), batch_size):
        chunk = encoded[i:i + batch_size]
        width = max(1, max(len(ids) for ids in chunk))
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        for j, seq in enumerate(chunk):
            ids[j, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        logprobs = F.log_softmax(model(input_ids=ids.to(device)).logits.float(), dim=-1)
        for j, seq in enumerate(chunk):
            if len(seq) < 2:
                out.append(np.zeros(0))
                continue
            target = ids[j, 1:len(seq)].to(logprobs.device)
            out.append(logprobs[j, :len(seq) - 1].gather(1, target[:, None])[:, 0].cpu().numpy())
    return out


def min_k_prob(logprobs: np.ndarray, k: float) -> float:
    """Mean of the ceil(k * n) lowest token log-probabilities (NaN for a text with no scored token)."""
    if not 0 < k <= 1:
        raise ValueError(f"evaluate.contamination.k must be in (0, 1], got {k}")
    if len(logprobs) == 0:
        return float("nan")
    n = max(1, math.ceil(k * len(logprobs)))
    return float(np.sort(logprobs)[:n].mean())


def scores(model, tokenizer, texts: list[str], *, k: float, max_tokens: int, device="cpu") -> np.ndarray:
    values = np.array([min_k_prob(lp, k) for lp in token_logprobs(model, tokenizer, texts, max_tokens=max_tokens,
                                                                   device=device)])
    return values[np.isfinite(values)]


def audit(model, tokenizer, items: dict[str, list[str]], reference: list[str], *, k: float = 0.2,
          max_tokens: int = 256, device="cpu") -> dict:
    """Per benchmark: Min-K% stats vs the reference, and the share of items above its 95th percentile."""
    ref = scores(model, tokenizer, reference, k=k, max_tokens=max_tokens, device=device)
    if len(ref) == 0:
        raise ValueError("contamination audit: the reference texts have no scorable tokens")
    threshold = float(np.quantile(ref, FLAG_QUANTILE))
    result = {"k": k, "max_tokens": max_tokens, "flag_quantile": FLAG_QUANTILE,
              "reference": {"n": len(ref), "mean": float(ref.mean()), "threshold": threshold}, "sets": {}}
    for name, texts in sorted(items.items()):
        s = scores(model, tokenizer, texts, k=k, max_tokens=max_tokens, device=device)
        if len(s) == 0:
            raise ValueError(f"contamination audit: eval set {name} has no scorable items")
        result["sets"][name] = {
            "n": len(s),
            "mean": float(s.mean()),
            "mean_minus_reference": float(s.mean() - ref.mean()),
            "flagged": int((s > threshold).sum()),
            "flagged_share": float((s > threshold).mean()),
        }
    return result


def decontam_stats(dedup_dir: Path) -> dict:
    """The n-gram decontamination drops recorded by the dedup stage (reason -> records), if any."""
    stats = Path(dedup_dir) / "_stats.parquet"
    if not stats.exists():
        return {}
    import pyarrow.parquet as pq

    counts: dict[str, int] = {"contaminated": 0}  # the dedup stage's drop reason (pipelines.dedup.decontam)
    for raw in pq.read_table(stats, columns=["drops_json"]).column("drops_json").to_pylist():
        for reason, n in (json.loads(raw) if raw else {}).items():
            if "contamin" in reason:
                counts[reason] = counts.get(reason, 0) + int(n)
    return counts
