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
# ASCII fast path (most web text): the same mapping as _PUNCT as one str.translate table.
_ASCII_PUNCT = {c: " " for c in range(128) if (not chr(c).isalnum() and not chr(c).isspace()) or chr(c) == "_"}


def normalize_text(text: str, *, lowercase: bool = True, strip_punctuation: bool = True) -> str:
    if text.isascii():  # NFKC leaves ASCII unchanged
        if lowercase:
            text = text.lower()
        if strip_punctuation:
            text = text.translate(_ASCII_PUNCT)
        return " ".join(text.split())
    text = unicodedata.normalize("NFKC", text)
    if lowercase:
        text = text.lower()
    if strip_punctuation:
        text = _PUNCT.sub(" ", text)
    return " ".join(text.split())


def words(text: str) -> list[str]:
    """The word sequence MinHash shingles: always case- and punctuation-insensitive."""
    return normalize_text(text, lowercase=True, strip_punctuation=True).split()
