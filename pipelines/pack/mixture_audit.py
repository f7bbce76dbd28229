"""Data Mixture Inference: which source shares does a trained BPE's merge list say it was trained on?

Hayase et al. 2024, "Data Mixture Inference: What do BPE tokenizers reveal about their training
data?" (NeurIPS 2024). BPE training merges, at every step t, the pair with the highest count in
its training text as tokenized by merges 1..t-1. So with per-source pair counts c_i^(t)(p) (rates
per byte of a sample of source i, the sample tokenized by the first t-1 merges), the training
mixture's byte shares alpha satisfy, for every step t and every other pair p,

    sum_i alpha_i (c_i^(t)(m_t) - c_i^(t)(p)) >= 0.

Sampling noise breaks some of these, so the linear program minimises the total slack
sum_t v_t subject to sum_i alpha_i (c_i^(t)(m_t) - c_i^(t)(p)) >= -v_t, alpha >= 0,
sum alpha = 1, over the first ``merges`` merges and, per step, the ``top_pairs`` most frequent
competing pairs of each source (the paper's restrictions; a pair rare in every source binds no
mixture).

Why an audit: the merge list is a fingerprint of the text the tokenizer saw. If the inferred
shares are far from the tokenizer sample's real source shares, the tokenizer was not trained on
the data we think (a stale or foreign tokenizer, a sample that is not the phase-1 blend). Only a
byte-level BPE (the product's own, or an imported one with a ByteLevel pre-tokenizer) can be
audited: the words are cut exactly as its pre-tokenizer cuts them.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np


def merge_list(tokenizer_json: Path | str | dict) -> list[tuple[str, str]]:
    """The BPE merges of a tokenizer.json in training order (both spellings: "a b" and ["a", "b"])."""
    spec = tokenizer_json if isinstance(tokenizer_json, dict) else json.loads(Path(tokenizer_json).read_text())
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"mixture audit: a BPE tokenizer is needed, got model type {model.get('type')!r}")
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else (m[0], m[1]) for m in model.get("merges", [])]


def auditable(tokenizer_json: Path | str) -> bool:
    """A BPE whose pre-tokenizer is (or contains) ByteLevel, with no normalizer: its words can be replayed."""
    spec = json.loads(Path(tokenizer_json).read_text())
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    return ((spec.get("model") or {}).get("type") == "BPE" and spec.get("normalizer") is None
            and any(p.get("type") == "ByteLevel" for p in parts))


def word_counts(texts: Iterable[str], tokenizer_json: Path | str) -> Counter:
    """Pre-tokenized words (byte-level symbols, as the BPE trainer counts them) of ``texts``, with counts."""
    from tokenizers import Tokenizer

    pre_tokenizer = Tokenizer.from_file(str(tokenizer_json)).pre_tokenizer
    counts: Counter = Counter()
    for text in texts:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(text))
    return counts


class _PairTable:
    """Per-source pair rates of a vocabulary of words, kept current as merges are applied."""

    def __init__(self, words_by_source: list[Counter]):
        vocabulary = sorted(set().union(*words_by_source))
        index = {w: k for k, w in enumerate(vocabulary)}
        self.rate = np.zeros((len(vocabulary), len(words_by_source)))  # occurrences per byte of the source's sample
        for i, counts in enumerate(words_by_source):
            total = sum(len(w) * c for w, c in counts.items()) or 1  # bytes: one byte-level symbol per byte
            for w, c in counts.items():
                self.rate[index[w], i] = c / total
        self.symbols = [list(w) for w in vocabulary]
        self.pair_id: dict[tuple[str, str], int] = {}
        self.word_pairs: list[list[int]] = []  # each word's adjacent pairs, every position (as the trainer counts)
        self.words_with: dict[int, set[int]] = {}
        for k in range(len(vocabulary)):
            self.word_pairs.append(self._pairs_of(k))
        self.counts = np.zeros((0, self.rate.shape[1]))
        self._update(list(range(len(vocabulary))), [[] for _ in vocabulary], self.word_pairs)

    def _pairs_of(self, word: int) -> list[int]:
        s, ids = self.symbols[word], []
        for pair in zip(s, s[1:]):
            pid = self.pair_id.get(pair)
            if pid is None:
                pid = self.pair_id[pair] = len(self.pair_id)
            ids.append(pid)
            self.words_with.setdefault(pid, set()).add(word)
        return ids

    def _update(self, words: list[int], old: list[list[int]], new: list[list[int]]) -> None:
        """Pair counts: minus each word's ``old`` pairs, plus its ``new`` ones (one bincount per source)."""
        n_pairs = len(self.pair_id)
        if len(self.counts) < n_pairs:
            self.counts = np.concatenate([self.counts, np.zeros((n_pairs - len(self.counts), self.rate.shape[1]))])
        pids = np.fromiter((p for ps in old + new for p in ps), dtype=np.int64)
        owner = np.fromiter((w for ws, ps in ((words, old), (words, new)) for w, p in zip(ws, ps) for _ in p),
                            dtype=np.int64, count=len(pids))
        sign = np.r_[-np.ones(sum(map(len, old))), np.ones(sum(map(len, new)))]
        for i in range(self.rate.shape[1]):
            self.counts[:, i] += np.bincount(pids, weights=sign * self.rate[owner, i], minlength=len(self.counts))

    def merge(self, pair: tuple[str, str]) -> None:
        pid = self.pair_id.get(pair)
        if pid is None:
            return
        a, b = pair
        words = [w for w in sorted(self.words_with.pop(pid, ())) if pid in self.word_pairs[w]]
        old = [self.word_pairs[w] for w in words]
        for word in words:
            s, out, k = self.symbols[word], [], 0
            while k < len(s):  # left to right, non-overlapping, as BPE applies a merge
                if k + 1 < len(s) and s[k] == a and s[k + 1] == b:
                    out.append(a + b)
                    k += 2
                else:
                    out.append(s[k])
                    k += 1
            self.symbols[word] = out
            self.word_pairs[word] = self._pairs_of(word)
        self._update(words, old, [self.word_pairs[w] for w in words])
        self.counts[pid] = 0.0  # all merged: what is left is rounding

    def step_constraints(self, pair: tuple[str, str], top_pairs: int) -> np.ndarray:
        """Rows c(merge) - c(p) for the competing pairs p among each source's ``top_pairs`` most frequent."""
        used = self.counts[:len(self.pair_id)]
        pid = self.pair_id.get(pair)
        chosen = used[pid] if pid is not None else np.zeros(used.shape[1])
        k = min(top_pairs, len(used))
        if k == 0:
            return np.zeros((0, used.shape[1]))
        top = np.unique(np.argpartition(-used, k - 1, axis=0)[:k].ravel())
        top = top[top != pid] if pid is not None else top
        return chosen[None, :] - used[top]


def solve_shares(steps: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """(alpha, total slack) minimising sum_t v_t s.t. rows_t @ alpha >= -v_t, alpha >= 0, sum alpha = 1."""
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix, hstack

    n = steps[0].shape[1]
    rows = np.concatenate(steps)
    scale = float(np.abs(rows).max()) or 1.0  # HiGHS tolerances are absolute: bring the rates to O(1)
    step_of_row = np.repeat(np.arange(len(steps)), [len(s) for s in steps])
    slack = coo_matrix((-np.ones(len(rows)), (np.arange(len(rows)), step_of_row)), shape=(len(rows), len(steps)))
    a_ub = hstack([coo_matrix(-rows / scale), slack]).tocsr()
    cost = np.r_[np.zeros(n), np.ones(len(steps))]
    a_eq = np.r_[np.ones(n), np.zeros(len(steps))][None, :]
    res = linprog(cost, A_ub=a_ub, b_ub=np.zeros(len(rows)), A_eq=a_eq, b_eq=[1.0], bounds=(0, None),
                  method="highs")
    if res.status != 0:
        raise RuntimeError(f"mixture audit: the linear program failed: {res.message}")
    return np.clip(res.x[:n], 0, None) / max(res.x[:n].sum(), 1e-12), float(res.fun) * scale


def merge_constraints(tokenizer_json: Path | str, texts_by_source: dict[str, list[str]], merges: int,
                      top_pairs: int) -> list[np.ndarray]:
    """Per replayed merge (the first ``merges``, sources in sorted order): its rows c(merge) - c(p)."""
    words = [word_counts(texts_by_source[s], tokenizer_json) for s in sorted(texts_by_source)]
    table = _PairTable(words)
    steps = []
    for pair in merge_list(tokenizer_json)[:merges]:
        steps.append(table.step_constraints(pair, top_pairs))
        table.merge(pair)
    return steps


def infer_shares(tokenizer_json: Path | str, texts_by_source: dict[str, list[str]], merges: int = 200,
                 top_pairs: int = 50) -> dict:
    """Each source's inferred share (of the bytes the tokenizer was trained on) from the first ``merges``
    merges of ``tokenizer_json``, with per-source pair counts measured on ``texts_by_source``."""
    started = time.monotonic()
    sources = sorted(texts_by_source)
    steps = [s for s in merge_constraints(tokenizer_json, texts_by_source, merges, top_pairs) if len(s)]
    if len(sources) == 1:
        shares, slack = np.ones(1), 0.0
    elif not steps:
        raise ValueError("mixture audit: no merges to replay")
    else:
        shares, slack = solve_shares(steps)
    return {"shares": {s: float(a) for s, a in zip(sources, shares)}, "merges": len(steps),
            "top_pairs": top_pairs, "constraints": int(sum(len(s) for s in steps)), "slack": slack,
            "sample_bytes": {s: int(sum(len(t.encode("utf-8", "surrogatepass")) for t in texts_by_source[s]))
                             for s in sources},
            "seconds": round(time.monotonic() - started, 3)}


def byte_shares(texts: list[str], sources: list[str]) -> dict[str, float]:
    """Each source's share of the UTF-8 bytes of ``texts`` (the units a byte-level BPE counts)."""
    total: Counter = Counter()
    for text, source in zip(texts, sources):
        total[source] += len(text.encode("utf-8", "surrogatepass"))
    n = sum(total.values()) or 1
    return {s: total[s] / n for s in sorted(total)}


def total_variation(p: dict[str, float], q: dict[str, float]) -> float:
    """Half the L1 distance between two share vectors (a source missing from one has share 0 there)."""
    # sorted: a set's order changes with the process's hash seed, and so would the float sum's last bit
    return 0.5 * sum(abs(p.get(s, 0.0) - q.get(s, 0.0)) for s in sorted(set(p) | set(q)))


def audit(inferred: dict, actual: dict[str, float], warn_at: float, blend: dict[str, float] | None = None) -> dict:
    """Inferred vs actual shares: per-source errors, the total-variation distance, and whether it warrants a warning."""
    shares = inferred["shares"]
    out = {**inferred, "actual_shares": actual,
           "errors": {s: shares.get(s, 0.0) - actual.get(s, 0.0) for s in sorted(set(shares) | set(actual))},
           "total_variation": total_variation(shares, actual), "warn_at": warn_at}
    out["warn"] = out["total_variation"] > warn_at
    if blend is not None:
        out["blend_shares"] = blend
        out["total_variation_to_blend"] = total_variation(shares, blend)
    return out


def mixture_warning(result: dict | None, warn_at: float) -> str | None:
    """``check_pack``'s warning when the inferred shares are more than ``warn_at`` (total variation) from the actual."""
    if not result or "total_variation" not in result or result["total_variation"] <= warn_at:
        return None
    show = lambda shares: ", ".join(f"{s} {v:.3f}" for s, v in sorted(shares.items()))  # noqa: E731
    return (f"mixture audit: the tokenizer's first {result['merges']} merges imply source shares {{{show(result['shares'])}}}"
            f" but its {result.get('actual_from', 'actual')} shares are {{{show(result['actual_shares'])}}}: total "
            f"variation {result['total_variation']:.3f} > warn_at {warn_at} (a stale or foreign tokenizer, or a "
            f"tokenizer sample that is not the phase-1 blend?)")
