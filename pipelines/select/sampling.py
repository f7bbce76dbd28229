"""Seeded Gumbel top-k: sampling k records without replacement, decided record by record.

Adding Gumbel noise to log-weights and keeping the k largest keys draws a
sample without replacement with probabilities proportional to the weights
(Kool et al. 2019; DSIR uses it for importance resampling). The noise of a
record is a hash of (seed, purpose, id), so its key does not depend on shard
layout or input order: pass 1 finds the global k-th key, pass 2 compares each
record's key against it shard by shard.
"""
from __future__ import annotations

import hashlib

import numpy as np

_SCALE = float(1 << 64)


def uniform(seed, purpose: str, ids: list[str]) -> np.ndarray:
    """One uniform number in (0, 1) per id, from a hash of (seed, purpose, id)."""
    out = np.empty(len(ids), dtype=np.float64)
    prefix = f"{seed}\x1f{purpose}\x1f".encode()
    for i, rid in enumerate(ids):
        h = int.from_bytes(hashlib.blake2b(prefix + str(rid).encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")
        out[i] = (h + 0.5) / _SCALE  # never exactly 0 or 1
    return out


def gumbel(seed, purpose: str, ids: list[str]) -> np.ndarray:
    return -np.log(-np.log(uniform(seed, purpose, ids)))


def sort_keys(log_weights: np.ndarray, ids: list[str], seed, purpose: str) -> np.ndarray:
    """Perturbed keys: the top-k of them is a weighted sample of k without replacement."""
    log_weights = np.asarray(log_weights, dtype=np.float64)
    if log_weights.shape != (len(ids),):
        raise ValueError(f"{len(ids)} ids but log-weights of shape {log_weights.shape}")
    return log_weights + gumbel(seed, purpose, ids)


def kth_largest(keys: np.ndarray, k: int) -> float:
    """The threshold that keeps the k largest keys (``keys >= threshold``); +inf when k == 0."""
    keys = np.asarray(keys, dtype=np.float64)
    if k <= 0 or keys.size == 0:
        return float("inf")
    k = min(k, keys.size)
    return float(np.partition(keys, keys.size - k)[keys.size - k])


def quality_logits(scores: np.ndarray, temperature: float) -> np.ndarray:
    """Quality probabilities as logits divided by a temperature (T -> 0: top-k; T -> inf: uniform)."""
    if not temperature > 0:
        raise ValueError(f"select.temperature must be > 0, got {temperature!r}")
    p = np.clip(np.asarray(scores, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p)) / float(temperature)


def gumbel_top_k(log_weights: np.ndarray, ids: list[str], k: int, seed, purpose: str = "select") -> np.ndarray:
    """Boolean mask of the k records sampled (without replacement) in proportion to exp(log_weights)."""
    keys = sort_keys(log_weights, ids, seed, purpose)
    return keys >= kth_largest(keys, k)
