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


KEEP = "keep"          # mixture preset / executor: leave params.yaml as it is
NO_CRAWL = "none"      # add_crawl: no crawl added
# The word that means "nothing chosen" for the fields the form shows as a drop-down. Airflow's form shows a
# null choice as the literal word "null" (and sorts it first; apache/airflow#62049), so no enum holds null.
UNSET = {"mixture_preset": KEEP, "executor": KEEP, "add_crawl": NO_CRAWL}
# What a value of a pattern-checked field must look like, in words (for the error messages).
PATTERN_WORDS = {
    "crawl_id": "a Common Crawl id like CC-MAIN-2024-22",
    "crawl_segment": "a crawl segment like 1715971057216.39",
    "add_crawl": "a Common Crawl id like CC-MAIN-2024-22, or 'next'",
    "ray_address": "a host:port address like ray-head:6379",
}


def _ranged(kind: str, lo, hi, **field) -> dict:
    """A number field accepting null and ``lo..hi``. The range sits in ``allOf``, not at the top level: Airflow's
    form passes a top-level minimum/maximum to its number box, which then clamps an out-of-range entry on blur
    (0.9 silently became 0.5). There the value is sent as typed and the trigger is refused, naming the field."""
    return {"type": ["null", kind], "allOf": [{"minimum": lo, "maximum": hi}], **field}


def value_range(schema: dict) -> tuple:
    """(minimum, maximum) of a form field, wherever the schema keeps them."""
    lo, hi = schema.get("minimum"), schema.get("maximum")
    for sub in schema.get("allOf") or []:
        lo, hi = sub.get("minimum", lo), sub.get("maximum", hi)
    return lo, hi


def form_schema(params: dict | None = None, root: Path | None = None) -> dict:
    """JSON-schema for each form field (default: the value that keeps params.yaml; see ``form_defaults``).

    ``root`` (the workspace) lets absolute local paths under it through; without it only relative ones pass.
    Every field has a title (what the form and the error messages call it); drop-downs have words for their
    choices (``values_display``) and no null choice; multi-selects list their choices in ``examples`` (what
    Airflow's form shows) and refuse others through ``items.enum``.
    """
    params = params or {}
    curated = list(((params.get("ingest") or {}).get("curated") or {}).keys())
    presets = list((_orch(params).get("mixture_presets") or {}).keys())
    kind_now = (params.get("executor") or {}).get("kind") or "local"
    inputs = {"type": ["null", "array"], "items": {"type": "string", "minLength": 1, "pattern": _input_pattern(params, root)}}
    schema = {
        "crawl_id": {"type": ["null", "string"], "pattern": CRAWL_ID, "title": "Common Crawl id",
                     "description": "e.g. CC-MAIN-2024-22: web inputs become that crawl's WARC/WET files on "
                                    "s3://commoncrawl (needs a file limit > 0). Empty = keep params.yaml"},
        "add_crawl": _add_crawl_field(params),
        "crawl_segment": {"type": ["null", "string"], "pattern": CRAWL_SEGMENT, "title": "Crawl segment",
                          "description": "one segment of the crawl, e.g. 1715971057216.39 (empty = all segments)"},
        "warc": {**inputs, "title": "WARC inputs",
                 "description": "local globs inside the workspace or s3:// URIs of allowed buckets "
                                f"({', '.join(allowed_buckets(params))}); empty = keep params.yaml"},
        "wet": {**inputs, "title": "WET inputs", "description": "like WARC inputs, for WET files"},
        "sources": {"type": ["null", "array"], "title": "Curated sources",
                    "items": {"type": "string", "enum": curated}, "examples": curated,
                    "values_display": {s: s for s in curated}, "uniqueItems": True, "minItems": 1,
                    "description": "curated sources to ingest (the others are left out of this run); empty = all"},
        "max_files": _ranged("integer", 0, 100000, title="File limit",
                             description="at most this many files per input list, 0..100000 "
                                         "(0 = all; empty = keep params.yaml)"),
        "max_record_bytes": _ranged("integer", 1000, 100_000_000, title="Record size limit",
                                    description="larger records are dropped as too_large, 1000..100000000 bytes "
                                                "(empty = keep params.yaml)"),
        "mixture_preset": {"type": "string", "enum": [KEEP, *presets], "title": "Mixture preset",
                           "values_display": {KEEP: "as in params.yaml", **{p: p.replace("_", " ") for p in presets}},
                           "description": "source weights for the blends, from orchestration.mixture_presets "
                                          "(“as in params.yaml” keeps mix.*.weights)"},
        "anneal_fraction": _ranged("number", 0.05, 0.5, title="Anneal fraction",
                                   description="share of training steps spent annealing, 0.05..0.5 "
                                               "(empty = keep params.yaml)"),
        "executor": {"type": "string", "enum": [KEEP, "local", "ray"], "title": "Executor",
                     "values_display": {KEEP: f"as in params.yaml ({kind_now})",
                                        "local": "local: a process pool on the Airflow worker",
                                        "ray": "ray: a running Ray cluster (same outputs)"},
                     "description": "where the data stages' tasks run"},
        "ray_address": {"type": ["null", "string"], "pattern": RAY_ADDRESS, "title": "Ray cluster address",
                        "description": "the head's GCS address host:port (empty = params.yaml or $RAY_ADDRESS). "
                                       "The auth token comes from the worker's environment, never from this form"},
    }
    return schema


def form_defaults(schema: dict) -> dict:
    """The value each field starts with in the form: its "keep params.yaml" word, else empty (null)."""
    return {name: UNSET.get(name) if UNSET.get(name) in (field.get("enum") or []) else None
            for name, field in schema.items()}


def _add_crawl_field(params: dict) -> dict:
    candidates = list(_orch(params).get("crawl_candidates") or [])
    field = {"title": "Add a crawl (refresh)",
             "description": "grow the corpus by one Common Crawl snapshot (appended to ingest.crawls; earlier crawls "
                            "stay and keep their work): a crawl id, or 'next' = the newest crawl published by the "
                            "run's date that the corpus does not hold yet"}
    if candidates:  # the form lists them
        return {**field, "type": "string", "enum": [NO_CRAWL, NEXT_CRAWL, *candidates],
                "values_display": {NO_CRAWL: "none (no crawl added)",
                                   NEXT_CRAWL: "next: the newest crawl the corpus lacks", **{c: c for c in candidates}}}
    return {**field, "type": ["null", "string"], "pattern": rf"^({NEXT_CRAWL}|CC-MAIN-\d{{4}}-\d{{2}})$",
            "description": field["description"] + ". Empty = no crawl added"}


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


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _choices(field: dict, allowed: list) -> str:
    shown = field.get("values_display") or {}
    return ", ".join(f"{c!r} ({shown[c]})" if shown.get(c, c) != c else repr(c) for c in allowed)


def worded_error(name: str, field: dict, error, words: dict | None = None) -> str:
    """A jsonschema error on form field ``name`` as one sentence naming the field by its title;
    ``words``: what a value of each pattern-checked field must look like (default PATTERN_WORDS)."""
    title = field.get("title") or name
    value, kind = error.instance, error.validator
    where = f"item {error.path[-1] + 1} " if error.path and isinstance(error.path[-1], int) else ""
    shown = _num(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)
    if kind == "maximum":
        why = f"{shown} is above the maximum {_num(error.validator_value)}"
    elif kind == "minimum":
        why = f"{shown} is below the minimum {_num(error.validator_value)}"
    elif kind == "enum":
        why = f"{where}{shown} is not one of the choices: {_choices(field, error.validator_value)}"
    elif kind == "pattern":
        why = f"{where}{shown} is not {(words or PATTERN_WORDS).get(name, 'in the expected form')}"
    elif kind == "type":
        wanted = [t for t in ([error.validator_value] if isinstance(error.validator_value, str) else error.validator_value)
                  if t != "null"]
        words = {"integer": "a whole number", "number": "a number", "string": "text", "array": "a list"}
        why = f"{where}{shown} is not {' or '.join(words.get(t, t) for t in wanted)}"
    elif kind == "minItems":
        why = "choose at least one (or leave it empty for all)"
    elif kind == "uniqueItems":
        why = f"{shown} names a choice twice"
    elif kind == "minLength":
        why = f"{where}is empty"
    else:
        why = error.message
    return f"{title}: {why}"


def validate_form(form: dict, params: dict, root: Path) -> None:
    """The same JSON-schema Airflow applies, plus what a schema cannot say (paths, field combinations).
    Each refusal is a FormError whose message starts with the field's title."""
    import jsonschema

    schema = form_schema(params, root)
    title = {name: field.get("title") or name for name, field in schema.items()}
    inputs = ("a path inside the workspace (relative, or absolute under it; no '..') or an s3:// URI of an "
              f"allowed bucket ({', '.join(allowed_buckets(params))})")
    words = {**PATTERN_WORDS, "warc": inputs, "wet": inputs}
    unknown = sorted(set(form) - set(schema))
    if unknown:
        raise FormError(f"unknown run-form field(s) {', '.join(unknown)}; the form has: "
                        f"{', '.join(f'{n} ({t})' for n, t in title.items())}")
    for name, value in form.items():
        error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema[name]).iter_errors(value))
        if error is not None:
            raise FormError(worded_error(name, schema[name], error, words))
    root = Path(root).resolve()
    for what in ("warc", "wet"):
        for uri in form.get(what) or []:
            if uri.startswith("s3://"):
                continue
            if ".." in PurePosixPath(uri).parts:
                raise FormError(f"{title[what]}: {uri!r} may not contain '..'")
            if Path(uri).is_absolute() and not Path(uri).resolve().is_relative_to(root):
                raise FormError(f"{title[what]}: {uri!r} is outside the workspace {root}")
    executor = form.get("executor") if form.get("executor") not in (None, KEEP) else (params.get("executor") or {}).get("kind")
    if form.get("ray_address") and executor != "ray":
        raise FormError(f"{title['ray_address']}: needs the executor 'ray' (in the form or params.yaml), not {executor or 'local'!r}")
    if form.get("crawl_segment") and not form.get("crawl_id"):
        raise FormError(f"{title['crawl_segment']}: needs a {title['crawl_id']}")
    limit = form.get("max_files")
    limit = limit if limit is not None else ((params.get("ingest") or {}).get("max_files") or 0)
    if form.get("crawl_id"):
        if form.get("warc") or form.get("wet"):
            raise FormError(f"{title['crawl_id']}: give either a crawl id or {title['warc']}/{title['wet']}, not both")
        if not limit:
            raise FormError(f"{title['crawl_id']}: a crawl id reads a whole Common Crawl crawl: set the "
                            f"{title['max_files']} above 0 to bound it")
    if form.get("add_crawl") not in (None, NO_CRAWL) and not limit:
        raise FormError(f"{title['add_crawl']}: a crawl reads a whole Common Crawl snapshot: set the "
                        f"{title['max_files']} above 0 to bound it")


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
    form = {k: v for k, v in form.items() if UNSET.get(k) != v}  # "as in params.yaml" / "no crawl added"
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
