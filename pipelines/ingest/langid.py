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


def detect(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, probability in [0, 1]) of ``text``."""
    lang, prob = identifier().classify(text)
    return str(lang), float(prob)
