"""Atomic writes: write to a temp name in the same directory, fsync, rename.

A reader never sees a half-written file under a final name; a crash leaves at
most a ``.tmp-*`` file that the next run removes.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_path(final: str | Path):
    """Yield a temp path next to ``final``; rename it over ``final`` if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + final.name + ".", dir=final.parent)
    except OSError as e:  # permission denied, read-only fs: name the output, not the temp name
        raise OSError(e.errno, f"cannot write {final}: {e.strerror or e}") from e
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and str(final) not in str(e):
            # Disk full, quota, EFBIG, EIO: say which output could not be written (same errno and OSError subclass).
            msg = f"cannot write {final}: {e.strerror or e}"
            raise (OSError(e.errno, msg) if e.errno is not None else OSError(msg)) from e
        raise


def write_bytes_atomic(final: str | Path, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(final: str | Path, obj) -> None:
    """Deterministic JSON (sorted keys, fixed indent) so re-runs are byte-identical."""
    text = json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, default=str) + "\n"
    write_bytes_atomic(final, text.encode())


def remove_stale_temps(directory: str | Path) -> int:
    """Delete temp files a crashed run left behind; returns how many."""
    directory = Path(directory)
    if not directory.exists():
        return 0
    n = 0
    for p in sorted(directory.rglob(TMP_PREFIX + "*"), reverse=True):
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(p) if p.is_dir() else p.unlink()  # a temp dir: a content-addressed write in flight
            n += 1
    return n
