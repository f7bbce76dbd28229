"""Read ``data/mix/blend.json`` defensively into one row per (phase, source).

The expected shape is ``{phase: {source: {records, unique_records, chars, share, target_share}}}``
(optionally under ``"phases"`` and/or with the sources under ``"sources"``, as a
dict or a list of dicts with a ``source`` key). Unknown structure yields fewer
rows rather than an error: the gate then only checks what it can read.
"""
from __future__ import annotations

SHARE_KEYS = ("share", "realised_share", "realized_share", "actual_share")
TARGET_KEYS = ("target_share", "target")
COUNT_KEYS = ("records", "unique_records", "chars")


def _number(d: dict, keys: tuple[str, ...]) -> float | None:
    for k in keys:
        v = d.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


def _sources(phase_info) -> list[tuple[str, dict]]:
    if isinstance(phase_info, dict):
        inner = phase_info.get("sources", phase_info)
    else:
        inner = phase_info
    if isinstance(inner, dict):
        return [(str(k), v) for k, v in sorted(inner.items()) if isinstance(v, dict)]
    if isinstance(inner, list):
        return sorted(((str(v["source"]), v) for v in inner if isinstance(v, dict) and "source" in v),
                      key=lambda kv: kv[0])
    return []


def _phases(blend) -> list[tuple[str, object]]:
    if isinstance(blend, list):  # flat rows: [{"phase": .., "source": .., ...}]
        by_phase: dict[str, list] = {}
        for row in blend:
            if isinstance(row, dict) and "phase" in row:
                by_phase.setdefault(str(row["phase"]), []).append(row)
        return sorted(by_phase.items())
    if not isinstance(blend, dict):
        return []
    phases = blend.get("phases", blend)
    if isinstance(phases, dict):
        return [(str(k), v) for k, v in sorted(phases.items()) if isinstance(v, (dict, list))]
    return []


def blend_rows(blend) -> list[dict]:
    """Rows with phase, source, counts, share, target_share and share_error (None where not computable)."""
    rows = []
    for phase, info in _phases(blend):
        for source, s in _sources(info):
            share, target = _number(s, SHARE_KEYS), _number(s, TARGET_KEYS)
            counts = {k: _number(s, (k,)) for k in COUNT_KEYS}
            if share is None and target is None and all(v is None for v in counts.values()):
                continue  # not a per-source entry (e.g. a nested config dict)
            rows.append({
                "phase": phase, "source": source, **counts, "share": share, "target_share": target,
                "share_error": abs(share - target) if share is not None and target is not None else None,
            })
    return rows
