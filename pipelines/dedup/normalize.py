"""Text normalisation shared by exact hashing and MinHash shingling.

NFKC folds compatibility forms (full-width letters, ligatures, non-breaking
spaces) so copies that differ only in encoding compare equal. Punctuation and
symbols become spaces rather than disappearing, so "word,word" and
"word, word" normalise alike.
"""
from __future__ import annotations

import re
import unicodedata

_PUNCT = re.compile(r"[^\w\s]|_")


def normalize_text(text: str, *, lowercase: bool = True, strip_punctuation: bool = True) -> str:
    text = unicodedata.normalize("NFKC", text)
    if lowercase:
        text = text.lower()
    if strip_punctuation:
        text = _PUNCT.sub(" ", text)
    return " ".join(text.split())


def words(text: str) -> list[str]:
    """The word sequence MinHash shingles: always case- and punctuation-insensitive."""
    return normalize_text(text, lowercase=True, strip_punctuation=True).split()
