"""How well does Data Mixture Inference recover the product's tokenizer mixture, and at what cost?

``python -m pipelines.experiments mixture_audit`` (needs ``data/mix`` and ``data/pack`` from ``dvc repro pack``;
a few minutes on one core). Two settings:

- **product**: the tokenizer in ``data/pack/tokenizer`` against the source shares (bytes) of its training
  sample, counting on ``audit_sample``'s per-source pieces (at demo size the tokenizer sample is nearly
  the whole phase-1 blend, so these are pieces of text the tokenizer saw). Swept over the counting sample per source,
  the merges replayed and the competing pairs per step.
- **held out** (the paper's setting): phase-1 documents cut into pieces, split by a hash into a training
  half and a counting half; tokenizers trained on known random mixtures of the training half, inferred
  from counts on the counting half only.

Writes ``reports/mixture_audit.json`` and the section "Data Mixture Inference audit" of ``reports/science.md``.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq

from pipelines.config import workspace
from pipelines.core.atomic import write_json_atomic
from pipelines.experiments._report import upsert_section
from pipelines.pack.config import mixture_audit_config
from pipelines.pack.documents import audit_sample, tokenizer_sample
from pipelines.pack.mixture_audit import (
    audit, byte_shares, infer_shares, merge_constraints, solve_shares, total_variation,
)
from pipelines.pack.tokenizer import train_tokenizer

SECTION = "## Data Mixture Inference audit"
MERGES = (50, 100, 200, 300)
SWEEP = ((25_000, 50), (100_000, 50), (100_000, 100), (200_000, 50), (400_000, 50), (4_000_000, 50))  # (chars per source, top pairs)
PIECE_CHARS = 2000
HELD_OUT_SOURCES = ("books", "math", "news", "wikipedia")


class _LocalRun:
    """Just enough of a stage run for ``pipelines.pack.documents``' samplers: tasks run in this process."""

    @staticmethod
    def map(fn, jobs):
        return [fn(job) for job in jobs]


def phase1_shards(root: Path) -> list[SimpleNamespace]:
    return [SimpleNamespace(uri=p) for p in sorted(glob.glob(str(root / "data/mix/phase1/part-*.parquet")))]


def phase1_documents(root: Path) -> list[dict]:
    """Unique phase-1 documents (id, source, text) in id order."""
    first: dict[str, dict] = {}
    for row in pq.read_table([r.uri for r in phase1_shards(root)], columns=["id", "source", "text"]).to_pylist():
        first.setdefault(row["id"], row)
    return [first[i] for i in sorted(first)]


def _row(inferred: dict[str, float], actual: dict[str, float]) -> dict:
    errors = {s: inferred.get(s, 0.0) - actual.get(s, 0.0) for s in sorted(set(inferred) | set(actual))}
    return {"total_variation": total_variation(inferred, actual), "max_abs_error": max(map(abs, errors.values())),
            "errors": errors, "inferred": inferred}


def product_setting(root: Path, params: dict) -> dict:
    run, shards = _LocalRun(), phase1_shards(root)
    tokenizer_json = root / "data/pack/tokenizer/tokenizer.json"
    texts, sources = tokenizer_sample(run, shards, int(params["pack"].get("tokenizer_sample_chars", 4_000_000)))
    actual = byte_shares(texts, sources)
    rows = []
    for cap, top_pairs in SWEEP:
        counting = audit_sample(run, shards, cap)
        names = sorted(counting)
        started = time.monotonic()
        steps = merge_constraints(tokenizer_json, counting, max(MERGES), top_pairs)
        replay_s = time.monotonic() - started
        for merges in MERGES:
            started = time.monotonic()
            shares, _ = solve_shares([s for s in steps[:merges] if len(s)])
            rows.append({"chars_per_source": cap, "top_pairs": top_pairs, "merges": merges,
                         "replay_seconds_all_merges": round(replay_s, 2),
                         "lp_seconds": round(time.monotonic() - started, 2),
                         **_row(dict(zip(names, map(float, shares))), actual)})
        print(f"chars per source {cap}, top {top_pairs}: " + ", ".join(
            f"T={r['merges']} tv={r['total_variation']:.4f}" for r in rows[-len(MERGES):]), flush=True)
    default = mixture_audit_config(params["pack"].get("mixture_audit"))
    started = time.monotonic()
    counting = audit_sample(run, shards, default["sample_chars_per_source"])
    timed = infer_shares(tokenizer_json, counting, default["merges"], default["top_pairs"])
    timed["seconds_with_sampling"] = round(time.monotonic() - started, 2)
    return {"actual": actual, "tokenizer_sample_chars": sum(map(len, texts)), "rows": rows,
            "default": {**audit(timed, actual, default["warn_at"]), "params": default}}


def held_out_setting(root: Path, vocab_size: int, warn_at: float, mixtures: int = 8, train_chars: int = 400_000,
                     cap: int = 100_000, seed: int = 0) -> dict:
    """Tokenizers trained on random mixtures of one half of the pieces, inferred from the other half."""
    pieces: dict[str, tuple[list[str], list[str]]] = {s: ([], []) for s in HELD_OUT_SOURCES}
    for d in phase1_documents(root):
        if d["source"] not in pieces:
            continue
        for k in range(0, len(d["text"]), PIECE_CHARS):
            half = hashlib.blake2b(f"{d['id']}:{k}".encode(), digest_size=2).digest()[0] & 1
            pieces[d["source"]][half].append(d["text"][k:k + PIECE_CHARS])
    counting = {s: _take(h[1], cap) for s, h in pieces.items()}
    available = {s: sum(map(len, h[0])) for s, h in pieces.items()}
    rng = np.random.default_rng(seed)
    runs = []
    for mixture in range(10 * mixtures):  # draws whose shares a source cannot fill are skipped
        if len(runs) == mixtures * len(MERGES):
            break
        alpha = rng.dirichlet(np.ones(len(HELD_OUT_SOURCES)))
        want = {s: int(a * train_chars) for s, a in zip(HELD_OUT_SOURCES, alpha)}
        if any(want[s] > available[s] for s in want):
            continue
        texts, sources = [], []
        for s in HELD_OUT_SOURCES:
            taken = _take(pieces[s][0], want[s])
            texts += taken
            sources += [s] * len(taken)
        order = np.random.default_rng(seed + mixture).permutation(len(texts))  # BPE counts are order-free anyway
        actual = byte_shares([texts[i] for i in order], [sources[i] for i in order])
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer_json = Path(tmp) / "tokenizer.json"
            train_tokenizer((texts[i] for i in order), vocab_size).save(str(tokenizer_json))
            steps = merge_constraints(tokenizer_json, counting, max(MERGES), 50)
        names = sorted(counting)
        for merges in MERGES:
            shares, _ = solve_shares([s for s in steps[:merges] if len(s)])
            print(f"held out, mixture {mixture}, T={merges}: tv {total_variation(dict(zip(names, shares)), actual):.4f}",
                  flush=True)
            runs.append({"mixture": mixture, "merges": merges, "actual": actual,
                         **_row(dict(zip(names, map(float, shares))), actual)})
    summary = {}
    for merges in MERGES:
        tv = np.asarray([r["total_variation"] for r in runs if r["merges"] == merges])
        err = np.asarray([r["max_abs_error"] for r in runs if r["merges"] == merges])
        at = [r for r in runs if r["merges"] == merges]
        wrong = [total_variation(a["inferred"], b["actual"]) for a in at for b in at if a["mixture"] != b["mixture"]]
        summary[merges] = {"mixtures": len(tv), "total_variation_mean": float(tv.mean()),
                           "total_variation_max": float(tv.max()), "max_abs_error_max": float(err.max()),
                           "wrong_blend_total_variation_min": float(min(wrong)),
                           "wrong_blend_total_variation_median": float(np.median(wrong)),
                           "wrong_blend_above_warn_at": float(np.mean(np.asarray(wrong) > warn_at))}
    return {"sources": list(HELD_OUT_SOURCES), "train_chars": train_chars, "chars_per_source": cap,
            "piece_chars": PIECE_CHARS, "vocab_size": vocab_size, "runs": runs, "summary": summary}


def _take(pieces: list[str], chars: int) -> list[str]:
    """About ``chars`` of ``pieces``, evenly spaced over all of them (a sample of the whole source, not its start)."""
    step = max(1, sum(map(len, pieces)) // max(chars, 1))
    return pieces[::step]


def markdown(result: dict) -> str:
    prod, held = result["product"], dict(result["held_out"])
    held["summary"] = {int(k): v for k, v in held["summary"].items()}  # JSON keys are strings
    d = prod["default"]
    lines = [SECTION, "",
             "Generated by `python -m pipelines.experiments mixture_audit` (numbers in `reports/mixture_audit.json`). "
             "`pack.mixture_audit` (pipelines/pack/mixture_audit.py) infers the source shares the tokenizer was "
             "trained on from its merge list alone, and `check_pack` warns when they differ from the tokenizer "
             "sample's real shares.", "",
             "- **Paper** (Hayase et al. 2024, *Data Mixture Inference: What do BPE tokenizers reveal about their "
             "training data?*, NeurIPS 2024): a linear program over the merge order recovers the mixture proportions "
             "of a BPE's training data accurately (errors of ~1e-2 or better in their settings) from the first few "
             "hundred merges, with per-category samples far larger than ours.",
             f"- **Ours, the product's tokenizer** (vocab {result['vocab_size']}, trained on "
             f"{prod['tokenizer_sample_chars']:,} chars of the phase-1 blend, {len(prod['actual'])} sources): with the "
             f"defaults (first {d['merges']} merges, top {d['top_pairs']} pairs per source and step, "
             f"{d['params']['sample_chars_per_source']:,} chars per source) the inferred shares are "
             f"{d['total_variation']:.4f} from the real ones in total variation (largest per-source error "
             f"{max(map(abs, d['errors'].values())):.4f}), in {d['seconds_with_sampling']:.1f} s on one core "
             f"(sampling, replay and LP). At demo size the counting pieces are text the tokenizer saw (its sample is "
             f"nearly the whole blend), yet far less of it: sampling noise, not unseen text, is what limits it.", "",
             "| source | actual share (bytes) | inferred | error |", "|---|---|---|---|"]
    for s, a in d["actual_shares"].items():
        lines.append(f"| {s} | {a:.4f} | {d['shares'].get(s, 0.0):.4f} | {d['errors'][s]:+.4f} |")
    lines += ["", "Sweep on the product's tokenizer (total variation; LP seconds; the replay of 300 merges is timed "
              "once per counting sample):", "",
              "| chars per source | top pairs | merges | total variation | max per-source error | LP s | replay s |",
              "|---|---|---|---|---|---|---|"]
    for r in prod["rows"]:
        lines.append(f"| {r['chars_per_source']:,} | {r['top_pairs']} | {r['merges']} | {r['total_variation']:.4f} | "
                     f"{r['max_abs_error']:.4f} | {r['lp_seconds']:.2f} | {r['replay_seconds_all_merges']:.2f} |")
    lines += ["", f"Held out (the paper's setting): {held['summary'][MERGES[0]]['mixtures']} random mixtures "
              f"(Dirichlet(1)) of {', '.join(held['sources'])}, {held['train_chars']:,} training chars each, a "
              f"{held['vocab_size']}-token BPE per mixture; counts from the other half of the documents "
              f"({held['chars_per_source']:,} chars per source, pieces of {held['piece_chars']} chars split by hash), "
              "top 50 pairs:", "",
              "| merges | mean total variation | worst total variation | worst per-source error | vs a wrong blend: "
              "smallest / median total variation, share above warn_at |", "|---|---|---|---|---|"]
    for merges, e in held["summary"].items():
        lines.append(f"| {merges} | {e['total_variation_mean']:.4f} | {e['total_variation_max']:.4f} | "
                     f"{e['max_abs_error_max']:.4f} | {e['wrong_blend_total_variation_min']:.4f} / "
                     f"{e['wrong_blend_total_variation_median']:.4f}, {e['wrong_blend_above_warn_at']:.0%} |")
    held_default = held["summary"].get(d["merges"]) or held["summary"][MERGES[-1]]
    whole = max(prod["rows"], key=lambda r: (r["chars_per_source"], r["merges"]))
    worst = max(d["total_variation"], held_default["total_variation_max"])
    verdict = ("**holds at our scale**" if worst <= 0.02 else
               f"**not shown at this scale** (errors of {d['total_variation']:.2f} on the product's tokenizer and up to "
               f"{held_default['total_variation_max']:.2f} held out, against the paper's ~1e-2)")
    lines += ["", f"Verdict: the paper's accuracy {verdict}. What limits it here is the counting sample: 1e5 "
              "characters per source, so a merge's pair count differs from a competitor's by less "
              "than its sampling noise after the first few dozen merges (more merges then add noisy constraints, "
              "which is why the error does not fall with the merges replayed as in the paper), and five of the "
              "product's eight sources are English web prose with near-identical pair statistics (their shares "
              "trade against each other; books, math and code are recovered far better). Counting on the whole "
              f"blend ({whole['chars_per_source']:,} chars per source above, {whole['replay_seconds_all_merges']:.0f} s "
              f"of replay) gets to {whole['total_variation']:.3f} at {whole['merges']} merges. "
              f"As an audit it is still useful: `pack.mixture_audit.warn_at` ({d['warn_at']}) sits above every "
              "error measured on a correctly trained tokenizer and below most distances to a wrong blend (last "
              "column: a tokenizer trained on one random mixture compared with another mixture's shares), so it "
              "flags a tokenizer trained on a clearly different mixture, not sampling noise. Wall time: "
              f"{result['seconds']:.0f} s for this experiment on one core of a shared 2-core CPU."]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """``--report``: rewrite the section from reports/mixture_audit.json without measuring again."""
    import yaml

    os.environ.setdefault("RAYON_NUM_THREADS", "1")  # the tokenizer trainer: one core
    started = time.monotonic()
    root = workspace()
    if argv[:1] == ["--report"]:
        upsert_section(root / "reports/science.md", SECTION, markdown(json.loads((root / "reports/mixture_audit.json").read_text())))
        return 0
    params = yaml.safe_load((root / "params.yaml").read_text())
    vocab_size = json.loads((root / "data/pack/pack.json").read_text())["vocab_size"]
    result = {"vocab_size": vocab_size, "product": product_setting(root, params),
              "held_out": held_out_setting(root, vocab_size, mixture_audit_config(
                  params["pack"].get("mixture_audit"))["warn_at"])}
    result["seconds"] = time.monotonic() - started
    write_json_atomic(root / "reports/mixture_audit.json", result)
    upsert_section(root / "reports/science.md", SECTION, markdown(result))
    print(markdown(result))
    return 0
