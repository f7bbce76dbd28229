"""Training throughput on one GPU: our trainer vs a plain LlamaForCausalLM + AdamW loop.

Both train the same preset (~125M, ~350M) at seq_len 2048 in bf16 on the same machine.
Ours: pipelines.train.loop.train_phase on a synthetic pack (random tokens, documents of
random length, so per-document masking is exercised), flex-attention document masks,
fused AdamW, optional torch.compile. Anchor: the textbook loop — sdpa causal attention
(no document mask), bf16 autocast, torch.optim.AdamW defaults, loss from the model.
tokens/s is the median over the steady-state steps; MFU = tokens/s * flops/token / peak,
flops/token = 6 * params + 12 * layers * hidden * seq_len (PaLM appendix B).
Needs CUDA; on a machine without one it writes nothing and says so.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULT = HERE / "results" / "train_gpu.json"
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 TFLOP/s (SXM)
SEQ = 2048
VOCAB = 32000
CASES = [("125m", 16), ("350m", 8)]  # (preset, micro batch)
STEPS, WARMUP = 30, 10


def peak_flops(torch) -> float:
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), 989e12)


def flops_per_token(n_params: int, cfg) -> float:
    return 6 * n_params + 12 * cfg.num_hidden_layers * cfg.hidden_size * SEQ


def make_workspace(root: Path, n_seq: int) -> None:
    """A tokenizer of VOCAB word tokens and a phase-1 pack of random documents (as the pack stage writes)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from pipelines.pack.format import token_dtype, write_index, write_packed_shard

    vocab = {"<|endoftext|>": 0, "<|pad|>": 1, **{f"t{i}": i for i in range(2, VOCAB)}}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t2")),
                                  eos_token="<|endoftext|>", pad_token="<|pad|>")
    tok.save_pretrained(root / "data/pack/tokenizer")
    rng = np.random.default_rng(0)
    tokens = rng.integers(2, VOCAB, size=(n_seq, SEQ)).astype(token_dtype(VOCAB))
    doc_starts = []
    for row in tokens:  # documents of 200..1500 tokens, each ended by EOS
        starts, pos = [0], int(rng.integers(200, 1500))
        while pos < SEQ:
            row[pos - 1] = 0
            starts.append(pos)
            pos += int(rng.integers(200, 1500))
        doc_starts.append(starts)
    shard = write_packed_shard(root / "data/pack/phase1", 0, tokens, doc_starts)
    write_index(root / "data/pack/phase1", {"seq_len": SEQ, "dtype": str(tokens.dtype), "vocab_size": VOCAB,
                                            "eos_id": 0, "pad_id": 1, "n_seq": n_seq, "tokens": n_seq * SEQ,
                                            "padding": 0, "shards": [shard]})


def ours(preset: str, micro_batch: int, compile_: bool) -> dict:
    import torch

    from pipelines.train.loop import train_phase
    from pipelines.train.model import build_config

    root = Path(tempfile.mkdtemp(prefix=f"bench-{preset}-"))
    make_workspace(root, n_seq=micro_batch * STEPS)
    os.environ["PIPELINES_WORKSPACE"] = str(root)
    params = {"seed": 0, "train": {
        "preset": preset, "device": "cuda", "seq_len": SEQ, "micro_batch": micro_batch, "grad_accum": 1,
        "lr": 3e-4, "min_lr": 3e-5, "warmup_steps": 5, "weight_decay": 0.1, "grad_clip": 1.0,
        "phase1_steps": STEPS, "anneal_fraction": 0.1, "decay_shape": "linear", "checkpoint_every": 0,
        "threads": 4, "compile": compile_, "attention": "auto", "tensorboard": False}}
    (root / "params.yaml").write_text(json.dumps(params))
    times: list[float] = []  # each optimizer step's seconds, as the loop measured them (up to the loss on the host)
    torch.cuda.reset_peak_memory_stats()
    metrics = train_phase(params, "phase1", on_step=lambda step: times.append(step.seconds))
    tokens_per_step = micro_batch * SEQ
    steady = statistics.median(times[WARMUP:])
    cfg = build_config(preset, VOCAB, eos_id=0, pad_id=1)
    return {"tokens_per_s": tokens_per_step / steady, "params": metrics["parameters"], "cfg": cfg,
            "loss_final": metrics["loss_final"], "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1e9}


def plain(preset: str, micro_batch: int) -> dict:
    import torch
    from transformers import LlamaForCausalLM

    from pipelines.train.model import build_config

    torch.backends.cuda.matmul.allow_tf32 = True
    cfg = build_config(preset, VOCAB, eos_id=0, pad_id=1)
    model = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa").cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    gen = torch.Generator(device="cuda").manual_seed(0)
    times = []
    torch.cuda.reset_peak_memory_stats()
    for _ in range(STEPS):
        x = torch.randint(2, VOCAB, (micro_batch, SEQ), device="cuda", generator=gen)
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss)
        times.append(time.perf_counter() - t0)
    n = sum(p.numel() for p in model.parameters())
    out = {"tokens_per_s": micro_batch * SEQ / statistics.median(times[WARMUP:]), "params": n, "cfg": cfg,
           "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1e9}
    del model, opt
    torch.cuda.empty_cache()
    return out


def mask_check() -> float:
    """Max |logit difference| between the flex BlockMask path and the dense-mask sdpa path (fp32, 125m)."""
    import torch

    from pipelines.pack.format import PackedSequence
    from pipelines.train import attention
    from pipelines.train.data import make_batch
    from pipelines.train.model import build_config, build_model

    torch.manual_seed(0)
    model = build_model(build_config("125m", VOCAB, eos_id=0, pad_id=1)).cuda().eval()
    seqs = [PackedSequence(tokens=list(np.random.default_rng(i).integers(2, VOCAB, 512)), doc_starts=[0, 100, 333],
                           n_real=480) for i in range(2)]
    batch = make_batch(seqs).to("cuda")
    with torch.no_grad():
        dense = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                      position_ids=batch.position_ids).logits
        attention.set_implementation(model, "flex_attention")
        flex = model(input_ids=batch.input_ids, attention_mask=attention.document_block_mask(batch.segment_ids),
                     position_ids=batch.position_ids).logits
    return float((dense - flex).abs().max())


def summary(rows: list[dict]) -> dict:
    """One result object (the bench/results contract): the largest preset run is the headline, every run under ``runs``."""
    head = rows[-1]
    keys = ("metric", "ours", "anchor", "anchor_name", "ratio", "input", "mfu_ours", "mfu_anchor", "device", "torch")
    return {"name": "train_gpu", **{k: head[k] for k in keys},
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rows), "runs": rows}


def main() -> None:
    import torch

    if not torch.cuda.is_available():
        print("bench train_gpu: no CUDA device here; run it on a GPU machine (results/train_gpu.json unchanged)")
        return
    compile_ = os.environ.get("BENCH_COMPILE", "1") == "1"
    presets = os.environ.get("BENCH_PRESETS", "125m,350m").split(",")
    peak = peak_flops(torch)
    try:
        check = mask_check()
    except Exception as e:  # report, do not hide: the throughput rows still say what runs
        check = f"failed: {type(e).__name__}: {e}"
    print("flex vs dense mask max |dlogit|:", check, flush=True)
    rows = []
    for preset, mb in CASES:
        if preset not in presets:
            continue
        anchor = plain(preset, mb)
        mine = ours(preset, mb, compile_)
        fpt = flops_per_token(mine["params"], mine["cfg"])
        row = {
            "name": f"train_gpu_{preset}", "metric": "tokens/s (seq 2048, bf16, 1 GPU)",
            "ours": round(mine["tokens_per_s"]), "anchor": round(anchor["tokens_per_s"]),
            "anchor_name": "plain LlamaForCausalLM + torch.optim.AdamW, sdpa causal, bf16 autocast",
            "ratio": round(mine["tokens_per_s"] / anchor["tokens_per_s"], 3),
            "input": f"preset {preset}, {mine['params']/1e6:.0f}M params, micro_batch {mb} x seq {SEQ}, "
                     f"{STEPS} steps (median of the last {STEPS - WARMUP}); ours: packed random documents "
                     f"of 200-1500 tokens with per-document masking, compile={compile_}",
            "mfu_ours": round(mine["tokens_per_s"] * fpt / peak, 4),
            "mfu_anchor": round(anchor["tokens_per_s"] * flops_per_token(anchor["params"], anchor["cfg"]) / peak, 4),
            "peak_gpu_gb_ours": round(mine["peak_gpu_gb"], 1), "peak_gpu_gb_anchor": round(anchor["peak_gpu_gb"], 1),
            "loss_final_ours": mine["loss_final"], "flex_vs_dense_max_abs_logit_diff": check, "device": torch.cuda.get_device_name(),
            "torch": torch.__version__, "peak_flops_assumed": peak,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(summary(rows), indent=1) + "\n")
    out = os.environ.get("OUT")
    if out:
        Path(out, RESULT.name).write_text(RESULT.read_text())


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    main()
