"""Model presets: Llama architectures as plain data, built with transformers (no download)."""
from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

# Architecture only; vocab_size comes from the tokenizer. `tiny` is what CPU
# tests and the demo train; the others are for a GPU pool (defined, not run here).
PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                 intermediate_size=352, tie_word_embeddings=True),
    "125m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                 intermediate_size=2048, tie_word_embeddings=True),
    "350m": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8,
                 intermediate_size=2816, tie_word_embeddings=True),
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192, tie_word_embeddings=True),
}
COMMON = dict(max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-5, hidden_act="silu",
              initializer_range=0.02, attention_dropout=0.0, use_cache=False)


def build_config(preset: str, vocab_size: int, *, eos_id: int, pad_id: int, overrides: dict | None = None) -> LlamaConfig:
    if preset not in PRESETS:
        raise ValueError(f"train.preset {preset!r} is not one of {sorted(PRESETS)}")
    arch = {**COMMON, **PRESETS[preset], **(overrides or {})}
    return LlamaConfig(vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id, **arch)


def build_model(config: LlamaConfig) -> LlamaForCausalLM:
    # sdpa takes our boolean per-document mask directly (eager would need an additive one).
    return LlamaForCausalLM._from_config(config, attn_implementation="sdpa")


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def make_optimizer(model, tp: dict, device: torch.device) -> torch.optim.AdamW:
    """AdamW as nanoGPT configures it: weight decay on matrices (embeddings included), not on norms/biases."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": float(tp["weight_decay"])}, {"params": no_decay, "weight_decay": 0.0}]
    betas = tuple(tp.get("betas") or (0.9, 0.95))
    return torch.optim.AdamW(groups, lr=float(tp["lr"]), betas=betas, eps=1e-8, fused=device.type == "cuda")
