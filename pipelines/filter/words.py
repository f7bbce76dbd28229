"""Word splitting for the Gopher rules, equal to datatrove's English splitter without spaCy.

datatrove 0.10.1 splits English words with ``spacy.blank("en")``'s tokenizer
and drops whitespace tokens. spaCy is a test/bench dependency here and slow
(~150 kB/s), so this module runs the same algorithm in pure Python: split on
whitespace, peel prefixes/suffixes off each chunk (stopping at special
cases), keep URLs whole, split the rest on infixes, then merge the special
cases that contain punctuation (``:)``, ``a.m.``). The regular expressions
and special cases are spaCy 3.8's English ones (MIT licence), exported to
``spacy_en_tokenizer.json`` by ``python -m pipelines.filter.words`` (needs
spaCy); ``tests/test_filter.py`` checks the export and the decisions against
datatrove.
"""
from __future__ import annotations

import json
import re
import unicodedata
from functools import lru_cache
from itertools import chain
from pathlib import Path

from pipelines.filter.punctuation import SENTENCE_PUNCT_CHARS

RULES_FILE = Path(__file__).with_name("spacy_en_tokenizer.json")
_SPANS = re.compile(r"\S+|\s+")


class WordSplitter:
    def __init__(self, rules: dict):
        self.prefix_search = re.compile(rules["prefix"]).search
        self.suffix_search = re.compile(rules["suffix"]).search
        self.infix_finditer = re.compile(rules["infix"]).finditer
        self.url_match = re.compile(rules["url"]).match
        self.specials: dict[str, list[str]] = rules["specials"]
        # Special cases that contain affixes are split by the affix rules first and merged afterwards.
        self.merges: dict[tuple[str, ...], list[str]] = {tuple(k): v for k, v in rules["merges"]}
        self.merge_lengths: dict[str, list[int]] = {}
        for k in self.merges:
            self.merge_lengths.setdefault(k[0], []).append(len(k))
        self.chunk = lru_cache(maxsize=200_000)(self._chunk)

    def split(self, text: str) -> list[str]:
        tokens = list(chain.from_iterable(map(self.chunk, text.split())))  # C loops over the cached chunks
        # Whitespace tokens only matter for special-case merges; without them runs only get
        # longer, so when no merge matches here none matches in the exact pass either.
        if not self._has_merge_candidate(tokens):
            return tokens
        # A newline always makes a whitespace token, and no merge spans one: lines are independent,
        # so only the lines with a candidate take the (slower) exact pass.
        out: list[str] = []
        for line in text.split("\n"):
            line_tokens = list(chain.from_iterable(map(self.chunk, line.split())))
            out.extend(self._split_exact(line) if self._has_merge_candidate(line_tokens) else line_tokens)
        return out

    def _has_merge_candidate(self, tokens: list[str]) -> bool:
        lengths, merges = self.merge_lengths, self.merges
        if lengths.keys().isdisjoint(tokens):
            return False
        for i in [i for i, t in enumerate(tokens) if t in lengths]:
            for length in lengths[tokens[i]]:
                if tuple(tokens[i:i + length]) in merges:
                    return True
        return False

    def _split_exact(self, text: str, keep_spaces: bool = False) -> list[str]:
        tokens: list[str] = []  # "" stands for a whitespace token
        chunk_of: list[int] = []  # which whitespace-separated chunk each token came from
        after_token = False
        for n, span in enumerate(_SPANS.findall(text)):
            if not span[0].isspace():
                pieces = self.chunk(span)
                tokens.extend(pieces)
                chunk_of.extend([n] * len(pieces))
                after_token = True
                continue
            # spaCy makes whitespace a token unless it is the single space after a token.
            if not (after_token and span == " "):
                tokens.append("")
                chunk_of.append(n)
            after_token = False
        tokens = self._merge_specials(tokens, chunk_of)
        if keep_spaces:
            return tokens
        return [t for t in tokens if t]  # datatrove drops whitespace tokens

    def count_sentences(self, text: str) -> int:
        """Sentences spaCy's sentencizer finds in ``text`` (datatrove's English ``split_into_sentences``).

        A sentence ends at a token in SENTENCE_PUNCT_CHARS; the next one starts at the first later
        token that is neither such a token nor punctuation (whitespace tokens, "", count as starts).
        """
        tokens = self._split_exact(text, keep_spaces=True)
        if not tokens:
            return 1  # datatrove's splitter returns [text] for a text without tokens
        sentences, seen_end = 1, False
        for tok in tokens:
            is_end = tok in SENTENCE_PUNCT_CHARS
            if seen_end and not is_end and not _is_punct(tok):
                sentences += 1
                seen_end = False
            elif is_end:
                seen_end = True
        return sentences

    def _chunk(self, string: str) -> tuple[str, ...]:
        special = self.specials.get(string)
        if special is not None:
            return tuple(special)
        prefixes, suffixes = [], []
        string = self._split_affixes(string, prefixes, suffixes)
        out = prefixes
        if string:
            special = self.specials.get(string)
            if special is not None:
                out.extend(special)
            elif self.url_match(string):
                out.append(string)
            else:
                out.extend(self._split_infixes(string))
        out.extend(reversed(suffixes))
        return tuple(out)

    def _split_affixes(self, string: str, prefixes: list[str], suffixes: list[str]) -> str:
        """spaCy's Tokenizer._split_affixes, line for line."""
        last_size = 0
        specials = self.specials
        while string and len(string) != last_size:
            if string in specials:
                break
            last_size = len(string)
            m = self.prefix_search(string)
            pre_len = m.end() - m.start() if m else 0
            if pre_len:
                prefix, minus_pre = string[:pre_len], string[pre_len:]
                if minus_pre and minus_pre in specials:
                    prefixes.append(prefix)
                    return minus_pre
            m = self.suffix_search(string[pre_len:])
            suf_len = m.end() - m.start() if m else 0
            if suf_len:
                suffix, minus_suf = string[-suf_len:], string[:-suf_len]
                if minus_suf and minus_suf in specials:
                    suffixes.append(suffix)
                    return minus_suf
            if pre_len and suf_len and pre_len + suf_len <= len(string):
                string = string[pre_len:-suf_len]
                prefixes.append(prefix)
                suffixes.append(suffix)
            elif pre_len:
                string = minus_pre
                prefixes.append(prefix)
            elif suf_len:
                string = minus_suf
                suffixes.append(suffix)
        return string

    def _split_infixes(self, string: str) -> list[str]:
        out, start = [], 0
        for m in self.infix_finditer(string):
            a, b = m.start(), m.end()
            if a == 0:  # an infix at the very start is not a split point
                continue
            if a != start:
                out.append(string[start:a])
            if a != b:
                out.append(string[a:b])
            start = b
        if string[start:]:
            out.append(string[start:])
        return out

    def _merge_specials(self, tokens: list[str], chunk_of: list[int]) -> list[str]:
        """spaCy's Tokenizer._apply_special_cases: re-split token runs that spell a special case.

        Every match is a candidate; longest first, then leftmost; a candidate is taken when its
        first and last tokens are not covered by an earlier candidate (every candidate covers its
        tokens, taken or not), and applied only when its tokens touch (one chunk) -- spaCy looks
        the span's text, spaces included, up in its rules.
        """
        n = len(tokens)
        matches = []
        for i, tok in enumerate(tokens):
            for length in self.merge_lengths.get(tok, ()):
                if i + length <= n and tuple(tokens[i:i + length]) in self.merges:
                    matches.append((i, i + length))
        matches.sort(key=lambda m: (m[0] - m[1], m[0]))
        seen: set[int] = set()
        taken = []
        for a, b in matches:
            if a not in seen and b - 1 not in seen:
                taken.append((a, b))
            seen.update(range(a, b))
        out, i = [], 0
        for a, b in sorted(taken):
            out.extend(tokens[i:a])
            if chunk_of[a] == chunk_of[b - 1]:
                out.extend(self.merges[tuple(tokens[a:b])])
            else:
                out.extend(tokens[a:b])
            i = b
        out.extend(tokens[i:])
        return out


def _is_punct(token: str) -> bool:
    """spaCy's lexical ``is_punct``: every character is Unicode punctuation (category P*)."""
    return bool(token) and all(unicodedata.category(c).startswith("P") for c in token)


@lru_cache(maxsize=1)
def english_splitter() -> WordSplitter:
    return WordSplitter(json.loads(RULES_FILE.read_text(encoding="utf-8")))


def split_into_words(text: str) -> list[str]:
    """English words as datatrove's ``split_into_words(text, "en")`` returns them."""
    return english_splitter().split(text)


def count_sentences(text: str) -> int:
    return english_splitter().count_sentences(text)


def export_spacy_rules() -> dict:
    """The English tokenizer rules of the installed spaCy, in the form WordSplitter reads."""
    from spacy.lang.en import English

    tok = English().tokenizer
    rules = {
        "spacy_version": __import__("spacy").__version__,
        "prefix": tok.prefix_search.__self__.pattern,
        "suffix": tok.suffix_search.__self__.pattern,
        "infix": tok.infix_finditer.__self__.pattern,
        "url": tok.url_match.__self__.pattern,
        "specials": {},
        "merges": [],
    }
    affixes_only = WordSplitter(dict(rules, specials={}, merges=[]))  # spaCy's _tokenize_affixes(string, False)
    for string, pieces in sorted(tok.rules.items()):
        orths = [p[65] if 65 in p else p["ORTH"] for p in pieces]  # 65 = spaCy's ORTH attribute id
        if not string.strip():
            continue  # whitespace specials: whitespace never reaches the chunk splitter
        rules["specials"][string] = orths
        if tok.find_prefix(string) or tok.find_suffix(string) or tok.find_infix(string):
            affix_tokens = affixes_only.split(string)
            if affix_tokens != orths:  # merges that change nothing are left out
                rules["merges"].append([affix_tokens, orths])
    return rules


if __name__ == "__main__":
    RULES_FILE.write_text(json.dumps(export_spacy_rules(), ensure_ascii=False, indent=0, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {RULES_FILE}")
