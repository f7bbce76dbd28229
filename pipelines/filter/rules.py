"""Filter rules, datatrove style: each has a ``name`` and ``check(doc) -> (keep, detail)``.

``detail`` says which sub-check failed and the value it saw, e.g.
``{"check": "gopher_short_doc", "value": 12}``; it is ``{}`` when the doc passes.
The Gopher rules follow datatrove 0.10.1's GopherQualityFilter and
GopherRepetitionFilter (Rae et al. 2021, table A1) check for check, in the
same order, with the same words (see ``words.py``); a threshold that is
0/None switches its check off, as in datatrove.
"""
from __future__ import annotations

import re
from collections import Counter
from functools import cached_property

from pipelines.filter.punctuation import PUNCTUATION_SET, TERMINAL_PUNCTUATION
from pipelines.filter.url_filter import URLFilterRule
from pipelines.filter.words import count_sentences, split_into_words

STOP_WORDS = frozenset(["the", "be", "to", "of", "and", "that", "have", "with"])


class Doc:
    """The fields rules look at; words are split once and shared by the rules."""

    __slots__ = ("text", "lang", "lang_score", "source", "url", "__dict__")

    def __init__(self, text: str, lang: str | None = None, lang_score: float | None = None, source: str = "",
                 url: str | None = None):
        self.text, self.lang, self.lang_score, self.source, self.url = text or "", lang, lang_score, source, url

    def replace_text(self, text: str) -> None:
        """A line-level rule (C4) rewrote the text: later rules see the new text and its words."""
        self.text = text
        self.__dict__.pop("words", None)

    @cached_property
    def words(self) -> list[str]:
        return split_into_words(self.text)


def _fail(check: str, value) -> tuple[bool, dict]:
    if isinstance(value, float):
        value = round(value, 6)
    return False, {"check": check, "value": value}


PASS: tuple[bool, dict] = (True, {})


class LanguageRule:
    name = "language"

    def __init__(self, allowed: list[str], min_score: float = 0.0):
        if not allowed:
            raise ValueError("filter.language.allowed must list at least one language code")
        self.allowed = frozenset(allowed)
        self.min_score = float(min_score)

    def check(self, doc: Doc) -> tuple[bool, dict]:
        if doc.lang not in self.allowed:
            return _fail("lang_not_allowed", doc.lang)
        score = float(doc.lang_score) if doc.lang_score is not None else 0.0
        if score < self.min_score:
            return _fail("lang_score_low", score)
        return PASS


class GopherQualityRule:
    name = "gopher_quality"

    def __init__(self, min_doc_words=50, max_doc_words=100000, min_avg_word_length=3, max_avg_word_length=10,
                 max_symbol_word_ratio=0.1, max_bullet_lines_ratio=0.9, max_ellipsis_lines_ratio=0.3,
                 max_non_alpha_words_ratio=0.8, min_stop_words=2, stop_words=None):
        self.min_doc_words, self.max_doc_words = min_doc_words, max_doc_words
        self.min_avg_word_length, self.max_avg_word_length = min_avg_word_length, max_avg_word_length
        self.max_symbol_word_ratio = max_symbol_word_ratio
        self.max_bullet_lines_ratio, self.max_ellipsis_lines_ratio = max_bullet_lines_ratio, max_ellipsis_lines_ratio
        self.max_non_alpha_words_ratio = max_non_alpha_words_ratio  # really a minimum share of alphabetic words
        self.min_stop_words = min_stop_words
        self.stop_words = frozenset(stop_words) if stop_words is not None else STOP_WORDS

    def check(self, doc: Doc) -> tuple[bool, dict]:
        text, words = doc.text, doc.words
        n_words = len(words)
        # Word statistics over distinct words (Counter runs in C; a page repeats most of its words),
        # with each word's classes memoised across documents: same numbers as per-word loops.
        counts = Counter(words)
        n_non_symbol = non_symbol_chars = n_alpha = 0
        for w, cnt in counts.items():
            cls = _word_class(w)
            if cls & _NON_SYMBOL:
                n_non_symbol += cnt
                non_symbol_chars += len(w) * cnt
            if cls & _HAS_ALPHA:
                n_alpha += cnt
        if n_non_symbol == 0:  # datatrove divides by zero here when min_doc_words is off
            return _fail("gopher_short_doc", 0)
        if self.min_doc_words and n_non_symbol < self.min_doc_words:
            return _fail("gopher_short_doc", n_non_symbol)
        if self.max_doc_words and n_non_symbol > self.max_doc_words:
            return _fail("gopher_long_doc", n_non_symbol)

        avg_len = non_symbol_chars / n_non_symbol
        if self.min_avg_word_length and avg_len < self.min_avg_word_length:
            return _fail("gopher_below_avg_threshold", avg_len)
        if self.max_avg_word_length and avg_len > self.max_avg_word_length:
            return _fail("gopher_above_avg_threshold", avg_len)

        if self.max_symbol_word_ratio:
            hashes = text.count("#") / n_words
            if hashes > self.max_symbol_word_ratio:
                return _fail("gopher_too_many_hashes", hashes)
            ellipses = (text.count("...") + text.count("…")) / n_words
            if ellipses > self.max_symbol_word_ratio:
                return _fail("gopher_too_many_ellipsis", ellipses)

        lines = text.splitlines()
        if self.max_bullet_lines_ratio:
            bullets = sum(s.lstrip().startswith(("•", "-")) for s in lines) / len(lines)
            if bullets > self.max_bullet_lines_ratio:
                return _fail("gopher_too_many_bullets", bullets)
        if self.max_ellipsis_lines_ratio:
            end_ellipsis = sum(s.rstrip().endswith(("...", "…")) for s in lines) / len(lines)
            if end_ellipsis > self.max_ellipsis_lines_ratio:
                return _fail("gopher_too_many_end_ellipsis", end_ellipsis)

        if self.max_non_alpha_words_ratio:
            alpha_share = n_alpha / n_words
            if alpha_share < self.max_non_alpha_words_ratio:
                return _fail("gopher_below_alpha_threshold", alpha_share)

        if self.min_stop_words:
            n_stop = len(self.stop_words.intersection(counts))
            if n_stop < self.min_stop_words:
                return _fail("gopher_enough_stop_words", n_stop)
        return PASS


_NON_SYMBOL, _HAS_ALPHA = 1, 2
_WORD_CLASSES: dict[str, int] = {}
_WORD_CLASSES_MAX = 1_000_000  # memo bound (a worker sees a long tail of rare words)


def _word_class(w: str) -> int:
    """Bit flags of a word: _NON_SYMBOL (not only punctuation), _HAS_ALPHA (has a letter); memoised."""
    cls = _WORD_CLASSES.get(w)
    if cls is None:
        cls = (_NON_SYMBOL if any(ch not in PUNCTUATION_SET for ch in w) else 0) | \
              (_HAS_ALPHA if any(ch.isalpha() for ch in w) else 0)
        if len(_WORD_CLASSES) >= _WORD_CLASSES_MAX:
            _WORD_CLASSES.clear()
        _WORD_CLASSES[w] = cls
    return cls


def _find_duplicates(items: list[str]) -> tuple[int, int]:
    """(number of repeated items, characters in them), each repeat counted after its first occurrence."""
    seen: set[str] = set()
    dup_items = dup_chars = 0
    for x in items:
        if x in seen:
            dup_items += 1
            dup_chars += len(x)
        else:
            seen.add(x)
    return dup_items, dup_chars


def _top_ngram_chars(words: list[str], n: int) -> int:
    """Characters covered by the most frequent n-gram (its length, spaces included, times its count)."""
    grams = Counter(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))
    if not grams:
        return 0
    gram, count = grams.most_common(1)[0]
    return len(gram) * count


def _duplicate_ngram_chars(words: list[str], n: int) -> int:
    """Characters in n-grams that repeat an earlier one; a repeat skips its n words (no double counting)."""
    seen: set[str] = set()
    repeated, i, last = 0, 0, len(words) - n + 1
    while i < last:
        gram = "".join(words[i:i + n])
        if gram in seen:
            repeated += len(gram)
            i += n
        else:
            seen.add(gram)
            i += 1
    return repeated


class GopherRepetitionRule:
    name = "gopher_repetition"
    _paragraphs = re.compile(r"\n{2,}")
    _lines = re.compile("\n+")

    def __init__(self, dup_line_frac=0.3, dup_para_frac=0.3, dup_line_char_frac=0.2, dup_para_char_frac=0.2,
                 top_n_grams=((2, 0.2), (3, 0.18), (4, 0.16)),
                 dup_n_grams=((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))):
        self.dup_line_frac, self.dup_para_frac = dup_line_frac, dup_para_frac
        self.dup_line_char_frac, self.dup_para_char_frac = dup_line_char_frac, dup_para_char_frac
        self.top_n_grams = [(int(n), float(f)) for n, f in top_n_grams or []]
        self.dup_n_grams = [(int(n), float(f)) for n, f in dup_n_grams or []]

    def check(self, doc: Doc) -> tuple[bool, dict]:
        text = doc.text
        if not text:
            return _fail("empty", 0)
        n_chars = len(text)

        paragraphs = self._paragraphs.split(text.strip())
        dup_paras, dup_para_chars = _find_duplicates(paragraphs)
        if self.dup_para_frac and dup_paras / len(paragraphs) > self.dup_para_frac:
            return _fail("dup_para_frac", dup_paras / len(paragraphs))
        if self.dup_para_char_frac and dup_para_chars / n_chars > self.dup_para_char_frac:
            return _fail("dup_para_char_frac", dup_para_chars / n_chars)

        lines = self._lines.split(text)
        dup_lines, dup_line_chars = _find_duplicates(lines)
        if self.dup_line_frac and dup_lines / len(lines) > self.dup_line_frac:
            return _fail("dup_line_frac", dup_lines / len(lines))
        if self.dup_line_char_frac and dup_line_chars / n_chars > self.dup_line_char_frac:
            return _fail("dup_line_char_frac", dup_line_chars / n_chars)

        words = doc.words
        for n, max_frac in self.top_n_grams:
            frac = _top_ngram_chars(words, n) / n_chars
            if frac > max_frac:
                return _fail(f"top_{n}_gram", frac)
        for n, max_frac in self.dup_n_grams:
            frac = _duplicate_ngram_chars(words, n) / n_chars
            if frac > max_frac:
                return _fail(f"duplicated_{n}_n_grams", frac)
        return PASS


_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_END_PUNCTUATION = (".", "?", "!", '"', "'")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


class C4QualityRule:
    """datatrove 0.10.1's C4QualityFilter (split_paragraph=True), line for line.

    Line level (the line goes, the document stays): a word longer than ``max_word_length``,
    no terminal punctuation (or ending in "..."), fewer than ``min_words_per_line`` words,
    "javascript", a policy/cookie phrase. Wikipedia-style citations are cut from kept lines.
    Document level: "lorem ipsum" or "{" in a line that survived the earlier line checks,
    fewer than ``min_num_sentences`` sentences in the kept lines. A kept document's text
    becomes its kept lines; ``last_line_counts`` holds the lines removed per reason.
    """

    name = "c4_quality"
    LINE_CHECKS = ("too_long_word", "no_terminal_punc", "too_few_words", "javascript", "policy")

    def __init__(self, remove_citations=True, filter_no_terminal_punct=True, min_num_sentences=5,
                 min_words_per_line=3, max_word_length=1000, filter_lorem_ipsum=True, filter_javascript=True,
                 filter_curly_bracket=True, filter_policy=True):
        self.remove_citations, self.filter_no_terminal_punct = remove_citations, filter_no_terminal_punct
        self.min_num_sentences, self.min_words_per_line = int(min_num_sentences), int(min_words_per_line)
        self.max_word_length = int(max_word_length)
        self.filter_lorem_ipsum, self.filter_javascript = filter_lorem_ipsum, filter_javascript
        self.filter_curly_bracket, self.filter_policy = filter_curly_bracket, filter_policy
        self.last_line_counts: dict[str, int] = {}

    def check(self, doc: Doc) -> tuple[bool, dict]:
        removed = dict.fromkeys(self.LINE_CHECKS, 0)
        self.last_line_counts = removed
        kept, n_sentences = [], 0
        for line in doc.text.splitlines():
            line = line.strip()
            words = line.split()
            if self.max_word_length != -1 and any(len(w) > self.max_word_length for w in words):
                removed["too_long_word"] += 1
                continue
            if self.remove_citations:
                line = _CITATION.sub("", line)
            if self.filter_no_terminal_punct and (not line.endswith(_END_PUNCTUATION) or line.endswith("...")):
                removed["no_terminal_punc"] += 1
                continue
            if len(words) < self.min_words_per_line:
                removed["too_few_words"] += 1
                continue
            lower = line.lower()
            if self.filter_lorem_ipsum and "lorem ipsum" in lower:
                return _fail("lorem_ipsum", 1)
            if self.filter_javascript and "javascript" in lower:
                removed["javascript"] += 1
                continue
            if self.filter_curly_bracket and "{" in line:
                return _fail("curly_bracket", 1)
            if self.filter_policy and any(p in lower for p in _POLICY):
                removed["policy"] += 1
                continue
            # Only "fewer than min_num_sentences" matters: stop counting (the costly part) once reached.
            if self.min_num_sentences != -1 and n_sentences < self.min_num_sentences:
                n_sentences += count_sentences(line)
            kept.append(line)
        if n_sentences < self.min_num_sentences:
            return _fail("too_few_sentences", n_sentences)
        new_text = "\n".join(kept).strip()
        if new_text != doc.text:
            doc.replace_text(new_text)
        return PASS


class FineWebQualityRule:
    """datatrove 0.10.1's FineWebQualityFilter: share of lines ending in terminal punctuation,
    share of short lines, duplicated-line characters, newlines per word (list-like pages)."""

    name = "fineweb_quality"

    def __init__(self, line_punct_thr=0.12, line_punct_exclude_zero=False, short_line_thr=0.67,
                 short_line_length=30, char_duplicates_ratio=0.01, new_line_ratio=0.3, stop_chars=None):
        self.line_punct_thr, self.line_punct_exclude_zero = float(line_punct_thr), bool(line_punct_exclude_zero)
        self.short_line_thr, self.short_line_length = float(short_line_thr), int(short_line_length)
        self.char_duplicates_ratio, self.new_line_ratio = float(char_duplicates_ratio), float(new_line_ratio)
        self.stop_chars = tuple(stop_chars) if stop_chars is not None else TERMINAL_PUNCTUATION

    def check(self, doc: Doc) -> tuple[bool, dict]:
        text = doc.text
        lines = [ln for ln in text.split("\n") if ln.strip() != ""]
        if not lines:
            return _fail("empty", 0)
        ratio = sum(1 for ln in lines if ln.endswith(self.stop_chars)) / len(lines)
        if ratio < self.line_punct_thr and not (ratio == 0 and self.line_punct_exclude_zero):
            return _fail("line_punct_ratio", ratio)
        ratio = sum(1 for ln in lines if len(ln) <= self.short_line_length) / len(lines)
        if ratio > self.short_line_thr:
            return _fail("short_line_ratio", ratio)
        ratio = _find_duplicates(lines)[1] / len(text.replace("\n", ""))
        if ratio > self.char_duplicates_ratio:
            return _fail("char_dup_ratio", ratio)
        n_words = len(doc.words)
        ratio = text.count("\n") / n_words if n_words else float("inf")
        if ratio > self.new_line_ratio:
            return _fail("list_ratio", ratio)
        return PASS


def build_rules(section: dict) -> list:
    """The rules in the order they run, from the ``filter`` params section.

    The order follows FineWeb's pipeline (URL, language, Gopher, C4, FineWeb); C4 rewrites the
    text, so the FineWeb rule sees the kept lines, as in datatrove. A section set to
    ``{enabled: false}`` switches its rule off.
    """
    def cfg(name):
        c = dict(section.get(name) or {})
        return None if c.pop("enabled", True) is False else c

    lang = section.get("language") or {}
    rules = []
    for name, factory in (("url_filter", URLFilterRule), ("language", None), ("gopher_quality", GopherQualityRule),
                          ("gopher_repetition", GopherRepetitionRule), ("c4_quality", C4QualityRule),
                          ("fineweb_quality", FineWebQualityRule)):
        if name == "language":
            rules.append(LanguageRule(lang.get("allowed") or [], lang.get("min_score", 0.0)))
            continue
        c = cfg(name)
        if c is not None:
            rules.append(factory(**c))
    return rules


RULE_NAMES = ["url_filter", "language", "gopher_quality", "gopher_repetition", "c4_quality", "fineweb_quality"]
