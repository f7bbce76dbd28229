"""DataDecide-style decision accuracy: does the proxy rank two mixtures as a 4x larger proxy does?

Magnusson et al. (2025, DataDecide) ask of a small-scale experiment how often its choice between
two data recipes agrees with the choice at the target scale. Here the "target" is a proxy with 4x
the non-embedding parameters (hidden and MLP width doubled: same depth, heads, tokens and steps),
and the pairs are every pair of mixtures both proxies scored at the same seed.
"""
from __future__ import annotations

from itertools import combinations

import numpy as np

# Doubling hidden and intermediate size quadruples the non-embedding parameters of the ``tiny`` preset.
LARGER = {"hidden_size": 256, "intermediate_size": 704}


def larger_proxy(proxy: dict) -> dict:
    """The proxy config with the model widened by ``LARGER`` (on top of any ``model`` overrides)."""
    return {**proxy, "model": {**(proxy.get("model") or {}), **LARGER}}


def share(x: float | None) -> str:
    """An accuracy as a percentage; n/a for a split with no pairs (None)."""
    return "n/a" if x is None else f"{x:.0%}"


def decision_accuracy(small: list[float], large: list[float]) -> dict:
    """Share of pairs the two score lists order alike (lower is better in both), overall and for the pairs
    whose small-proxy gap is above / below its median (a wide gap should be decided more reliably)."""
    from scipy.stats import spearmanr

    if len(small) != len(large) or len(small) < 2:
        raise ValueError("need two equally long score lists of at least 2 mixtures")
    pairs = list(combinations(range(len(small)), 2))
    gap = np.asarray([abs(small[i] - small[j]) for i, j in pairs])
    agree = np.asarray([np.sign(small[i] - small[j]) == np.sign(large[i] - large[j]) for i, j in pairs])
    wide = gap > np.median(gap)
    return {"pairs": len(pairs), "accuracy": float(agree.mean()),
            "accuracy_wide_gap": float(agree[wide].mean()) if wide.any() else None,
            "accuracy_narrow_gap": float(agree[~wide].mean()) if (~wide).any() else None,
            "median_gap": float(np.median(gap)), "spearman": float(spearmanr(small, large).statistic)}
