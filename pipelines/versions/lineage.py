"""Lineage of a data version: which version it grew from, what it holds, and what changed.

``reports/lineage.json`` is written when a version is recorded and travels in the version's tag
commit (with dvc.lock and the gate reports), so every tag says:
- ``parent``: the version the workspace held before this build (None for the first);
- ``crawls`` / ``sources``: the Common Crawl snapshots and all sources it holds;
- ``stages``: per record stage, records out by source and drops by reason and source (from each
  stage's stats: ingest's shards are one input file, so one source, and filter, dedup and select
  keep ingest's shard names), and the blends' records by source (mix's blend.json);
- ``deltas``: the same numbers minus the parent's (records added or removed, by source and reason);
- ``cross_source_duplicates``: dedup drops whose kept record came from another source (a new
  crawl repeating an older one shows here; scope ``snapshot``, which drops none: the exact copies of
  another source's records it kept), with their share of the dedup input;
- ``dedup``: the dedup index generation this version's dedup wrote (records dropped in a later
  refresh as copies of this version's records name it in ``dup_of_index``), and whether dedup was
  a refresh (then: the parent's index fingerprint and the shards whose decisions it kept).
Reading it costs stats and manifests, plus dedup's ``dup_of`` / ``source`` columns.
"""
from __future__ import annotations

import re
from pathlib import Path

from pipelines import stages
from pipelines.core.shards import iter_batches, stage_shards
from pipelines.core.stats import read_stats
from pipelines.versions.read import read_json

LINEAGE_FILE = "reports/lineage.json"
BY_SHARD_STAGES = ("ingest", "filter", "dedup", "select")  # stages whose shards keep ingest's names
_CRAWL = re.compile(r"cc-main-\d{4}-\d{2}")


def _add(table: dict, key: str, n: int) -> None:
    if n:
        table[key] = table.get(key, 0) + int(n)


def stage_numbers(root: Path) -> dict:
    """Per stage: records out by source, drops by reason and source."""
    ingest = read_json(stages.output_dir("ingest", root) / "_manifest.json") or {}
    source_of = ingest.get("shard_sources") or {}
    out = {}
    for stage in BY_SHARD_STAGES:
        stats = read_stats(stages.output_dir(stage, root) / "_stats.parquet")
        if not stats:
            continue
        records, drops = {}, {}
        for st in stats:
            source = source_of.get(st.shard, "?")
            _add(records, source, st.records_out)
            for reason, n in st.drops.items():
                _add(drops.setdefault(reason, {}), source, n)
        out[stage] = {"records_out": dict(sorted(records.items())),
                      "drops": {r: dict(sorted(v.items())) for r, v in sorted(drops.items()) if v}}
    blend = read_json(stages.output_dir("mix", root) / "blend.json") or {}
    for phase, info in sorted((blend.get("phases") or {}).items()):
        sources = (info or {}).get("sources") or {}
        out[f"mix/{phase}"] = {"records_out": {s: int(v.get("records", 0)) for s, v in sorted(sources.items())},
                               "drops": {}}
    return out


def cross_source_duplicates(root: Path) -> dict:
    """Dedup drops whose kept record is from another source: {"records": n, "share": n / dedup input,
    "by_source": {source: {kept record's source: n}}}; with scope ``snapshot``, which drops none of them,
    the exact copies it kept: {"records", "share", "kept": True, "by_source": {source: n}}."""
    dedup_dir = stages.output_dir("dedup", root)
    counted = (read_json(dedup_dir / "_manifest.json") or {}).get("cross_source")
    if counted:
        records_in = sum(st.records_in for st in read_stats(dedup_dir / "_stats.parquet"))
        return {"records": counted["records"], "kept": True, "match": counted["match"],
                "share": round(counted["records"] / records_in, 6) if records_in else 0.0,
                "by_source": counted["by_source"]}
    if not (dedup_dir / "_manifest.json").exists() or not (dedup_dir / "removed").is_dir():
        return {}
    dups: dict[str, list[str]] = {}  # kept id -> sources of the records dropped as its copies
    for ref in stage_shards(dedup_dir / "removed", "dedup"):
        for b in iter_batches(ref.uri, columns=["source", "dup_of"]):
            for source, head in zip(b.column("source").to_pylist(), b.column("dup_of").to_pylist()):
                if head is not None:
                    dups.setdefault(head, []).append(source)
    by_source: dict[str, dict[str, int]] = {}
    total = 0
    if dups:
        for ref in stage_shards(dedup_dir, "dedup"):
            for b in iter_batches(ref.uri, columns=["id", "source"]):
                for rid, head_source in zip(b.column("id").to_pylist(), b.column("source").to_pylist()):
                    for source in dups.get(rid, ()):
                        if source != head_source:
                            by_source.setdefault(source, {})
                            _add(by_source[source], head_source, 1)
                            total += 1
    records_in = sum(st.records_in for st in read_stats(dedup_dir / "_stats.parquet"))
    return {"records": total, "share": round(total / records_in, 6) if records_in else 0.0,
            "by_source": {s: dict(sorted(v.items())) for s, v in sorted(by_source.items())}}


def _minus(now: dict, before: dict) -> dict:
    keys = sorted(set(now) | set(before))
    return {k: now.get(k, 0) - before.get(k, 0) for k in keys if now.get(k, 0) != before.get(k, 0)}


def deltas(now: dict, parent: dict | None) -> dict:
    """Per stage: records out by source and drops by reason, minus the parent's (non-zero entries)."""
    before = parent or {}
    out = {}
    for stage in sorted(set(now) | set(before), key=lambda s: (list(now) + list(before)).index(s)):
        n, b = now.get(stage) or {}, before.get(stage) or {}
        records = _minus(n.get("records_out") or {}, b.get("records_out") or {})
        reasons = set(n.get("drops") or {}) | set(b.get("drops") or {})
        drops = {r: sum((n.get("drops") or {}).get(r, {}).values()) - sum((b.get("drops") or {}).get(r, {}).values())
                 for r in sorted(reasons)}
        drops = {r: d for r, d in drops.items() if d}
        if records or drops:
            out[stage] = {"records_out": records, "drops": drops}
    return out


def build(root: Path, version: str, previous: dict | None, crawl_ids: list[str] | None = None) -> dict:
    """This version's lineage; ``previous``: the lineage the workspace held before (None at first).
    Re-recording the same version keeps its lineage (a no-op refresh is not a new generation)."""
    if previous and previous.get("version") == version:
        return previous
    numbers = stage_numbers(root)
    sources = sorted({s for st in numbers.values() for s in st["records_out"]} - {"?"})
    crawls = sorted({s for s in sources if _CRAWL.fullmatch(s)} | {c.lower() for c in crawl_ids or []})
    return {
        "version": version,
        "parent": (previous or {}).get("version"),
        "crawls": crawls,
        "sources": sources,
        "stages": numbers,
        "deltas": deltas(numbers, (previous or {}).get("stages")),
        "cross_source_duplicates": cross_source_duplicates(root),
        "dedup": dedup_history(root),
    }


def dedup_history(root: Path) -> dict:
    """How dedup built this version: its scope, its index generation (a dedup drop's ``dup_of_index`` names
    the generation, and so the version, that kept the earlier record) and, for a refresh, the parent's index."""
    manifest = read_json(stages.output_dir("dedup", root) / "_manifest.json") or {}
    index = manifest.get("index") or {}
    return {"index_generation": index.get("generation"), "index_records": index.get("records"),
            "refresh": manifest.get("refresh")}
