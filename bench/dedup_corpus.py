"""A perturbed benchmark corpus from real text (shared by bench_dedup and bench_dedup_quality).

Records are built from real sentences (web crawl, Wikipedia, news, books,
GSM8K): each unique record is a run of consecutive sentences starting at a
random place in the pooled text, about ``target_chars`` long; then a share of
records are exact copies (case/whitespace changed) or near copies (a few
words substituted) of earlier records. Fixed seed: the same n gives the same
corpus.
"""
from __future__ import annotations

import gzip
import json
import random
import re
from functools import lru_cache
from pathlib import Path

TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "text"
_SENT = re.compile(r"(?<=[.!?])\s+")


@lru_cache(maxsize=1)
def sentence_pool() -> list[str]:
    docs = []
    with gzip.open(next((TEXT / "web_cc").glob("*.jsonl.gz")), "rt", encoding="utf-8") as f:
        docs += [json.loads(line)["text"] for line in f]
    docs.append((TEXT / "wikipedia" / "wikitext-2_valid.txt").read_text(encoding="utf-8").replace("<unk>", "unk"))
    docs.append((TEXT / "news" / "lee_background.cor").read_text(encoding="utf-8", errors="replace"))
    docs += [p.read_text(encoding="utf-8") for p in sorted((TEXT / "books" / "open-shakespeare").glob("*_gut.txt"))]
    with gzip.open(next((TEXT / "math").glob("*.jsonl.gz")), "rt", encoding="utf-8") as f:
        docs += [json.loads(line)["question"] + " " + json.loads(line)["answer"] for line in f]
    pool = []
    for d in docs:
        pool += [s for s in (" ".join(x.split()) for x in _SENT.split(d)) if len(s.split()) >= 4]
    return pool


def build_corpus(n: int, seed: int = 0, target_chars: int = 8000, exact_share: float = 0.1,
                 near_share: float = 0.1) -> list[dict]:
    rng = random.Random(seed)
    pool = sentence_pool()
    vocab = sorted({w for s in pool[:20000] for w in s.split() if w.isalpha()})
    records = []
    for i in range(n):
        r = rng.random()
        if records and r < exact_share:
            src = records[rng.randrange(len(records))]["text"]
            text = src.upper() if rng.random() < 0.5 else "  " + src.replace(" ", "  ") + "\n"
            kind = "exact"
        elif records and r < exact_share + near_share:
            tokens = records[rng.randrange(len(records))]["text"].split()
            for _ in range(max(1, len(tokens) // 200)):  # ~0.5% of words substituted: J about 0.97
                tokens[rng.randrange(len(tokens))] = rng.choice(vocab)
            text, kind = " ".join(tokens), "near"
        else:
            # Sentences sampled across the whole pool: two unique records share almost no 5-grams.
            parts, size = [], 0
            while size < target_chars:
                s = pool[rng.randrange(len(pool))]
                parts.append(s)
                size += len(s) + 1
            text, kind = " ".join(parts), "unique"
        records.append({"id": f"bench-{seed}-{i:08d}", "url": f"https://bench.example/{i}", "source": kind, "text": text})
    return records
