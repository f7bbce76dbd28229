"""Seeded, order-free sampling decisions: each one is a hash of (seed, record id, purpose).

A record's fate never depends on which shard it sits in or on the order of the
input, so re-sharding the previous stage does not change the blend.
"""
from __future__ import annotations

import fnmatch
import hashlib
import math

_SCALE = float(1 << 64)


def unit_hash(*parts) -> float:
    """A uniform number in [0, 1) from the parts (stable across runs, machines, Python versions)."""
    key = "\x1f".join(str(p) for p in parts).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / _SCALE


def heldout_key(record_id: str) -> float:
    """Held-out membership hashes the id alone (no seed): the eval split stays put when the seed changes."""
    return unit_hash("heldout", record_id)


def validate_weights(weights, where: str) -> dict[str, float]:
    if weights is None:
        return {}
    if not isinstance(weights, dict):
        raise ValueError(f"params {where} must be a mapping of source pattern -> weight, got {type(weights).__name__}")
    out = {}
    for pattern, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"params {where}[{pattern!r}] must be a finite number >= 0, got {w!r}")
        out[str(pattern)] = float(w)
    return out


def weight_for(source: str, weights: dict[str, float]) -> float | None:
    """The weight of the first pattern (in params order) that matches; None when none matches."""
    for pattern, w in weights.items():
        if fnmatch.fnmatchcase(source, pattern):
            return w
    return None


def copies(weight: float, seed, record_id: str, purpose: str) -> int:
    """floor(w) copies, plus one more with probability frac(w) (a seeded coin per record)."""
    whole = math.floor(weight)
    frac = weight - whole
    extra = 1 if frac > 0 and unit_hash(seed, record_id, purpose) < frac else 0
    return int(whole) + extra
