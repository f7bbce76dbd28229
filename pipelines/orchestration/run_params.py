"""The `corpus_refresh` run form: a JSON-schema per field (Airflow renders and validates
it in the trigger UI and on REST triggers) and `apply_form`, which re-validates and writes
the values into params.yaml before the stages run: only those values, in place (comments,
order and the rest of the file stay), and records them in reports/run_params.json.

The run's knobs become part of the versioned params (DVC tracks params.yaml), so a
run triggered with other inputs produces, and tags, another data version.
"""
from __future__ import annotations

import copy
import datetime as dt
import io
import logging
import re
from pathlib import Path, PurePosixPath

import yaml

from pipelines.core.atomic import write_bytes_atomic, write_json_atomic

log = logging.getLogger(__name__)

CRAWL_ID = r"^CC-MAIN-\d{4}-\d{2}$"
CRAWL_SEGMENT = r"^\d{13}\.\d{1,3}$"
CRAWL_BUCKET = "commoncrawl"
NEXT_CRAWL = "next"
RUN_PARAMS = "reports/run_params.json"  # the last run's form values and what they changed
RAY_ADDRESS = r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?:\d{1,5}$"  # host:port, the head's GCS address


class FormError(ValueError):
    """A run-form value was refused; the message names the field and why."""


def _orch(params: dict) -> dict:
    return (params or {}).get("orchestration") or {}


def allowed_buckets(params: dict) -> list[str]:
    """S3 buckets a run may read: orchestration.allowed_buckets, the crawl bucket, and any bucket params.yaml already uses."""
    buckets = {CRAWL_BUCKET, *(_orch(params).get("allowed_buckets") or [])}
    ingest = (params or {}).get("ingest") or {}
    for what in ("warc", "wet"):
        for uri in ingest.get(what) or []:
            if str(uri).startswith("s3://"):
                buckets.add(str(uri)[5:].split("/", 1)[0])
    return sorted(buckets)


def _input_pattern(params: dict, root: Path | None) -> str:
    """s3:// URIs of allowed buckets, or local paths without `..`: relative, or absolute under the workspace."""
    buckets = "|".join(re.escape(b) for b in allowed_buckets(params))
    local_start = "(?!/)" if root is None else rf"(?!/)|{re.escape(str(Path(root).resolve()))}/"
    return (rf"^(s3://({buckets})/[^\s]+"
            rf"|(?!s3://)(?![a-zA-Z][a-zA-Z0-9+.-]*://)(?!.*(^|/)\.\.(/|$))({local_start})[^\s]+)$")


def form_schema(params: dict | None = None, root: Path | None = None) -> dict:
    """JSON-schema for each form field; null everywhere means "keep params.yaml".

    ``root`` (the workspace) lets absolute local paths under it through; without it only relative ones pass.
    """
    params = params or {}
    curated = list(((params.get("ingest") or {}).get("curated") or {}).keys())
    presets = list((_orch(params).get("mixture_presets") or {}).keys())
    inputs = {"type": ["null", "array"], "items": {"type": "string", "minLength": 1, "pattern": _input_pattern(params, root)}}
    schema = {
        "crawl_id": {"type": ["null", "string"], "pattern": CRAWL_ID, "title": "Common Crawl id",
                     "description": "e.g. CC-MAIN-2024-22: web inputs become that crawl's WARC/WET files on "
                                    "s3://commoncrawl (needs max_files > 0). Empty = keep params.yaml"},
        "add_crawl": _add_crawl_field(params),
        "crawl_segment": {"type": ["null", "string"], "pattern": CRAWL_SEGMENT, "title": "Crawl segment",
                          "description": "one segment of the crawl, e.g. 1715971057216.39 (empty = all segments)"},
        "warc": {**inputs, "title": "WARC inputs",
                 "description": "local globs inside the workspace or s3:// URIs of allowed buckets "
                                f"({', '.join(allowed_buckets(params))}); empty = keep params.yaml"},
        "wet": {**inputs, "title": "WET inputs", "description": "like WARC inputs, for WET files"},
        "sources": {"type": ["null", "array"], "title": "Curated sources",
                    "items": {"type": "string", "enum": curated}, "uniqueItems": True, "minItems": 1,
                    "description": "curated sources to ingest (others are left out of this run); empty = all"},
        "max_files": {"type": ["null", "integer"], "minimum": 0, "maximum": 100000, "title": "File limit",
                      "description": "at most this many files per input list (0 = all; empty = keep params.yaml)"},
        "max_record_bytes": {"type": ["null", "integer"], "minimum": 1000, "maximum": 100_000_000,
                             "title": "Record size limit",
                             "description": "larger records are dropped as too_large (empty = keep params.yaml)"},
        "mixture_preset": {"type": ["null", "string"], "enum": [None, *presets], "title": "Mixture preset",
                           "description": "source weights for the blends, from orchestration.mixture_presets"},
        "anneal_fraction": {"type": ["null", "number"], "minimum": 0.05, "maximum": 0.5, "title": "Anneal fraction",
                            "description": "share of training steps spent annealing (0.05..0.5)"},
        "executor": {"type": ["null", "string"], "enum": [None, "local", "ray"], "title": "Executor",
                     "description": "where the data stages' tasks run: local (a process pool on the Airflow worker) "
                                    "or ray (a running Ray cluster; same outputs). Empty = keep params.yaml"},
        "ray_address": {"type": ["null", "string"], "pattern": RAY_ADDRESS, "title": "Ray cluster address",
                        "description": "the head's GCS address host:port (empty = params.yaml or $RAY_ADDRESS). "
                                       "The auth token comes from the worker's environment, never from this form"},
    }
    return schema


def _add_crawl_field(params: dict) -> dict:
    candidates = list(_orch(params).get("crawl_candidates") or [])
    field = {"type": ["null", "string"], "title": "Add a crawl (refresh)",
             "description": "grow the corpus by one Common Crawl snapshot (appended to ingest.crawls; earlier crawls "
                            "stay and keep their work): a crawl id, or 'next' = the newest crawl published by the "
                            "run's date that the corpus does not hold yet. Empty = no crawl added"}
    if candidates:  # the form lists them
        return {**field, "enum": [None, NEXT_CRAWL, *candidates]}
    return {**field, "pattern": rf"^({NEXT_CRAWL}|CC-MAIN-\d{{4}}-\d{{2}})$"}


# Form field -> dotted key in params.yaml, for the fields copied as they are.
FORM_FIELDS = {
    "warc": "ingest.warc",
    "wet": "ingest.wet",
    "max_files": "ingest.max_files",
    "max_record_bytes": "ingest.max_record_bytes",
    "anneal_fraction": "train.anneal_fraction",
    "executor": "executor.kind",
    "ray_address": "executor.address",
}


def validate_form(form: dict, params: dict, root: Path) -> None:
    """The same JSON-schema Airflow applies, plus what a schema cannot say (paths, field combinations)."""
    import jsonschema

    schema = form_schema(params, root)
    unknown = sorted(set(form) - set(schema))
    if unknown:
        raise FormError(f"unknown run-form field(s) {unknown}; known: {sorted(schema)}")
    for name, value in form.items():
        try:
            jsonschema.validate(value, schema[name])
        except jsonschema.ValidationError as e:
            raise FormError(f"run form field {name!r}: {e.message}") from None
    root = Path(root).resolve()
    for what in ("warc", "wet"):
        for uri in form.get(what) or []:
            if uri.startswith("s3://"):
                continue
            if ".." in PurePosixPath(uri).parts:
                raise FormError(f"run form field {what!r}: {uri!r} may not contain '..'")
            if Path(uri).is_absolute() and not Path(uri).resolve().is_relative_to(root):
                raise FormError(f"run form field {what!r}: {uri!r} is outside the workspace {root}")
    if form.get("ray_address") and (form.get("executor") or (params.get("executor") or {}).get("kind")) != "ray":
        raise FormError("run form field 'ray_address' needs executor 'ray' (in the form or params.yaml)")
    if form.get("crawl_segment") and not form.get("crawl_id"):
        raise FormError("run form field 'crawl_segment' needs 'crawl_id'")
    if form.get("crawl_id"):
        if form.get("warc") or form.get("wet"):
            raise FormError("give either 'crawl_id' or explicit 'warc'/'wet' inputs, not both")
        limit = form.get("max_files")
        limit = limit if limit is not None else ((params.get("ingest") or {}).get("max_files") or 0)
        if not limit:
            raise FormError("'crawl_id' reads a whole Common Crawl crawl: set max_files > 0 to bound it")
    if form.get("add_crawl"):
        limit = form.get("max_files")
        limit = limit if limit is not None else ((params.get("ingest") or {}).get("max_files") or 0)
        if not limit:
            raise FormError("'add_crawl' reads a whole Common Crawl crawl: set max_files > 0 to bound it")


def crawl_inputs(crawl_id: str, segment: str | None) -> dict[str, list[str]]:
    base = f"s3://{CRAWL_BUCKET}/crawl-data/{crawl_id}/segments/{segment or '*'}"
    return {"warc": [f"{base}/warc/*.warc.gz"], "wet": [f"{base}/wet/*.warc.wet.gz"]}


def _set(params: dict, dotted: str, value, changed: dict) -> None:
    node = params
    *parents, leaf = dotted.split(".")
    for k in parents:
        node = node.setdefault(k, {})
    if node.get(leaf) != value:
        node[leaf] = value
        changed[dotted] = value


def crawl_to_add(wanted: str, params: dict, as_of: dt.date) -> str | None:
    """The crawl a refresh appends to ingest.crawls: ``wanted`` itself, or for ``next`` the newest crawl
    published by ``as_of`` that the corpus lacks (None: it holds them all)."""
    from pipelines.ingest.common_crawl import available_crawls, held_crawls, pick_crawl

    ingest = params.get("ingest") or {}
    held = held_crawls(ingest)
    if wanted != NEXT_CRAWL:
        return None if wanted in held else wanted
    available = list(_orch(params).get("crawl_candidates") or []) or available_crawls(ingest.get("cc_bucket") or CRAWL_BUCKET)
    return pick_crawl(available, held, as_of)


def apply_form(root: Path, form: dict, as_of: dt.date | None = None, scheduled: bool = False) -> dict:
    """Validate the form, write its non-null values into params.yaml; returns what changed.

    ``scheduled``: a run the schedule (or a catch-up) made, which adds the ``next`` crawl when
    ``orchestration.refresh_adds_crawl`` is on; ``as_of``: the run's date (default today)."""
    path = Path(root) / "params.yaml"
    params = yaml.safe_load(path.read_text()) or {}
    form = {k: v for k, v in (form or {}).items() if v is not None and v != []}
    validate_form(form, params, root)
    new = copy.deepcopy(params)
    changed: dict = {}
    wanted = form.get("add_crawl") or (NEXT_CRAWL if scheduled and _orch(params).get("refresh_adds_crawl") else None)
    if wanted:
        as_of = as_of or dt.datetime.now(dt.timezone.utc).date()
        crawl = crawl_to_add(wanted, params, as_of)
        if crawl is None:
            log.info("no crawl to add: the corpus holds %s (every crawl published by %s)",
                     wanted if wanted != NEXT_CRAWL else "every candidate", as_of)
        else:
            _set(new, "ingest.crawls", [*((params.get("ingest") or {}).get("crawls") or []), crawl], changed)
    if form.get("crawl_id"):
        for what, uris in crawl_inputs(form["crawl_id"], form.get("crawl_segment")).items():
            _set(new, f"ingest.{what}", uris, changed)
    for name, dotted in FORM_FIELDS.items():
        if name in form:
            _set(new, dotted, form[name], changed)
    if "sources" in form:
        curated = (new.get("ingest") or {}).get("curated") or {}
        kept = {k: v for k, v in curated.items() if k in form["sources"]}
        if kept != curated:
            new["ingest"]["curated"] = kept
            changed["ingest.curated"] = sorted(kept)
    if "mixture_preset" in form:
        preset = _orch(params)["mixture_presets"][form["mixture_preset"]]
        for phase, weights in preset.items():
            _set(new, f"mix.{phase}.weights", dict(weights), changed)
    if changed:
        write_bytes_atomic(path, edited_in_place(path.read_text(), new, list(changed)).encode())
        log.info("params.yaml updated from the run form: %s", changed)
    # What this run asked for, for the data version it builds (record_data_version puts it in lineage.json).
    write_json_atomic(Path(root) / RUN_PARAMS, {"form": form, "changed": changed, "scheduled": scheduled,
                                                "as_of": str(as_of) if as_of else None})
    return changed


def edited_in_place(text: str, new: dict, dotted_keys: list[str]) -> str:
    """``text`` (params.yaml) with the values at ``dotted_keys`` taken from ``new``, everything else as it was:
    comments, order, quoting and blank lines stay (a round trip, ruamel.yaml), so a run never rewrites the file
    the user edits beyond the values it changes."""
    from ruamel.yaml import YAML

    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096  # never wrap: a flow mapping stays on its one line (keep multi-line mappings in block style)
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    doc = rt.load(text)
    for dotted in dotted_keys:
        *parents, leaf = dotted.split(".")
        node, value = doc, new
        for k in parents:
            node = node.setdefault(k, {}) if node.get(k) is not None else node.__setitem__(k, {}) or node[k]
            value = value[k]
        _merge(node, leaf, value[leaf])
    out = io.StringIO()
    rt.dump(doc, out)
    return out.getvalue()


def _merge(node, key: str, value) -> None:
    """Set ``node[key]`` to ``value``; a mapping is edited key by key, so the comments of what stays are kept."""
    old = node.get(key)
    if isinstance(old, dict) and isinstance(value, dict):
        for k in [k for k in old if k not in value]:
            del old[k]
        for k, v in value.items():
            if old.get(k) != v:
                _merge(old, k, v)
        return
    node[key] = value


def run_date(dag_run) -> tuple[bool, dt.date | None]:
    """(made by the schedule or a catch-up/backfill, the run's logical date) of an Airflow DAG run."""
    if dag_run is None:
        return False, None
    kind = str(getattr(dag_run, "run_type", "") or "").lower()
    logical = getattr(dag_run, "logical_date", None)
    return kind.endswith(("scheduled", "backfill")), (logical.date() if logical else None)
