"""Guarded boilerplate removal around resiliparse: the default main-text extractor (``ingest.extractor: guarded``).

Why not the old name rules alone (``resiliparse``): they were chosen on one article benchmark and, applied to the
whole page, a rule that hits the main container empties the page (a ``cookies-policy`` page whose main ``div``
matches ``[id*=cookie]``, Blogger's ``date-outer`` post wrappers, a container named ``share``). Three ideas make
removal safe on pages unlike the benchmark:

1. **Links are measured, not guessed.** Before extraction the text of every link is wrapped in in-band
   markers, so the link density of any element and of any output line (the share of its word characters
   inside links) is exact, for one pass over the ``<a>`` elements. Navigation, menus, tag
   clouds, related-post lists and footer link rows are link-dense whatever their class names and language.
2. **Element rules are guarded by text share.** An element matched by a boilerplate rule (page furniture tags,
   hidden elements, class/id names such as comment, cookie, share, byline) is removed only if it holds a small
   share of the page's non-link text ("prose"); widget names (date, author, share, caption ...) must also be
   widget-sized. No rule can remove the element that holds most of the page: the cookie-policy container, a
   post wrapper or a share-named container stays, and the small widgets inside it still go.
3. **A fallback when the first pass yields too little.** resiliparse's main-content heuristics drop some
   content outright: lists within three levels of <body> or with over 20% link text, hidden or collapsed
   wrappers (pages revealed by JavaScript), everything outside a single ``.main-content``/``[role=main]``
   element. When the first pass keeps too small a share of the page's prose, the guarded rules (now with
   page-furniture tags and navigation names too) run on the whole body instead; if that is still (nearly)
   empty on a page with text, trafilatura decides. Both are rare (8 and 0 of the 232 benchmark pages), so the
   cost is about 2.5x that of resiliparse alone (parse + extract), most of it the marking and the guards.

Lines of the extracted text are then filtered: lines that are mostly links with next to no words of their own
(menu rows, link-list items, "read more"), short copyright lines and the short tail after the last of them
(the footer's addresses and notices) go, with a guard that keeps the text of a page that is nothing but links.
"""
from __future__ import annotations

import bisect
import functools
import re

# Link markers: control characters that do not occur in decoded page text (stripped from the output). Private-use
# code points would not do: resiliparse drops one-character PUA text nodes as icon glyphs. The two extra bytes
# per link barely move resiliparse's own link-ratio rules (2 of 232 benchmark pages change by more than 5%).
_OPEN, _CLOSE = "\x02", "\x03"
SKIP_ATTR = "data-boilerplate"
SKIP_SELECTOR = f"[{SKIP_ATTR}]"
# Removed from the tree before anything else (outermost ones only, so no removed node is touched again): never
# main content for resiliparse, whose main-content rules drop every <nav> and <aside> unconditionally, so their
# links need no marking. (Text is measured with inner_text, which leaves out scripts and styles by itself.)
_DROPPED = ":is(nav, aside):not(:is(nav, aside) *)"

# Page furniture by tag, role or visibility (<nav> and <aside> are gone already, see _DROPPED). A <header> inside
# an <article>/<main> is the article's own header.
STRUCTURAL = ("footer, form, menu, "
              "header:not(article header):not(main header), "
              "[role=navigation], [role=menu], [role=menubar], [role=contentinfo], [role=banner], "
              "[role=complementary], [role=search], [role=dialog], [role=alertdialog], [aria-modal=true], "
              "[hidden], [aria-hidden=true], [style*='display:none' i], [style*='display: none' i], "
              "[style*='visibility:hidden' i], [style*='visibility: hidden' i], figcaption")
# Class/id words of page furniture. WIDGET words name small things (a date line, a byline, a share bar, a
# caption): such elements must also be small, so a container that merely carries the name (Blogger's
# ``date-outer`` around a whole post) is never taken for the widget.
WIDGET_WORDS = ("date", "dateline", "time", "timestamp", "author", "authors", "byline", "meta", "metadata",
                "share", "sharing", "sharedaddy", "sharethis", "addthis", "social", "caption", "captions", "tags",
                "tagcloud", "breadcrumb", "breadcrumbs", "print", "rating", "ratings", "likes", "overlay")
BLOCK_WORDS = ("comment", "comments", "commentlist", "disqus", "respond", "cookie", "cookies", "consent", "gdpr",
               "newsletter", "newsletters", "subscribe", "subscription", "signup", "promo", "promos", "promotion",
               "advert", "advertisement", "ads", "sponsor", "sponsored", "related", "recommended",
               "recommendations", "popup", "modal", "lightbox", "sidebar",
               "footer", "nav", "navbar", "navigation", "menu", "menubar", "pagination", "pager", "banner",
               "login", "skip", "feedback", "license", "licence", "copyright", "legal", "disclaimer", "imprint",
               "impressum")
# A token names the furniture itself only if nothing but container-ish words follow the furniture word
# ("site-footer", "comments-area", "share-buttons", "entry-meta"); "nav-item", "menu-item-type-page" and
# "comment-body" are parts inside the furniture, matched through their container (and in C, not in Python).
CONTAINER_WORDS = frozenset("wrap wrapper wrappers container area section box block bar list outer inner holder "
                            "zone panel region module modules links buttons tools toolbar bottom top left right "
                            "primary secondary mobile desktop global page site post posts article story entry "
                            "default fixed sticky row col group main full header".split())
_WIDGET = frozenset(WIDGET_WORDS)
_FURNITURE = frozenset(WIDGET_WORDS + BLOCK_WORDS)
# resiliparse's main-content rules already handle navigation, menus, footers, sidebars, pagination, ads, modals
# and sign-in boxes by name (unguarded: the fallback catches the pages where that goes wrong), so the first pass
# adds only what they miss; the fallback pass, without resiliparse's rules, uses every word.
NAVIGATION_WORDS = frozenset(("nav", "navbar", "navigation", "menu", "menubar", "footer", "sidebar", "pagination",
                              "pager", "skip", "login", "banner", "advert", "advertisement", "ads", "sponsor",
                              "sponsored", "modal", "popup", "lightbox"))
FIRST_PASS_WORDS = _FURNITURE - NAVIGATION_WORDS
# Containers that declare themselves the document or its main content are never removed.
_NEVER = frozenset(("html", "body", "main", "article"))

# Guards: an element is removed only if it holds less than MAX_PROSE_SHARE of the page's prose (non-link word
# characters); a widget-named one also at most WIDGET_MAX_PROSE of them (a byline, a date, a share bar is short).
MAX_PROSE_SHARE = 0.4
WIDGET_MAX_PROSE = 400
# Output lines at least this share inside links, with fewer own word characters than LINK_LINE_MAX_PROSE, are
# menu rows and link lists. A sentence with many links (Wikipedia) still has its own words between them.
LINK_LINE_DENSITY = 0.5
LINK_LINE_MAX_PROSE = 15
# Short copyright / rights lines (an article sentence about copyright is longer).
_COPYRIGHT = re.compile(r"©|\(c\)\s*\d{4}|\bcopyright\b|all rights reserved|alle rechte vorbehalten|"
                        r"tous droits réservés|todos los derechos|tutti i diritti|版权所有|版權所有|著作権|"
                        r"все права защищены", re.IGNORECASE)
COPYRIGHT_MAX_CHARS = 200
# The tail after the last copyright line is dropped when its lines are short and it is at most FOOTER_TAIL_MAX
# word characters or FOOTER_TAIL_SHARE of the text (photo credits sit in <figure>, which is not extracted).
FOOTER_TAIL_MAX = 300
FOOTER_TAIL_SHARE = 0.15
# Fallbacks: when the first pass keeps less than MIN_PROSE_SHARE of the page's prose or fewer than MIN_WORDCHARS,
# the whole body is tried; when that still has fewer than MIN_WORDCHARS on a page with at least MIN_PAGE_PROSE
# (counting <nav>/<aside> text), trafilatura.
MIN_PROSE_SHARE = 0.25
MIN_PAGE_PROSE = 200
MIN_WORDCHARS = 50

_CLASS_ATTR = re.compile(r'class="([^"]*)"')
_ID_ATTR = re.compile(r'id="([^"]*)"')
_CLASS_ATTR_UC = re.compile(r'CLASS="([^"]*)"')
_ID_ATTR_UC = re.compile(r'ID="([^"]*)"')
_CLASS_UNQUOTED = re.compile(r"class=([^\s\"'>=]+)")
_ID_UNQUOTED = re.compile(r"id=([^\s\"'>=]+)")
_NAME_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")  # "postDate" -> post, Date; "site-footer" -> site, footer
_SAFE_TOKEN = re.compile(r"[\w\-:./]+")  # anything else is not a real class/id (e.g. quotes inside a script)


# Characters that are not "words": white space and the usual separators of menus and bylines. Counted with
# str.count (C speed; a regex costs ~20x more on a whole page), so the list is kept short.
_NOT_WORD = ("\x02", "\x03", " ", "\n", "\t", "\xa0", "|", "•", "·", "-", "/", ",", ".", ":")


def _wordchars(text: str) -> int:
    return len(text) - sum(map(text.count, _NOT_WORD))


def _unlinked(text: str) -> str:
    """The text outside link markers."""
    if _OPEN not in text:
        return text
    parts = text.split(_OPEN)
    return parts[0] + "".join(p.partition(_CLOSE)[2] for p in parts[1:])


def prose_chars(text: str) -> int:
    """Word characters outside link markers."""
    return _wordchars(_unlinked(text))


def mark_links(root) -> None:
    """Wrap the text of every link in markers (flattens the link's inner markup to text, which is all the
    extractor keeps of it anyway). Buttons need none: resiliparse skips them with the other form fields."""
    for node in root.query_selector_all("a[href]").values():
        node.text = _OPEN + (node.text or "") + _CLOSE


@functools.lru_cache(maxsize=1 << 16)  # class names repeat across the pages of a CMS
def furniture_word(name: str) -> str | None:
    """The furniture word a class token or id names (followed by container words only), or None."""
    words = [w.lower() for w in _NAME_WORDS.findall(name)]
    for i in range(len(words) - 1, -1, -1):
        if words[i] in _FURNITURE:
            return words[i]
        if words[i] not in CONTAINER_WORDS:
            return None
    return None


class PageNames:
    """The class tokens and ids of a page, read from the raw HTML with literal-prefix regexes: several times
    cheaper than walking the DOM in Python or evaluating dozens of CSS substring selectors (the selectors
    built from it then match exact tokens, in C)."""

    def __init__(self, html: str):
        start = html.find("<body")  # the head's inline CSS/JS holds no element of the body: not scanned
        if start < 0:
            start = max(html.find("<BODY"), 0)
        classes, ids = set(_CLASS_ATTR.findall(html, start)), set(_ID_ATTR.findall(html, start))
        if not classes and not ids:  # old pages with upper-case attributes
            classes.update(_CLASS_ATTR_UC.findall(html, start))
            ids.update(_ID_ATTR_UC.findall(html, start))
        if html.count("class=", start) - html.count('class="', start) - html.count("class='", start) > 5:
            # Minified HTML leaves single-token values unquoted (class=footer id=license): read those too.
            classes.update(_CLASS_UNQUOTED.findall(html, start))
            ids.update(_ID_UNQUOTED.findall(html, start))
        tokens = set(" ".join(classes).split())
        self.names = list(tokens) + list(ids - tokens)  # an id equal to a class token is found as the token
        self.n_classes = len(tokens)
        self.ids = ids
        self.lowered = "\n".join(self.names).lower()

    def selector(self, vocabulary: frozenset[str]) -> str | None:
        """A CSS selector for the elements whose class token or id names furniture of ``vocabulary``, or None.
        Only names that contain a vocabulary word are parsed; they are found with str.find, not per name."""
        hits = [word for word in vocabulary if word in self.lowered]  # substrings; furniture_word decides
        if not hits:
            return None
        starts = [0]
        for name in self.names:
            starts.append(starts[-1] + len(name) + 1)
        found = set()
        for word in hits:
            at = self.lowered.find(word)
            while at >= 0:
                found.add(bisect.bisect_right(starts, at) - 1)
                at = self.lowered.find(word, at + len(word))
        parts = set()
        for i in found:
            name = self.names[i]
            if _SAFE_TOKEN.fullmatch(name) and furniture_word(name) in vocabulary:
                parts.add(f'[class~="{name}"]' if i < self.n_classes else f'[id="{name}"]')
                if i < self.n_classes and name in self.ids:
                    parts.add(f'[id="{name}"]')
        return ", ".join(sorted(parts)) or None


def _furniture_name(node, vocabulary: frozenset[str]) -> tuple[str, str] | None:
    """(the id or class token, the furniture word it names) of a node, or None."""
    for attr in ("id", "class"):
        value = node.getattr(attr)
        if value:
            for token in value.split():
                word = furniture_word(token)
                if word in vocabulary:
                    return token, word
    return None


def mark_boilerplate(root, page_prose: int, names: str | None, vocabulary: frozenset[str], structural: bool) -> int:
    """Flag removable page furniture with SKIP_ATTR (the guards decide); returns how many were flagged.

    Guards, all against the page's prose (non-link word characters): an element holding MAX_PROSE_SHARE of it
    stays; so do all elements of a class/id name that *together* hold that much (the repeated units of the
    page: Blogger's ``date-outer`` around each of several short posts); a widget-named element must also be
    widget-sized. <html>, <body>, <main> and <article> are never removed."""
    if page_prose <= 0:
        return 0
    limit = MAX_PROSE_SHARE * page_prose
    candidates = []  # (node, prose, name, widget)
    if structural:
        for node in root.query_selector_all(STRUCTURAL).values():
            candidates.append((node, None, None, node.tag == "figcaption"))
    if names:
        for node in root.query_selector_all(names).values():
            named = _furniture_name(node, vocabulary)
            if named:
                candidates.append((node, prose_chars(node.inner_text or ""), named[0], named[1] in _WIDGET))
    per_name: dict[str, int] = {}
    for _, prose, name, _ in candidates:
        if name is not None:
            per_name[name] = per_name.get(name, 0) + prose
    flagged = 0
    for node, prose, name, widget in candidates:
        if node.tag in _NEVER:
            continue
        if prose is None:  # structural candidates: measured lazily, none inside an element already flagged
            if node.closest(SKIP_SELECTOR) is not None:
                continue
            prose = prose_chars(node.inner_text or "")
        if prose >= limit or (name is not None and per_name[name] >= limit) or (widget and prose > WIDGET_MAX_PROSE):
            continue  # holds too much of the page: a container, not furniture
        node.setattr(SKIP_ATTR, "")
        flagged += 1
    return flagged


def filter_lines(text: str) -> str:
    """Drop link-dense lines, short copyright lines and the short tail after the last copyright line; keep
    the text if that would leave next to nothing."""
    lines = text.split("\n")
    kept = []
    footer_at = None  # index in ``kept`` after the last copyright line
    for line in lines:
        if _OPEN in line:
            prose = prose_chars(line)
            words = _wordchars(line)
            if prose < LINK_LINE_MAX_PROSE and words - prose >= LINK_LINE_DENSITY * words:
                continue  # a menu row, a link-list item, "read more"
        if len(line) <= COPYRIGHT_MAX_CHARS and _COPYRIGHT.search(line):
            footer_at = len(kept)
            continue
        kept.append(line)
    if footer_at is not None and footer_at < len(kept):
        # A copyright line opens the page footer: what follows it (addresses, phone numbers, hosting notes) goes
        # too, if it is only a small tail of short lines (a photo credit inside an article is followed by the
        # rest of the article).
        tail = kept[footer_at:]
        tail_words = sum(map(_wordchars, tail))
        if all(len(line) <= COPYRIGHT_MAX_CHARS for line in tail) and (tail_words <= FOOTER_TAIL_MAX or tail_words
                                                                       <= FOOTER_TAIL_SHARE * _wordchars(text)):
            del kept[footer_at:]
    if len(kept) == len(lines):
        return text
    filtered = "\n".join(kept)
    words = _wordchars(filtered)
    if words < MIN_WORDCHARS and words < 0.25 * _wordchars(text):
        return text  # a page of links only: better its links than nothing
    return filtered


def _clean(text: str) -> str:
    text = text.replace(_OPEN, "").replace(_CLOSE, "")
    return re.sub(r"\n{3,}", "\n\n", text).strip()


class GuardedExtractor:
    """resiliparse main content + guarded boilerplate rules + link-density line filter + fallbacks."""

    name = "guarded"

    def extract(self, html: str, url: str | None) -> str:
        from resiliparse.extract.html2text import extract_plain_text
        from resiliparse.parse.html import HTMLTree

        # Imported here: extract.py registers this class, so a module-level import would be circular.
        from pipelines.ingest.extract import TrafilaturaExtractor, check_nesting

        check_nesting(html)
        tree = HTMLTree.parse(html)
        body = tree.body
        if body is None:
            return ""
        dropped = 0  # word characters of the removed <nav>/<aside> elements
        for node in body.query_selector_all(_DROPPED).values():
            dropped += _wordchars(node.inner_text or "")
            node.decompose()
        mark_links(body)
        page_prose = prose_chars(body.inner_text or "")
        names = PageNames(html)
        # First pass: resiliparse's main-content rules already drop navigation, global footers and hidden
        # elements (unguarded, hence the fallbacks below); the guarded name rules add what they miss.
        mark_boilerplate(body, page_prose, names.selector(FIRST_PASS_WORDS), FIRST_PASS_WORDS, structural=False)
        skip = [SKIP_SELECTOR]
        text = filter_lines(extract_plain_text(tree, main_content=True, alt_texts=False, skip_elements=skip))
        if prose_chars(text) >= MIN_PROSE_SHARE * page_prose and _wordchars(text) >= MIN_WORDCHARS:
            return _clean(text)
        if page_prose >= MIN_WORDCHARS:
            # resiliparse's heuristics dropped most of the page: the whole body, under guarded structural rules.
            mark_boilerplate(body, page_prose, names.selector(NAVIGATION_WORDS), _FURNITURE, structural=True)
            whole = filter_lines(extract_plain_text(tree, main_content=False, alt_texts=False, skip_elements=skip))
            if _wordchars(whole) > _wordchars(text):
                text = whole
        if _wordchars(text) >= MIN_WORDCHARS or page_prose + dropped < MIN_PAGE_PROSE:
            return _clean(text)
        # Still (nearly) empty on a page with text (even if only inside <nav>/<aside>): trafilatura decides.
        return TrafilaturaExtractor().extract(html, url) or _clean(text)
