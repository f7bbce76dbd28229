"""URL dedup keys: records whose normalised URLs are equal are duplicates (dedup.exact.url).

Normalisation: scheme http/https folded, host lowercased without a leading
"www." and default port, fragment dropped, trailing "/" of the path dropped,
query parameters sorted. A record without a URL takes no part.
"""
from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

import numpy as np

from pipelines.dedup.exact import hash_normalized


def normalize_url(url: str | None) -> str | None:
    if not url or not url.strip():
        return None
    try:
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:  # malformed (e.g. a bad port): compare the raw string
        return url.strip()
    if host.startswith("www."):
        host = host[4:]
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        scheme = "http"
        if port in (80, 443):
            port = None
    netloc = host if port is None else f"{host}:{port}"
    query = urlencode(sorted(parse_qsl(parts.query, keep_blank_values=True)))
    path = parts.path.rstrip("/") or ""
    return f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "")


def url_keys(urls: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """(local indices of the records that have a URL, (m, 2) uint64 128-bit hashes of their normalised URLs)."""
    normalized = [normalize_url(u) for u in urls]
    rows = [i for i, key in enumerate(normalized) if key is not None]
    return np.asarray(rows, dtype=np.int64), hash_normalized(normalized[i] for i in rows)
