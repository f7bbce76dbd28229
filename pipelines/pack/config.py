"""The ``pack`` params, validated, with their defaults filled in."""
from __future__ import annotations

from pipelines.config import section

PACKINGS = ("best_fit", "concat")
ORDERS = ("input", "related")  # phase 1's document order before packing (related: In-Context Pretraining)


def pack_config(params: dict) -> dict:
    cfg = section(params, "pack")
    out = {
        "vocab_size": int(cfg.get("vocab_size", 4096)),
        "sample_chars": int(cfg.get("tokenizer_sample_chars", 4_000_000)),
        "seq_len": int(cfg.get("seq_len", 256)),
        "shuffle_seed": int(cfg.get("shuffle_seed", 0)),
        "packing": str(cfg.get("packing", "best_fit")),
        "max_seq": int(cfg.get("max_seq_per_shard", 8192)),
        "batch_docs": int(cfg.get("encode_batch_docs", 1000)),
        "tokenizer_dir": cfg.get("tokenizer_dir") or None,
        "meco": bool(cfg.get("meco", False)),
        "order": str(cfg.get("order", "input")),
        "seed": params.get("seed"),
        "mixture_audit": mixture_audit_config(cfg.get("mixture_audit")),
    }
    if out["packing"] not in PACKINGS:
        raise ValueError(f"params pack.packing must be one of {PACKINGS}, got {out['packing']!r}")
    if out["order"] not in ORDERS:
        raise ValueError(f"params pack.order must be one of {ORDERS}, got {out['order']!r}")
    for key, name, low in (("seq_len", "seq_len", 2), ("sample_chars", "tokenizer_sample_chars", 1),
                           ("max_seq", "max_seq_per_shard", 1), ("batch_docs", "encode_batch_docs", 1)):
        if out[key] < low:
            raise ValueError(f"params pack.{name} must be >= {low}, got {out[key]}")
    return out


def mixture_audit_config(cfg: dict | None) -> dict:
    """``pack.mixture_audit``: infer the tokenizer's training mixture from its merges (pipelines/pack/mixture_audit.py)."""
    cfg = cfg or {}
    out = {
        "enabled": bool(cfg.get("enabled", True)),
        "merges": int(cfg.get("merges", 100)),
        "top_pairs": int(cfg.get("top_pairs", 50)),
        "sample_chars_per_source": int(cfg.get("sample_chars_per_source", 100_000)),
        "warn_at": float(cfg.get("warn_at", 0.15)),
    }
    for key, low in (("merges", 1), ("top_pairs", 1), ("sample_chars_per_source", 1)):
        if out[key] < low:
            raise ValueError(f"params pack.mixture_audit.{key} must be >= {low}, got {out[key]}")
    if not 0 <= out["warn_at"] <= 1:
        raise ValueError(f"params pack.mixture_audit.warn_at must be in [0, 1] (a total-variation distance), "
                         f"got {out['warn_at']}")
    return out
