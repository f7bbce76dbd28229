"""Language identification with py3langid (normalised probabilities).

The model is loaded once per process, on first use: each executor worker pays
the load once, not once per shard or record.
"""
from __future__ import annotations

_IDENTIFIER = None


def identifier():
    global _IDENTIFIER
    if _IDENTIFIER is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        # py3langid < 0.3 ships a pickled model; 0.4 a numpy archive (same model, same API after loading).
        load = getattr(LanguageIdentifier, "from_model_file", None) or LanguageIdentifier.from_pickled_model
        _IDENTIFIER = load(MODEL_FILE, norm_probs=True)
    return _IDENTIFIER


def detect(text: str, max_chars: int = 0) -> tuple[str, float]:
    """(ISO 639-1 code, probability in [0, 1]) of ``text`` (its first ``max_chars`` characters when > 0).

    py3langid walks its DFA one byte at a time in Python, so a few long documents dominate
    its cost; a prefix of several thousand characters identifies the language just as well
    (bench/bench_ingest_filter.py measures the decisions that change).
    """
    lang, prob = identifier().classify(text[:max_chars] if max_chars > 0 else text)
    return str(lang), float(prob)
