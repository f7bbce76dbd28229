"""The ``pack`` params, validated, with their defaults filled in."""
from __future__ import annotations

from pipelines.config import section

PACKINGS = ("best_fit", "concat")


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
        "seed": params.get("seed"),
    }
    if out["packing"] not in PACKINGS:
        raise ValueError(f"params pack.packing must be one of {PACKINGS}, got {out['packing']!r}")
    for key, name, low in (("seq_len", "seq_len", 2), ("sample_chars", "tokenizer_sample_chars", 1),
                           ("max_seq", "max_seq_per_shard", 1), ("batch_docs", "encode_batch_docs", 1)):
        if out[key] < low:
            raise ValueError(f"params pack.{name} must be >= {low}, got {out[key]}")
    return out
