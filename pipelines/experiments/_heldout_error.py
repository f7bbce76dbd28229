"""How precisely the held-out set measures a source's bits-per-byte: its standard error over documents.

A source's bpb is a ratio, total nats / total bytes / ln 2, over its held-out documents. Another
draw of documents would give another ratio; the delta-method (linearised) variance of a ratio
estimator is sum_i (nats_i - r * bytes_i)^2 / bytes^2 * n / (n - 1). This is the error of the
*set*, for one model; the seed-to-seed spread of the models is what the t-intervals capture.
"""
from __future__ import annotations

import math

from pipelines.evaluate.bpb import score_documents


def ratio_standard_error(nats: list[float], bytes_: list[int]) -> float:
    """Standard error (in bits per byte) of sum(nats) / sum(bytes) / ln 2 over these documents."""
    n = len(nats)
    if n < 2:
        return math.nan
    total_bytes = sum(bytes_)
    r = sum(nats) / total_bytes
    squares = sum((x - r * b) ** 2 for x, b in zip(nats, bytes_))
    return math.sqrt(squares * n / (n - 1)) / total_bytes / math.log(2)


def documents_for(standard_error: float, docs: int, target: float = 0.01) -> int | None:
    """Held-out documents the source would need for ``target``: the error falls as 1/sqrt(documents)
    for documents drawn like these (None when the error was not measured)."""
    if math.isnan(standard_error) or docs < 2:
        return None
    return max(docs, math.ceil(docs * (standard_error / target) ** 2))


def heldout_standard_errors(model, tokenizer, docs: dict[str, list[str]], ep: dict, seq_len: int,
                            device) -> dict[str, dict]:
    """Per source: documents, bpb and its standard error; each document scored alone, as the evaluate
    stage scores them together (same windows, same truncation)."""
    out = {}
    for source, texts in sorted(docs.items()):
        scores = [score_documents(model, tokenizer, [t], seq_len=seq_len,
                                  max_tokens_per_doc=int(ep["max_tokens_per_doc"]),
                                  batch_size=int(ep.get("batch_size", 8)), device=device) for t in texts]
        scores = [s for s in scores if s.bytes]
        nats, bytes_ = [s.nats for s in scores], [s.bytes for s in scores]
        out[source] = {"docs": len(scores), "bpb": sum(nats) / sum(bytes_) / math.log(2),
                       "standard_error": ratio_standard_error(nats, bytes_)}
    return out
