"""The ingest stage: raw inputs -> ``data/ingest/`` record shards.

One output shard per input file, named after it (``part-<source>-<sha1 of the file's name>``): a
refresh that adds or drops input files re-reads only the new ones; every other shard is reused.

Accounting per shard (``_stats.parquet``):
- ``records_in``: candidate documents (HTML 2xx responses, WET conversions,
  curated records); ``records_in = records_out + records_dropped``.
- drops (written to ``removed/`` with id/url/source and empty text):
  ``too_large``, ``undecodable``, ``empty_text``, ``extract_error``, ``malformed``.
- ``extra__skipped_<reason>``: input records that are not documents
  (warcinfo, request, metadata, revisit, resource, non_html, http_status,
  redirect, namespace, blank_line); ``extra__seen_<type>``: WARC records read,
  by WARC-Type; ``extra__payload_records``: the records that could have been
  documents (WARC responses and conversions; a curated file's records), the
  denominator of the file's yield that ``check_ingest`` gates;
  ``extra__read_errors``: places where the input could not be read (a corrupt
  gzip member, garbage, broken headers, a record cut short): reading goes on
  after each, and ``problems`` names each with its byte offset;
  ``extra__empty_files``: 0-byte inputs.

Missing inputs (a missing local file, a missing S3 key, a glob that matches
nothing) raise before any work, naming the input: a misconfigured run should
not look like a small corpus. Network errors while streaming also raise (a
re-run resumes); only corrupt *content* is a counted skip.
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import re
import os
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass
from pathlib import Path

from pipelines.config import section, workspace
from pipelines.core.contract import DataStage, ShardResult, ShardTask, removed_table
from pipelines.core.schema import domain_of, make_record_id, records_to_table
from pipelines.core.stats import ShardStats
from pipelines.core.storage import expand_inputs, input_fingerprint, is_s3, open_input
from pipelines.ingest import langid
from pipelines.ingest.common_crawl import crawl_files, held_crawls
from pipelines.ingest.curated import KINDS, READERS
from pipelines.ingest.extract import DEFAULT_EXTRACTOR, get_extractor
from pipelines.ingest.items import Candidate, Defect, Skipped
from pipelines.ingest.warc import Seen, crawl_source, read_archive

log = logging.getLogger(__name__)
STAGE = "ingest"
DROP_REASONS = ["too_large", "undecodable", "empty_text", "extract_error", "malformed"]
ALWAYS_COUNTED = ("read_errors", "empty_files", "payload_records")  # in every shard's stats, even at 0
MAX_PROBLEMS = 20
INPUT_LISTS = ("warc", "wet", "max_files", "crawl_id", "crawls", "cc_bucket", "cc_files")  # choose files, not how to read them  # read errors named per file (all are counted)
# Content errors of a curated input file: counted, the rest of the inputs go on (WARC damage is a Defect).
CONTENT_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, ET.ParseError, OSError)


@dataclass(frozen=True)
class InputFile:
    uri: str  # what the stage opens (absolute path or s3:// URI)
    name: str  # how it is recorded (workspace-relative when inside the workspace)
    reader: str  # "archive" or a curated kind
    source: str


def _display_name(uri: str, root: Path) -> str:
    if is_s3(uri):
        return uri
    try:
        return Path(uri).relative_to(root).as_posix()
    except ValueError:
        return uri


def _expand(patterns, root: Path, max_files: int, what: str) -> list[str]:
    if isinstance(patterns, str):
        patterns = [patterns]
    files: list[str] = []
    for pattern in patterns or []:
        matched = expand_inputs([pattern], root)
        if not matched:
            raise FileNotFoundError(f"ingest.{what}: {pattern!r} matches no input file")
        files.extend(matched)
    files = sorted(dict.fromkeys(files))
    return files[:max_files] if max_files > 0 else files


def plan_inputs(cfg: dict, root: Path) -> list[InputFile]:
    """Every input file (WARC, WET, then each curated source; files sorted)."""
    max_files = int(cfg.get("max_files") or 0)
    inputs = []
    for what in ("warc", "wet"):
        for uri in _expand(cfg.get(what), root, max_files, what):
            inputs.append(InputFile(uri, _display_name(uri, root), "archive", crawl_source(uri)))
    for crawl in held_crawls(cfg):
        # A Common Crawl snapshot on S3: its warc.paths.gz / wet.paths.gz listing names the files.
        for uri in crawl_files(crawl, cfg.get("cc_bucket") or "commoncrawl", cfg.get("cc_files") or "warc", max_files):
            inputs.append(InputFile(uri, uri, "archive", crawl_source(uri)))
    for source, spec in (cfg.get("curated") or {}).items():
        spec = spec or {}
        kind = spec.get("kind")
        if kind not in KINDS:
            raise ValueError(f"ingest.curated.{source}.kind: {kind!r} is not one of {list(KINDS)}")
        for uri in _expand(spec.get("paths"), root, max_files, f"curated.{source}.paths"):
            inputs.append(InputFile(uri, _display_name(uri, root), kind, str(source)))
    return inputs


def input_shard_name(f: InputFile) -> str:
    """A shard is named after its input file, not its position in the input list: adding a crawl's files
    (or dropping some) leaves every other file's shard, and its finished work, under the same name."""
    source = re.sub(r"[^A-Za-z0-9._-]+", "_", f.source)
    return f"part-{source}-{hashlib.sha1(f.name.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}.parquet"


def _fingerprint(f: InputFile) -> str:
    if not is_s3(f.uri) and not os.path.isfile(f.uri):
        raise FileNotFoundError(f"ingest input {f.name} does not exist")
    try:
        return input_fingerprint(f.uri)
    except Exception as e:  # botocore: missing key, no access, ...
        raise FileNotFoundError(f"ingest input {f.name} cannot be read: {e}") from e


def _items(f: InputFile, stream, cfg: dict):
    max_bytes, min_chars = int(cfg.get("max_record_bytes", 10_000_000)), int(cfg.get("min_text_chars", 1))
    if f.reader == "archive":
        return read_archive(stream, get_extractor(cfg.get("extractor", DEFAULT_EXTRACTOR)), max_bytes, min_chars)
    spec = (cfg.get("curated") or {})[f.source] or {}
    return READERS[f.reader](stream, f.name.rsplit("/", 1)[-1], spec, max_bytes, min_chars)


def _record(f: InputFile, c: Candidate, with_lang: bool, lang_chars: int = 0) -> dict:
    lang, score = langid.detect(c.text, lang_chars) if with_lang else (None, None)
    return {
        "id": make_record_id(f.source, c.key), "url": c.url, "domain": domain_of(c.url), "source": f.source,
        "crawl_date": c.crawl_date, "lang": lang, "lang_score": score, "text": c.text if with_lang else "",
        "source_file": f.name, "source_offset": c.offset,
    }


def _read_error(stats: ShardStats, f: InputFile, where: str) -> None:
    stats.extra["read_errors"] += 1
    if len(stats.problems) < MAX_PROBLEMS:
        stats.problems.append(where)
    log.warning("ingest: %s: read error at %s (reading went on)", f.name, where)


def process_shard(task: ShardTask) -> ShardResult:
    f: InputFile = task.context["input"]
    cfg = task.params["ingest"]
    lang_chars = int(cfg.get("langid_max_chars", 0))
    stats = ShardStats(shard=task.shard, extra={k: 0 for k in ALWAYS_COUNTED})
    kept, removed, reasons, details = [], [], [], []
    with open_input(f.uri) as stream:  # a missing input raises here, naming it
        if not stream.peek(1):
            stats.extra["empty_files"] += 1
            log.warning("ingest: %s is empty (0 bytes)", f.name)
        else:
            try:
                for item in _items(f, stream, cfg):
                    if isinstance(item, Seen):
                        key = f"seen_{item.record_type}"
                        stats.extra[key] = stats.extra.get(key, 0) + 1
                        continue
                    if isinstance(item, Defect):
                        _read_error(stats, f, f"byte {item.offset}: {item.error}")
                        continue
                    if isinstance(item, Skipped):
                        key = f"skipped_{item.reason}"
                        stats.extra[key] = stats.extra.get(key, 0) + 1
                        continue
                    stats.records_in += 1
                    stats.bytes_in += item.bytes_in
                    if item.drop_reason:
                        stats.drop(item.drop_reason)
                        removed.append(_record(f, item, with_lang=False))
                        reasons.append(item.drop_reason)
                        details.append(item.drop_detail)
                    else:
                        kept.append(_record(f, item, with_lang=True, lang_chars=lang_chars))
            except CONTENT_ERRORS as e:  # curated readers stop at the first unreadable part of a file
                if isinstance(e, (ConnectionError, TimeoutError)):
                    raise
                _read_error(stats, f, f"after record {stats.records_in}: {type(e).__name__}: {e}")
    stats.extra["payload_records"] = (stats.extra.get("seen_response", 0) + stats.extra.get("seen_conversion", 0)
                                      if f.reader == "archive" else stats.records_in)
    removed_t = removed_table(records_to_table(removed), reasons, details) if removed else None
    return ShardResult(kept=records_to_table(kept), removed=removed_t, stats=stats)


class IngestStage(DataStage):
    name = STAGE
    drop_reasons = tuple(DROP_REASONS)

    def config(self, params: dict) -> dict:
        cfg = section(params, STAGE)
        get_extractor(cfg.get("extractor", DEFAULT_EXTRACTOR))  # fail on a bad name before any work
        return {"ingest": cfg, "seed": params.get("seed")}

    def shard_settings(self, cfg: dict) -> dict:
        # Which files are read (the lists, max_files, the crawl listing) is not how a file is read.
        ingest = {k: v for k, v in cfg["ingest"].items() if k not in INPUT_LISTS}
        ingest["curated"] = {s: {k: v for k, v in (spec or {}).items() if k != "paths"}
                             for s, spec in (cfg["ingest"].get("curated") or {}).items()}
        return {**cfg, "ingest": ingest}

    def plan(self, run) -> list[ShardTask]:
        inputs = plan_inputs(run.cfg["ingest"], workspace())
        if not inputs:
            raise ValueError("ingest: no inputs configured (ingest.warc, ingest.wet, ingest.curated are all empty)")
        return [ShardTask(STAGE, input_shard_name(f), [f.uri], {f.name: _fingerprint(f)}, {"input": f})
                for f in inputs]

    def prepare(self, run, tasks: list[ShardTask]) -> list[ShardTask]:
        if (run.executor_params or {}).get("start_method", "fork") == "fork":
            langid.identifier()  # load the model (~1.5 s) once here: forked workers inherit it
            import pandas  # noqa: F401  (pyarrow imports it on a shard's first table, ~2 s: once here, not per worker)
        return tasks

    def process(self, task: ShardTask) -> ShardResult:
        return process_shard(task)

    def finish(self, run, fragments: dict[str, list[dict]]) -> dict:
        return {"shard_sources": {t.shard: t.context["input"].source for t in run.tasks},
                "shard_inputs": {t.shard: t.context["input"].name for t in run.tasks}}

    def summarize(self, run, manifest: dict, stats: list[ShardStats]) -> dict:
        sources = manifest.get("shard_sources") or {}
        records_out: dict[str, int] = {}
        drops: dict[str, int] = {}
        counted: dict[str, int] = {}
        seen: dict[str, int] = {}  # WARC records read, by type
        for st in stats:
            source = sources.get(st.shard, "?")
            records_out[source] = records_out.get(source, 0) + st.records_out
            for k, v in st.drops.items():
                if v:
                    drops[k] = drops.get(k, 0) + v
            for k, v in st.extra.items():
                if k.startswith("seen_"):
                    seen[k[len("seen_"):]] = seen.get(k[len("seen_"):], 0) + int(v)
                elif k != "payload_records":
                    counted[k] = counted.get(k, 0) + int(v)
        return {
            "stage": STAGE,
            "files": len(stats),
            "records_out": sum(records_out.values()),
            "records_dropped": sum(drops.values()),
            "records_out_by_source": dict(sorted(records_out.items())),
            "drops": dict(sorted(drops.items())),
            "skipped": dict(sorted(counted.items())),
            "warc_records_by_type": dict(sorted(seen.items())),
            "params_hash": manifest["params_hash"],
        }
