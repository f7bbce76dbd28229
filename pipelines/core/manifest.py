"""Stage output manifests.

Each finished shard gets a fragment ``_shards/<shard>.json`` in the stage's store (written
right after the shard's files, by ``pipelines.core.runner``): rows, bytes, content hash and
(in a shared store) URI of each file, input fingerprints, the params hash, its stats.
``_manifest.json`` is assembled from the fragments at the end, sorted, with no timestamps:
same input -> same bytes.
"""
from __future__ import annotations

import json
from pathlib import Path

from pipelines.core.atomic import write_json_atomic

MANIFEST = "_manifest.json"
FRAGMENTS = "_shards"


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


def load_manifest_if_any(out_dir: Path) -> dict | None:
    """The stage's manifest, or None when it is absent or torn (an unfinished run)."""
    try:
        return json.loads((Path(out_dir) / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def load_manifest(out_dir: Path) -> dict:
    p = Path(out_dir) / MANIFEST
    if not p.exists():
        raise FileNotFoundError(f"{p} missing: stage output incomplete")
    return json.loads(p.read_text())
