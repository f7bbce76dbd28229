"""Removal requests (``filter.takedown``): records a data version must no longer hold.

A takedown names URLs, URL prefixes, domains (with every subdomain) or record ids, in params
or in list files (one entry a line, ``#`` comments). The filter applies it before any other
rule and to every source, curated ones included, so nothing downstream ever sees a matching
record: it is dropped with reason ``takedown`` and the entry it matched. The gates of filter and
mix re-check their outputs against the same list, so a version that still holds a
taken-down record cannot pass. Earlier versions stay reproducible from their tags: a takedown
changes the next version only.

URLs are compared normalised: scheme and host lower case, default port and fragment dropped.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pipelines.config import resolve

REASON = "takedown"
LISTS_DIR = "takedown"  # list files live here (workspace-relative)
KINDS = ("urls", "url_prefixes", "domains", "ids")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_url(url: str) -> str:
    """The form URLs are compared in; an unparsable URL is compared as written."""
    try:
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return url.strip()
    scheme = parts.scheme.lower()
    netloc = host if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
    if parts.username:  # credentials in a URL are part of what it names
        netloc = f"{parts.username}@{netloc}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def _host(url: str | None) -> str | None:
    if not url:
        return None
    try:
        return (urlsplit(url.strip()).hostname or "").lower().rstrip(".") or None
    except ValueError:
        return None


def _entries(value, kind: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"filter.takedown.{kind} must be a list of non-empty strings, got {value!r}")
    return [v.strip() for v in value]


def _list_file(path: str) -> list[tuple[str, str]]:
    """``kind: entry`` lines of a takedown list file (kinds: url, url_prefix, domain, id)."""
    p = Path(resolve(path)).resolve()
    # Under takedown/ only: that directory is a DVC dependency of the stages and gates that read the
    # list, so editing a list file re-runs them (a file elsewhere would change nothing DVC watches).
    if not p.is_relative_to(Path(resolve(LISTS_DIR)).resolve()):
        raise ValueError(f"filter.takedown.files: {path} must lie under {LISTS_DIR}/ (a DVC dependency of the filter)")
    if not p.is_file():
        raise FileNotFoundError(f"filter.takedown.files: {path} not found")
    singular = {k[:-1] if k != "url_prefixes" else "url_prefix": k for k in KINDS}
    out = []
    for n, line in enumerate(Path(p).read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        kind, sep, entry = line.partition(":")
        if kind.strip() in ("http", "https"):  # a bare URL line
            kind, entry, sep = "url", line, ":"
        if not sep or kind.strip() not in singular or not entry.strip():
            raise ValueError(f"{path}:{n}: expected '<{'|'.join(singular)}>: <entry>', got {line!r}")
        out.append((singular[kind.strip()], entry.strip()))
    return out


@dataclass(frozen=True)
class Takedown:
    urls: frozenset[str] = frozenset()
    url_prefixes: tuple[str, ...] = ()
    domains: frozenset[str] = frozenset()
    ids: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, cfg: dict | None) -> "Takedown":
        cfg = dict(cfg or {})
        unknown = set(cfg) - set(KINDS) - {"files"}
        if unknown:
            raise ValueError(f"filter.takedown: unknown keys {sorted(unknown)} (known: {[*KINDS, 'files']})")
        found = {k: _entries(cfg.get(k), k) for k in KINDS}
        for path in _entries(cfg.get("files"), "files"):
            for kind, entry in _list_file(path):
                found[kind].append(entry)
        return cls(urls=frozenset(normalize_url(u) for u in found["urls"]),
                   url_prefixes=tuple(sorted({normalize_url(u) for u in found["url_prefixes"]})),
                   domains=frozenset(d.lower().strip(".") for d in found["domains"]),
                   ids=frozenset(found["ids"]))

    def __bool__(self) -> bool:
        return bool(self.urls or self.url_prefixes or self.domains or self.ids)

    def describe(self) -> dict:
        """What the list holds, for manifests and reports (sorted: stable bytes)."""
        return {"urls": sorted(self.urls), "url_prefixes": list(self.url_prefixes), "domains": sorted(self.domains),
                "ids": sorted(self.ids)}

    def match(self, record_id: str | None, url: str | None) -> str | None:
        """The entry a record matches (``domain:example.com``), or None."""
        if record_id is not None and record_id in self.ids:
            return f"id:{record_id}"
        if not url:
            return None
        if self.domains:
            host = _host(url)
            while host:
                if host in self.domains:
                    return f"domain:{host}"
                host = host.partition(".")[2]
        if self.urls or self.url_prefixes:
            norm = normalize_url(url)
            if norm in self.urls:
                return f"url:{norm}"
            for prefix in self.url_prefixes:
                if norm.startswith(prefix):
                    return f"url_prefix:{prefix}"
        return None


def takedown_files(cfg: dict | None) -> list[str]:
    """The list files a takedown reads (their content decides drops: a stage input)."""
    return _entries((cfg or {}).get("files"), "files")


def check_none_remain(gate, directories: list[Path], params: dict, root: Path) -> None:
    """Add to ``gate`` (a GatePlan) the check that no record under ``directories`` (stage or split dirs)
    matches params' takedown list; nothing when the list is empty."""
    check = _remaining_check(directories, (params.get("filter") or {}).get("takedown"), root)
    if check is not None:
        gate.file_checks.append(check)


def _remaining_check(directories: list[Path], cfg: dict | None, root: Path):
    from pipelines.checks.inputs import record_shards, rel
    from pipelines.checks.results import CheckResult
    from pipelines.core.shards import read_shard

    takedown = Takedown.from_config(cfg)
    if not takedown:
        return None
    found, checked = [], 0
    for d in directories:
        for uri in record_shards(d):
            t = read_shard(uri, columns=["id", "url"])
            checked += t.num_rows
            for rid, url in zip(t.column("id").to_pylist(), t.column("url").to_pylist()):
                entry = takedown.match(rid, url)
                if entry is not None:
                    found.append({"id": rid, "url": url, "entry": entry})
    return CheckResult(batch="takedown", type="no_taken_down_record_remains", column=None,
                       kwargs={"paths": [rel(d, root) for d in directories], "entries": sum(map(len, (
                           takedown.urls, takedown.url_prefixes, takedown.domains, takedown.ids)))},
                       success=not found, observed={"records_checked": checked, "remaining": len(found),
                                                    "examples": found[:10]})
