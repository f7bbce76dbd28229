"""Select's quality classifier: hashed word n-grams + logistic regression (SGD), trained in-stage
(the filter's fastText model, its own DVC stage, is ``pipelines.filter.fasttext_quality``).

DCLM-style (Li et al. 2024): positives are curated, high-quality text,
negatives raw web text; the score is the probability of "high quality".
Hashed features need no vocabulary, so the model is just its coefficients:
saved as ``.npy`` (raw float64, byte-stable) plus a small JSON, no pickles.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import SGDClassifier

from pipelines.core.atomic import atomic_path, write_json_atomic


def make_vectorizer(features: int, ngram_max: int) -> HashingVectorizer:
    return HashingVectorizer(n_features=int(features), ngram_range=(1, int(ngram_max)), alternate_sign=False,
                             lowercase=True, norm="l2", dtype=np.float64)


@dataclass
class NgramQualityClassifier:
    coef: np.ndarray  # (features,) float64
    intercept: float
    features: int
    ngram_max: int

    def __post_init__(self):
        self._vectorizer = make_vectorizer(self.features, self.ngram_max)

    def score(self, texts: list[str]) -> np.ndarray:
        """P(high quality) per text, float64."""
        if not texts:
            return np.zeros(0, dtype=np.float64)
        logits = self._vectorizer.transform(texts) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-logits))

    def save(self, stem: Path, extra: dict | None = None) -> dict:
        """``<stem>.npy`` (coefficients) and ``<stem>.json`` (the rest); returns the JSON written."""
        npy = stem.with_suffix(".npy")
        with atomic_path(npy) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(self.coef, dtype=np.float64), allow_pickle=False)
        meta = self.describe(hashlib.sha256(npy.read_bytes()).hexdigest(), npy.name, extra)
        write_json_atomic(stem.with_suffix(".json"), meta)
        return meta

    def describe(self, coef_sha256: str, coef_file: str, extra: dict | None = None) -> dict:
        """The model's JSON: everything but the coefficients, which ``coef_file`` holds."""
        return {
            "kind": "hashing-logreg",
            "features": self.features,
            "ngram_max": self.ngram_max,
            "intercept": self.intercept,
            "coef_file": coef_file,
            "coef_sha256": coef_sha256,
            **(extra or {}),
        }

    @classmethod
    def load(cls, stem: Path) -> "NgramQualityClassifier":
        return cls.from_files(json.loads(stem.with_suffix(".json").read_text()), stem.with_suffix(".npy"))

    @classmethod
    def from_files(cls, meta: dict, coef_path: Path) -> "NgramQualityClassifier":
        """The model from its JSON (as a dict) and its coefficient file (wherever a worker finds it)."""
        coef = np.load(coef_path, allow_pickle=False)
        return cls(coef=coef, intercept=float(meta["intercept"]), features=int(meta["features"]),
                   ngram_max=int(meta["ngram_max"]))


def train(positives: list[str], negatives: list[str], *, features: int, ngram_max: int, seed: int,
          alpha: float = 1e-4) -> NgramQualityClassifier:
    """Logistic regression by seeded SGD on the given texts, classes balanced.

    Deterministic for the same texts in the same order (the caller fixes the order). SGD rather
    than lbfgs: on 2^18 hashed features it is ~20x faster at the same ranking quality.
    """
    if not positives or not negatives:
        raise ValueError("training needs both positive and negative texts")
    vec = make_vectorizer(features, ngram_max)
    X = vec.transform(positives + negatives)
    y = np.concatenate([np.ones(len(positives), dtype=np.int8), np.zeros(len(negatives), dtype=np.int8)])
    clf = SGDClassifier(loss="log_loss", alpha=alpha, class_weight="balanced", max_iter=1000, tol=1e-3,
                        random_state=seed)
    clf.fit(X, y)
    return NgramQualityClassifier(coef=clf.coef_[0].astype(np.float64), intercept=float(clf.intercept_[0]),
                        features=int(features), ngram_max=int(ngram_max))
