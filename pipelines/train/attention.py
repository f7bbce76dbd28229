"""Per-document attention, two implementations of the same mask.

- ``sdpa`` (CPU, tests): a dense [B, 1, L, L] boolean block-diagonal causal mask.
  Exact and simple, but an explicit mask rules out SDPA's flash kernels, and it is
  O(L^2) memory, so it is the CPU path only.
- ``flex_attention`` (CUDA): a ``BlockMask`` built from the segment ids; FlexAttention
  skips fully masked blocks, so cross-document work is never computed. transformers
  passes a 4-D mask (a BlockMask has a 4-D shape) straight to the attention function.
"""
from __future__ import annotations

import torch

IMPLEMENTATIONS = ("auto", "sdpa", "flex_attention")


def choose(name: str | None, device: torch.device) -> str:
    if name in (None, "auto"):
        return "flex_attention" if device.type == "cuda" else "sdpa"
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"train.attention must be one of {IMPLEMENTATIONS}, got {name!r}")
    return name


def set_implementation(model, impl: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(impl)
    else:  # older transformers
        model.config._attn_implementation = impl


def document_block_mask(segment_ids: torch.Tensor):
    """FlexAttention BlockMask: causal and within the same segment (document piece or padding tail)."""
    from torch.nn.attention.flex_attention import create_block_mask

    seg = segment_ids

    def mask_mod(b, h, q, kv):
        return (q >= kv) & (seg[b, q] == seg[b, kv])

    batch, length = seg.shape
    return create_block_mask(mask_mod, batch, None, length, length, device=seg.device)
