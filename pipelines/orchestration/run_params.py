"""Apply the values of an Airflow run's Params form to params.yaml before the stages run.

The run's knobs become part of the versioned params (DVC tracks params.yaml), so a
run triggered with other inputs produces, and tags, another data version.
"""
from __future__ import annotations

import logging
from pathlib import Path

import yaml

from pipelines.core.atomic import write_bytes_atomic

log = logging.getLogger(__name__)

# Params-form field -> dotted key in params.yaml. Only these can be set from a run.
FORM_FIELDS = {
    "warc": "ingest.warc",
    "wet": "ingest.wet",
    "max_files": "ingest.max_files",
}


def form_schema() -> dict:
    """JSON-schema for each form field (Airflow renders and validates these)."""
    return {
        "warc": {"type": ["null", "array"], "items": {"type": "string", "minLength": 1},
                 "description": "WARC inputs: local globs or s3:// URIs (empty = keep params.yaml)"},
        "wet": {"type": ["null", "array"], "items": {"type": "string", "minLength": 1},
                "description": "WET inputs: local globs or s3:// URIs (empty = keep params.yaml)"},
        "max_files": {"type": ["null", "integer"], "minimum": 0, "maximum": 100000,
                      "description": "at most this many web files (0 = all; empty = keep params.yaml)"},
    }


def apply_form(root: Path, form: dict) -> dict:
    """Write the non-null form values into params.yaml; returns what changed."""
    path = Path(root) / "params.yaml"
    params = yaml.safe_load(path.read_text()) or {}
    changed = {}
    for name, dotted in FORM_FIELDS.items():
        value = form.get(name)
        if value is None or value == []:
            continue
        node = params
        *parents, leaf = dotted.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        if node.get(leaf) != value:
            node[leaf] = value
            changed[dotted] = value
    if changed:
        write_bytes_atomic(path, yaml.safe_dump(params, sort_keys=False).encode())
        log.info("params.yaml updated from the run form: %s", changed)
    return changed
