"""DSIR: data selection by importance resampling (Xie et al. 2023).

Each text becomes counts over hashed unigram+bigram buckets (10k by default).
A bag-of-ngrams model is the smoothed bucket distribution of a set of texts;
a record's importance log-weight is ``log p_target(x) - log p_raw(x)``
= sum over its n-grams of ``log p_target(bucket) - log p_raw(bucket)``.
The quality of a selection is its KL reduction, as in the paper:
``KL(target || raw) - KL(target || selected)``, all over bucket distributions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import HashingVectorizer

DEFAULT_BUCKETS = 10_000
SMOOTHING = 1.0  # add-one: a bucket unseen in one set must not give an infinite weight


def vectorizer(buckets: int = DEFAULT_BUCKETS) -> HashingVectorizer:
    # Raw counts (no norm, no sign flipping): the features of a bag-of-ngrams model.
    return HashingVectorizer(n_features=int(buckets), ngram_range=(1, 2), alternate_sign=False, norm=None,
                             lowercase=True, dtype=np.float64)


def featurize(texts: list[str], buckets: int = DEFAULT_BUCKETS) -> sparse.csr_matrix:
    if not texts:
        return sparse.csr_matrix((0, int(buckets)), dtype=np.float64)
    return vectorizer(buckets).transform(texts).tocsr()


def bucket_counts(texts: list[str], buckets: int = DEFAULT_BUCKETS) -> np.ndarray:
    return np.asarray(featurize(texts, buckets).sum(axis=0)).ravel()


def distribution(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64) + SMOOTHING
    return counts / counts.sum()


def kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) in nats, both strictly positive distributions."""
    return float(np.sum(p * (np.log(p) - np.log(q))))


@dataclass
class ImportanceModel:
    """log p_target - log p_raw per bucket; ``log_weights`` scores texts."""
    log_ratio: np.ndarray  # (buckets,)

    @classmethod
    def fit(cls, target_counts: np.ndarray, raw_counts: np.ndarray) -> "ImportanceModel":
        if target_counts.shape != raw_counts.shape:
            raise ValueError(f"bucket counts differ in shape: {target_counts.shape} vs {raw_counts.shape}")
        if not target_counts.sum() or not raw_counts.sum():
            raise ValueError("DSIR needs non-empty target and raw texts")
        return cls(np.log(distribution(target_counts)) - np.log(distribution(raw_counts)))

    @property
    def buckets(self) -> int:
        return int(self.log_ratio.size)

    def log_weights(self, texts: list[str]) -> np.ndarray:
        return featurize(texts, self.buckets) @ self.log_ratio


def kl_reduction(target_counts: np.ndarray, raw_counts: np.ndarray, selected_counts: np.ndarray) -> dict:
    """How much closer the selected set is to the target than the raw pool is (nats; > 0 is better)."""
    p_t = distribution(target_counts)
    before, after = kl(p_t, distribution(raw_counts)), kl(p_t, distribution(selected_counts))
    return {"kl_target_raw": before, "kl_target_selected": after, "kl_reduction": before - after}
