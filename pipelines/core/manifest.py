"""Stage output manifests.

Each finished shard gets a fragment ``_shards/<shard>.json`` (written atomically
right after the shard itself): rows, bytes, content hash, input hashes, params
hash, its stats. A re-run skips shards whose fragment matches the files on disk
and the current inputs/params; ``_manifest.json`` is assembled from the
fragments at the end, sorted, with no timestamps: same input -> same bytes.
"""
from __future__ import annotations

import json
from pathlib import Path

from pipelines.core.atomic import write_json_atomic
from pipelines.core.hashing import sha256_file

MANIFEST = "_manifest.json"
FRAGMENTS = "_shards"


def fragment_path(out_dir: Path, shard: str) -> Path:
    return Path(out_dir) / FRAGMENTS / f"{shard}.json"


def file_entry(path: Path, rows: int | None = None) -> dict:
    entry = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    if rows is not None:
        entry["rows"] = rows
    return entry


def write_fragment(out_dir: Path, shard: str, fragment: dict) -> None:
    write_json_atomic(fragment_path(out_dir, shard), fragment)


def load_fragment(out_dir: Path, shard: str) -> dict | None:
    p = fragment_path(out_dir, shard)
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None  # torn by an old crash: redo the shard


def fragment_is_complete(out_dir: Path, fragment: dict | None, inputs: dict, params_hash: str) -> bool:
    """True when a shard needs no work: same inputs and params, and its files hash as recorded."""
    if not fragment or fragment.get("inputs") != inputs or fragment.get("params_hash") != params_hash:
        return False
    for rel, entry in fragment.get("files", {}).items():
        p = Path(out_dir) / rel
        if not p.exists() or p.stat().st_size != entry["bytes"] or sha256_file(p) != entry["sha256"]:
            return False
    return True


def write_manifest(out_dir: Path, stage: str, params_hash: str, fragments: list[dict], extra: dict | None = None) -> dict:
    manifest = {
        "stage": stage,
        "params_hash": params_hash,
        "shards": {f["shard"]: {k: v for k, v in f.items() if k not in ("shard", "stats")} for f in fragments},
        "totals": {
            "shards": len(fragments),
            "rows": sum(f.get("files", {}).get(f["shard"], {}).get("rows", 0) for f in fragments),
        },
    }
    if extra:
        manifest.update(extra)
    write_json_atomic(Path(out_dir) / MANIFEST, manifest)
    return manifest


def load_manifest(out_dir: Path) -> dict:
    p = Path(out_dir) / MANIFEST
    if not p.exists():
        raise FileNotFoundError(f"{p} missing: stage output incomplete")
    return json.loads(p.read_text())
