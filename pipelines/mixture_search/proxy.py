"""A tiny proxy model trained on one candidate mixture, scored by held-out bits per byte.

The model is the project's own (``pipelines.train.model``, the ``tiny`` preset by
default) and the score is ``pipelines.evaluate.bpb.score_documents``. The loop is a
short, fixed-budget version of the trainer's: each micro-batch row is a window of
``seq_len + 1`` tokens from one domain's token stream, the domain drawn by the
mixture weights (seeded), so the token budget is the same for every candidate.
"""
from __future__ import annotations

import numpy as np

from pipelines.runtime import quiet_threads


def train_and_score(work: dict, weights: dict[str, float], cfg: dict, seed: int) -> dict:
    """``work``: {"streams": {domain: np.ndarray tokens}, "heldout": {source: [texts]}, "tokenizer_dir": str}."""
    import torch
    import torch.nn.functional as F
    from transformers import PreTrainedTokenizerFast

    from pipelines.evaluate.bpb import Score, score_documents
    from pipelines.train.model import build_config, build_model

    torch.set_num_threads(int(cfg.get("threads", 1)))
    torch.manual_seed(seed)
    tok = PreTrainedTokenizerFast.from_pretrained(work["tokenizer_dir"])
    # Every usable domain keeps its slot in the CDF (zero weight: zero width), so the layout does not
    # depend on which weights are zero.
    domains = sorted(d for d in weights if len(work["streams"].get(d, ())) > cfg["seq_len"] + 1)
    p = np.asarray([max(weights[d], 0.0) for d in domains], dtype=np.float64)
    if not p.sum() > 0:
        raise ValueError(f"candidate has no usable domain: {weights}")
    cdf = np.cumsum(p / p.sum())
    config = build_config(cfg.get("preset", "tiny"), len(tok), eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                          overrides=cfg.get("model"))
    model = build_model(config)
    opt = torch.optim.AdamW(model.parameters(), lr=float(cfg["lr"]), weight_decay=0.1)
    rng = np.random.default_rng(seed)
    L, B, steps = int(cfg["seq_len"]), int(cfg["micro_batch"]), int(cfg["steps"])
    model.train()
    for step in range(steps):
        # Common random numbers: every candidate draws the same uniforms (a domain by inverse CDF, an
        # offset as a fraction of its stream), so two nearby mixtures at one seed see nearly the same
        # batches and their scores differ by the mixture more than by the luck of the draw.
        u = rng.random((B, 2))
        rows = []
        for d, f in zip(np.minimum(np.searchsorted(cdf, u[:, 0], side="right"), len(domains) - 1), u[:, 1]):
            s = work["streams"][domains[d]]
            o = int(f * (len(s) - L - 1))
            rows.append(s[o:o + L + 1])
        x = torch.as_tensor(np.stack(rows).astype(np.int64))
        warm = min(1.0, (step + 1) / max(1, steps // 10))
        for g in opt.param_groups:
            g["lr"] = float(cfg["lr"]) * warm
        logits = model(input_ids=x[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    bpb = {}
    for source, texts in sorted(work["heldout"].items()):
        sc: Score = score_documents(model, tok, texts, seq_len=L, max_tokens_per_doc=int(cfg["eval_tokens_per_doc"]))
        bpb[source] = sc.bpb
    return {"bpb": bpb, "bpb_mean": float(np.mean(list(bpb.values()))), "final_loss": float(loss.item())}


quiet_threads()
