"""Content hashes for manifests and params."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def params_hash(params) -> str:
    """Hash of a params section; the same knobs give the same hash whatever the key order."""
    return sha256_bytes(canonical_json(params).encode())[:16]


PIPELINES_DIR = Path(__file__).resolve().parents[1]


def code_fingerprint(*packages: str) -> str:
    """Content hash of ``pipelines/<package>`` trees, bytecode caches aside (as .dvcignore does)."""
    h = hashlib.sha256()
    for package in packages:
        base = PIPELINES_DIR / package
        for p in sorted(base.rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc":
                h.update(f"{p.relative_to(PIPELINES_DIR).as_posix()}\0{sha256_file(p)}\0".encode())
    return h.hexdigest()[:16]


def stage_hash(packages: str | tuple[str, ...], params) -> str:
    """What a data stage's finished shards must match to be reused: its params and its code.

    DVC re-runs a stage when its code (a dvc.yaml dep: pipelines/core + the stage's package)
    changes, but the stage resumes shard by shard; without the code here, that re-run would
    keep every shard the old code wrote and DVC would record them as the new code's output.
    """
    packages = (packages,) if isinstance(packages, str) else tuple(packages)
    return params_hash({"params": params, "code": code_fingerprint("core", *packages)})
