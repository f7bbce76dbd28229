"""Turn a stage output into what the gates validate: small pandas frames and plain file checks.

Everything here is deterministic (no RNG, sorted file order) so the same data
gives the same frames and therefore the same report bytes.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.checks.results import CheckResult
from pipelines.core.hashing import sha256_file
from pipelines.core.manifest import MANIFEST
from pipelines.core.runner import STATS
from pipelines.core.shards import count_rows, read_schema, read_shard, stage_shards
from pipelines.core.store import fetch_uri, stage_store

# Columns that do not help a validation and that pandas/GX handle poorly (lists).
_STATS_DROP = ["len_hist"]


def rel(path: Path, root: Path) -> str:
    """Workspace-relative path for reports (absolute paths would differ between checkouts)."""
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return Path(path).as_posix()


# --- stats -----------------------------------------------------------------------------------------

def stats_frame(stage_dir: Path) -> pd.DataFrame:
    """``_stats.parquet`` plus ``unaccounted`` = in - out - dropped (0 on every balanced shard)."""
    df = pq.read_table(stage_dir / STATS).to_pandas()
    df = df.drop(columns=[c for c in _STATS_DROP if c in df.columns])
    for col in ("records_in", "records_out", "records_dropped"):
        if col not in df.columns:
            raise ValueError(f"{stage_dir / STATS}: column {col} missing")
    df["unaccounted"] = df["records_in"] - df["records_out"] - df["records_dropped"]
    return df


def drop_columns(stats: pd.DataFrame) -> list[str]:
    return sorted(c for c in stats.columns if c.startswith("drop__"))


def totals_frame(stats: pd.DataFrame) -> pd.DataFrame:
    """One row of corpus-level rates: keep/drop rate and each rule's share of all input records."""
    n_in = int(stats["records_in"].sum())
    n_out = int(stats["records_out"].sum())
    n_drop = int(stats["records_dropped"].sum())
    row = {
        "records_in": n_in,
        "records_out": n_out,
        "records_dropped": n_drop,
        # An empty input keeps nothing: rate 0 (so a keep-rate floor fails), not NaN (which GX would skip).
        "keep_rate": n_out / n_in if n_in else 0.0,
        "drop_rate": n_drop / n_in if n_in else 0.0,
    }
    for col in drop_columns(stats):
        row["rule_rate__" + col[len("drop__"):]] = int(stats[col].sum()) / n_in if n_in else 0.0
    return pd.DataFrame([row])


# --- records ---------------------------------------------------------------------------------------

def sample_records(dirs: list[Path], n: int) -> pd.DataFrame:
    """``n`` records evenly spaced over the concatenated shards of ``dirs`` (all records if fewer).

    Evenly spaced positions rather than a random draw: deterministic and it
    touches every shard in proportion to its size. Only the row groups that
    hold a sampled row are read.
    """
    shards = [uri for d in dirs for uri in record_shards(d)]
    rows = [count_rows(p) for p in shards]
    total = sum(rows)
    if not shards:
        return pd.DataFrame()
    if total == 0:
        return read_schema(shards[0]).empty_table().to_pandas()
    k = min(int(n), total)
    positions = (np.arange(k, dtype=np.int64) * total) // k
    offsets = np.cumsum([0] + rows)
    tables = []
    for i, path in enumerate(shards):
        local = positions[(positions >= offsets[i]) & (positions < offsets[i + 1])] - offsets[i]
        if local.size:
            tables.append(_take_rows(path, local))
    return pa.concat_tables(tables, promote_options="default").to_pandas()


def _take_rows(path: str, local: np.ndarray) -> pa.Table:
    with pq.ParquetFile(fetch_uri(path)) as f:
        group_rows = [f.metadata.row_group(g).num_rows for g in range(f.num_row_groups)]
        group_start = np.cumsum([0] + group_rows)
        groups = sorted({int(g) for g in np.searchsorted(group_start, local, side="right") - 1})
        table = f.read_row_groups(groups)
    # Row index inside the concatenation of the groups that were read.
    read_start = {g: s for g, s in zip(groups, np.cumsum([0] + [group_rows[g] for g in groups]))}
    idx = [int(read_start[int(g)] + (r - group_start[g])) for r, g in zip(local, np.searchsorted(group_start, local, side="right") - 1)]
    return table.take(pa.array(idx, pa.int64()))


def record_shards(stage_dir: Path) -> list[str]:
    """The URIs of a stage (or split) directory's record shards, as its manifest lists them."""
    return [ref.uri for ref in stage_shards(stage_dir, Path(stage_dir).name)]


def id_frame(dirs: list[Path]) -> pd.Series:
    """The distinct ids of the records under ``dirs``, sorted."""
    ids: set[str] = set()
    for d in dirs:
        for uri in record_shards(d):
            ids.update(x for x in read_shard(uri, columns=["id"]).column("id").to_pylist() if x is not None)
    return pd.Series(sorted(ids), dtype=object)


def count_records(stage_dir: Path) -> int:
    return sum(count_rows(uri) for uri in record_shards(stage_dir))


# --- files -----------------------------------------------------------------------------------------

def verify_manifest(stage_dir: Path, root: Path, params: dict) -> CheckResult:
    """Every file the stage's manifests list (its own, its sub-datasets', its artifacts) is where the store keeps
    it with its recorded sha256, and no shard lies in the stage directory unlisted."""
    path = stage_dir / MANIFEST
    label = rel(path, root)
    problems: list[str] = []
    checked = 0
    manifest = load_json(path) if path.exists() else None
    if not path.exists():
        problems.append(f"{label} missing")
    elif not isinstance(manifest, dict):
        problems.append(f"{label} unreadable")
    else:
        store = stage_store(params.get("storage"), stage_dir, str(manifest.get("stage", stage_dir.name)))
        for dataset, d, m in _datasets(stage_dir, manifest, problems, root):
            listed: set[str] = set()
            for shard, entry in sorted((m.get("shards") or {}).items()):
                for name, fe in sorted(((entry or {}).get("files") or {}).items()):
                    listed.add(name)
                    checked += 1
                    problem = store.problem(f"{dataset}/{name}" if dataset else name, fe or {})
                    if problem:
                        where = f" ({fe['uri']})" if (fe or {}).get("uri") else ""
                        problems.append(f"{rel(d / name, root)}: {problem}{where}")
            for shard in d.glob("part-*.parquet"):
                if shard.name not in listed:
                    problems.append(f"{rel(shard, root)}: not in manifest")
        for name, fe in sorted((manifest.get("artifacts") or {}).items()):
            checked += 1
            f = stage_dir / name
            if not f.is_file():
                problems.append(f"{rel(f, root)}: missing")
            elif sha256_file(f) != fe.get("sha256"):
                problems.append(f"{rel(f, root)}: sha256 mismatch")
    return CheckResult(batch="files", type="manifest_matches_files", column=None, kwargs={"manifest": label},
                       success=not problems, observed={"files_checked": checked, "problems": problems})


def _datasets(stage_dir: Path, manifest: dict, problems: list[str], root: Path):
    """(name, directory, manifest) of the stage and each sub-dataset its manifest names (with its hash)."""
    yield "", stage_dir, manifest
    for dataset, info in sorted((manifest.get("outputs") or {}).items()):
        sub = stage_dir / dataset / MANIFEST
        if not sub.is_file():
            problems.append(f"{rel(sub, root)}: missing")
        elif sha256_file(sub) != info.get("manifest_sha256"):
            problems.append(f"{rel(sub, root)}: sha256 mismatch")
        else:
            yield dataset, stage_dir / dataset, load_json(sub) or {}


def file_exists(path: Path, root: Path) -> CheckResult:
    return CheckResult(batch="files", type="file_exists", column=None, kwargs={"path": rel(path, root)},
                       success=path.is_file(), observed="present" if path.is_file() else "missing")


def load_json(path: Path) -> dict | list | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
