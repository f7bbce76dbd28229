"""What ``dvc metrics show`` shows: a few headline numbers per file, the same few names in every file.

``dvc metrics show`` prints one row per metrics file and one column per distinct key across all of
them, so every file here uses the same small vocabulary (records in / out / dropped, tokens, loss,
bits per byte) and the table reads in a terminal. The full detail of each step lives beside them in
``metrics/details/`` (plain outputs, not metrics); ``dvc metrics diff data/<v1> data/<v2>`` compares
the data stages' headlines, which each data version's tag carries.
"""
from __future__ import annotations

from pathlib import Path

from pipelines.config import resolve
from pipelines.core.atomic import write_json_atomic

HEADLINE = "metrics/{name}.json"
DETAILS = "metrics/details/{name}.json"
COLUMNS = ("records_in", "records_out", "dropped", "tokens", "loss", "bpb")


def headline_path(name: str) -> Path:
    return resolve(HEADLINE.format(name=name))


def details_path(name: str) -> Path:
    return resolve(DETAILS.format(name=name))


def write_headline(name: str, values: dict) -> dict:
    """metrics/<name>.json: only the shared columns (a new key would widen everyone's table)."""
    unknown = sorted(set(values) - set(COLUMNS))
    if unknown:
        raise ValueError(f"headline metrics of {name}: {unknown} are not among {COLUMNS}; put detail in {DETAILS}")
    values = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in values.items()}
    write_json_atomic(headline_path(name), values)
    return values
