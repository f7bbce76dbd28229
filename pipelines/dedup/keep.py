"""Keep policy: which record of a duplicate group survives.

``dedup.keep`` is a list like ``[quality_score desc, id asc]`` (or the legacy
string ``smallest_id`` = ``[id asc]``). Records are ranked by those columns in
order; a missing value (or a column the data lacks) ranks last; ``id asc``
always breaks remaining ties, so the ranking is a total order that depends on
the records only, never on sharding or input order.
"""
from __future__ import annotations

import numpy as np

ALIASES = {"smallest_id": ["id asc"]}


def parse_keep(keep) -> list[tuple[str, bool]]:
    """[(column, descending)] from params; ends with ('id', False)."""
    items = ALIASES.get(keep, keep) if isinstance(keep, str) else keep
    if not isinstance(items, list) or not items:
        raise ValueError(f"dedup.keep must be a list like ['quality_score desc', 'id asc'] or one of "
                         f"{sorted(ALIASES)}, got {keep!r}")
    out = []
    for item in items:
        parts = str(item).split()
        if len(parts) not in (1, 2) or (len(parts) == 2 and parts[1].lower() not in ("asc", "desc")):
            raise ValueError(f"dedup.keep: each entry is '<column> [asc|desc]', got {item!r}")
        out.append((parts[0], len(parts) == 2 and parts[1].lower() == "desc"))
    if ("id", False) not in out:
        out.append(("id", False))
    return out


def value_columns(policy: list[tuple[str, bool]]) -> list[str]:
    """Non-id columns the policy reads (numeric)."""
    return [c for c, _ in policy if c != "id"]


def global_rank(ids: np.ndarray, values: dict[str, np.ndarray], policy: list[tuple[str, bool]]) -> np.ndarray:
    """rank[i] = position of record i in keep order (0 = kept first). ``values``: column -> float array (NaN = missing)."""
    keys = []  # np.lexsort: last key is primary
    for column, desc in policy:
        if column == "id":
            keys.append(ids)
            continue
        v = values.get(column)
        if v is None:
            continue
        v = np.asarray(v, dtype=np.float64)
        v = -v if desc else v.copy()
        v[np.isnan(v)] = np.inf  # missing ranks last either way
        keys.append(v)
    order = np.lexsort(keys[::-1]) if keys else np.argsort(ids, kind="stable")
    rank = np.empty(len(ids), dtype=np.int64)
    rank[order] = np.arange(len(ids))
    return rank
