"""GX gates: pass on sound stage outputs, fail (with a named expectation and observed value) on broken ones."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.checks.gate import GateFailed, report_path, run_gate
from pipelines.core.atomic import write_json_atomic
from pipelines.core.contract import DataStage, ShardResult, ShardTask, removed_table
from pipelines.core.hashing import sha256_file
from pipelines.core.manifest import write_manifest
from pipelines.core.runner import finish_stats, run_stage
from pipelines.core.schema import make_record_id
from pipelines.core.shards import list_shards, read_shard, write_shard
from pipelines.core.stats import ShardStats, write_stats
from pipelines.pack.format import write_index, write_packed_shard
from tests.fixtures.project import SHARED_DATA

NEWS = SHARED_DATA / "text" / "news" / "lee_background.cor"
N_SHARDS = 3


def news_records(source: str = "news") -> list[dict]:
    lines = [ln.strip() for ln in NEWS.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    return [{"id": make_record_id(source, f"lee#{i}"), "url": f"http://news.example/{i}", "source": source,
             "lang": "en", "lang_score": 0.9, "text": t} for i, t in enumerate(lines)]


# --- stage processes (module level: the runner may fork) -------------------------------------------

def _drop(table: pa.Table, keep: list[bool], reason: str, task: ShardTask) -> ShardResult:
    mask = pa.array(keep)
    kept, dropped = table.filter(mask), table.filter(pa.compute.invert(mask))
    # payload_records: what ingest's per-file yield check divides by (every input record could be a document)
    stats = ShardStats(shard=task.shard, records_in=table.num_rows, extra={"payload_records": table.num_rows})
    stats.drop(reason, dropped.num_rows)
    return ShardResult(kept, removed_table(dropped, [reason] * dropped.num_rows, [None] * dropped.num_rows), stats)


def keep_long(task: ShardTask) -> ShardResult:
    """A filter rule: drop texts under ``min_words`` words."""
    table = read_shard(task.inputs[0])
    keep = [len(t.split()) >= task.params["min_words"] for t in table.column("text").to_pylist()]
    return _drop(table, keep, "too_short", task)


def with_near_copy(task: ShardTask) -> ShardResult:
    """A broken dedup: the last shard keeps a copy of an earlier text differing only in case and punctuation."""
    table = read_shard(task.inputs[0])
    if task.shard == "part-00002.parquet":
        first = read_shard(task.params["first_input"]).slice(0, 1).to_pylist()[0]
        copy = dict(first, id=make_record_id("news", "copy"), text=first["text"].upper() + " !!")
        table = pa.concat_tables([table, pa.Table.from_pylist([copy], schema=table.schema)])
    return _drop(table, [True] * table.num_rows, "exact_duplicate", task)


def add_quality(task: ShardTask) -> ShardResult:
    table = read_shard(task.inputs[0])
    scores = [min(1.0, len(t) / 2000) for t in table.column("text").to_pylist()]
    table = table.append_column("quality_score", pa.array(scores, pa.float64()))
    return _drop(table, [True] * table.num_rows, "low_quality", task)


# --- helpers ----------------------------------------------------------------------------------------

def write_inputs(root, records: list[dict]) -> list:
    in_dir = root / "raw"
    per = -(-len(records) // N_SHARDS)
    for i in range(N_SHARDS):
        write_shard(in_dir / f"part-{i:05d}.parquet", pa.Table.from_pylist(records[i * per:(i + 1) * per]))
    return list_shards(in_dir)


class ByHand(DataStage):
    """A stage made for a test: any module-level ``process`` over the shards of ``raw/``."""

    input = "raw"

    def __init__(self, name: str, process):
        self.name, self._process = name, process

    def config(self, params):
        return params["cfg"]

    def process(self, task):
        return self._process(task)


def build_stage(ws, stage: str, process, params: dict | None = None, records: list[dict] | None = None) -> None:
    inputs = write_inputs(ws.root, records or news_records())
    cfg = dict(params or {}, first_input=str(inputs[0]), process=process.__name__)
    run_stage(ByHand(stage, process), {"cfg": cfg, "executor": {"workers": 1}}, ws.path("data", stage), ws.root / "raw")


def publish(d, stage: str, tables: dict, extra: dict | None = None) -> dict:
    """Write record shards and their manifest by hand (what the runner would write for them)."""
    fragments = []
    for shard, table in tables.items():
        write_shard(d / shard, table)
        stats = finish_stats(ShardStats(shard=shard, records_in=table.num_rows), table)
        fragments.append({"shard": shard, "inputs": {}, "params_hash": "x", "stats": stats.to_dict(),
                          "files": {shard: {"bytes": (d / shard).stat().st_size, "sha256": sha256_file(d / shard),
                                            "rows": table.num_rows}}})
    write_stats(d / "_stats.parquet", [ShardStats.from_dict(f["stats"]) for f in fragments])
    return write_manifest(d, stage, "x", fragments, extra)


def artifacts_of(d) -> dict:
    return {p.relative_to(d).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(d.rglob("*")) if p.is_file() and not p.name.startswith("_")}


def read_report(ws, stage: str) -> dict:
    return json.loads(report_path(stage, ws.root).read_text())


def failed_checks(report: dict) -> list[dict]:
    return [c for c in report["checks"] if not c["success"]]


@pytest.fixture
def ws(workspace, monkeypatch):
    monkeypatch.setenv("PIPELINES_WORKERS", "1")
    params = workspace.params()
    params["checks"]["data_docs"] = False  # only the Data Docs test pays for the HTML
    workspace.set_params(params)
    return workspace


# --- standard stages -------------------------------------------------------------------------------

def test_filter_gate_passes_on_sound_output_and_report_is_byte_identical(ws):
    build_stage(ws, "filter", keep_long, {"min_words": 20})
    result = run_gate("filter", ws.params())
    assert result["success"] and result["failed"] == 0
    first = report_path("filter", ws.root).read_bytes()
    types = {(c["type"], c["column"]) for c in result["checks"]}
    assert ("expect_column_values_to_be_between", "unaccounted") in types
    assert ("expect_column_max_to_be_between", "rule_rate__too_short") in types
    assert ("manifest_matches_files", None) in types
    keep = next(c for c in result["checks"] if c["column"] == "keep_rate")
    stats = pq.read_table(ws.path("data", "filter", "_stats.parquet")).to_pandas()
    assert keep["observed"] == pytest.approx(stats.records_out.sum() / stats.records_in.sum())
    run_gate("filter", ws.params())
    assert report_path("filter", ws.root).read_bytes() == first


def test_filter_gate_fails_when_a_rule_removes_too_much(ws):
    build_stage(ws, "filter", keep_long, {"min_words": 400})  # nearly every news text is shorter
    params = ws.update("checks.filter.min_keep_rate", 0.0)
    with pytest.raises(GateFailed) as err:
        run_gate("filter", params)
    msg = str(err.value)
    assert msg.startswith("check_filter FAILED")
    assert "expect_column_max_to_be_between(column=rule_rate__too_short, max_value=0.9)" in msg
    report = read_report(ws, "filter")
    assert report["success"] is False
    [failed] = failed_checks(report)
    assert failed["column"] == "rule_rate__too_short" and failed["observed"] > 0.9
    assert f"observed {failed['observed']}" in msg


def test_gate_fails_on_unbalanced_stats(ws):
    build_stage(ws, "ingest", keep_long, {"min_words": 1})
    path = ws.path("data", "ingest", "_stats.parquet")
    stats = pq.read_table(path)
    records_in = stats.column("records_in").to_pylist()
    records_in[1] += 5  # five records vanished without a reason
    pq.write_table(stats.set_column(stats.column_names.index("records_in"), "records_in", pa.array(records_in, pa.int64())), path)
    with pytest.raises(GateFailed) as err:
        run_gate("ingest", ws.params())
    assert "expect_column_values_to_be_between(column=unaccounted, max_value=0, min_value=0)" in str(err.value)
    assert "part-00001.parquet" in str(err.value)  # the failing shard is named
    [failed] = failed_checks(read_report(ws, "ingest"))
    assert failed["observed"]["unexpected_count"] == 1
    assert failed["observed"]["unexpected"] == [{"shard": "part-00001.parquet", "unaccounted": 5}]


def test_gate_fails_on_null_id(ws):
    # The core writer refuses null ids, so simulate a stage that wrote its shard some other way
    # (and recorded it honestly in the manifest): only the record check can catch it.
    build_stage(ws, "ingest", keep_long, {"min_words": 1})
    shard = ws.path("data", "ingest", "part-00001.parquet")
    table = read_shard(shard)
    ids = table.column("id").to_pylist()
    ids[0] = None
    table = table.set_column(0, pa.field("id", pa.string(), nullable=True), pa.array(ids, pa.string()))
    pq.write_table(table, shard)
    manifest_path = ws.path("data", "ingest", "_manifest.json")
    manifest = json.loads(manifest_path.read_text())
    manifest["shards"][shard.name]["files"][shard.name].update(sha256=sha256_file(shard), bytes=shard.stat().st_size)
    write_json_atomic(manifest_path, manifest)
    params = ws.update("checks.sample_rows", 10_000)  # sample everything so the null row is in it
    with pytest.raises(GateFailed) as err:
        run_gate("ingest", params)
    assert "expect_column_values_to_not_be_null(column=id) on sample" in str(err.value)
    failed = failed_checks(read_report(ws, "ingest"))
    assert [(c["type"], c["column"]) for c in failed] == [("expect_column_values_to_not_be_null", "id")]
    assert failed[0]["observed"]["unexpected_count"] == 1


def test_gate_fails_on_tampered_shard(ws):
    build_stage(ws, "ingest", keep_long, {"min_words": 1})
    run_gate("ingest", ws.params())
    shard = ws.path("data", "ingest", "part-00002.parquet")
    write_shard(shard, read_shard(shard).slice(1))  # a valid shard, but not the one the manifest recorded
    with pytest.raises(GateFailed) as err:
        run_gate("ingest", ws.params())
    assert "data/ingest/part-00002.parquet: sha256 mismatch" in str(err.value)
    [failed] = failed_checks(read_report(ws, "ingest"))
    assert failed["type"] == "manifest_matches_files"


def test_ingest_gate_fails_below_min_records(ws):
    build_stage(ws, "ingest", keep_long, {"min_words": 1})
    params = ws.update("checks.ingest.min_records", 10_000)
    with pytest.raises(GateFailed, match=r"expect_column_sum_to_be_between\(column=records_out, min_value=10000\) on stats: observed \d+"):
        run_gate("ingest", params)


def unique_news() -> list[dict]:
    """The news lines without their 7 exact repeats: what a correct dedup would keep."""
    seen, out = set(), []
    for r in news_records():
        if r["text"] not in seen:
            seen.add(r["text"])
            out.append(r)
    return out


def test_dedup_gate_passes_on_unique_texts_and_catches_duplicates(ws):
    # A hand-made dedup output records no decontamination coverage (a failed check: test_decontam_formats.py).
    ws.update("dedup.decontam.enabled", False)
    build_stage(ws, "dedup", keep_long, {"min_words": 1}, records=unique_news())
    assert run_gate("dedup", ws.params())["success"]
    build_stage(ws, "dedup", with_near_copy, records=unique_news())
    with pytest.raises(GateFailed) as err:
        run_gate("dedup", ws.params())
    assert "expect_column_values_to_be_unique(column=text_hash) on text_hashes" in str(err.value)
    [failed] = failed_checks(read_report(ws, "dedup"))
    assert failed["observed"]["unexpected_count"] == 2  # the original and its case/punctuation variant
    assert make_record_id("news", "copy") in str(err.value)
    # The raw news file itself repeats 7 stories: an output that kept them fails too.
    build_stage(ws, "dedup", keep_long, {"min_words": 1})
    with pytest.raises(GateFailed, match=r"column=text_hash.*'unexpected_count': 14"):
        run_gate("dedup", ws.params())


def test_select_gate_checks_quality_score(ws):
    build_stage(ws, "select", add_quality)
    assert run_gate("select", ws.params())["success"]
    for shard in list_shards(ws.path("data", "select")):
        shard.unlink()
    build_stage(ws, "select", keep_long, {"min_words": 1})  # no quality_score column
    with pytest.raises(GateFailed, match="quality_score"):
        run_gate("select", ws.params())


def test_missing_stage_output_fails_clearly(ws):
    with pytest.raises(GateFailed, match="file_exists.*data/dedup.*missing"):
        run_gate("dedup", ws.params())


# --- mix --------------------------------------------------------------------------------------------

def build_mix(ws, heldout_leak: bool = False) -> None:
    records = news_records()
    heldout, blend = records[:10], records[10:]
    splits = {"phase1": blend, "phase2": blend[: len(blend) // 2] * 2, "heldout": heldout}
    if heldout_leak:
        splits["phase2"] = splits["phase2"] + heldout[:1]
    all_stats, blend_json, outputs = [], {}, {}
    for split, rows in splits.items():
        d = ws.path("data", "mix", split)
        table = pa.Table.from_pylist(rows)
        m = publish(d, f"mix/{split}", {"part-00000.parquet": table})
        outputs[split] = {"manifest_sha256": sha256_file(d / "_manifest.json"), "rows": m["totals"]["rows"]}
        all_stats.append(ShardStats(shard=f"{split}/part-00000.parquet", records_in=len(rows), records_out=len(rows)))
        if split != "heldout":
            # The shape pipelines/mix writes: per phase totals plus per-source realised and target shares.
            news = {"records": len(rows), "unique_records": len({r["id"] for r in rows}),
                    "chars": sum(len(r["text"]) for r in rows), "share": 1.0, "target_share": 1.0}
            blend_json[split] = {"rows": len(rows), "sources": {"news": news}}
    write_stats(ws.path("data", "mix", "_stats.parquet"), all_stats)
    write_json_atomic(ws.path("data", "mix", "blend.json"), {"phases": blend_json})
    write_manifest(ws.path("data", "mix"), "mix", "x", [], {"outputs": outputs, "artifacts": {
        "blend.json": {"bytes": 0, "sha256": sha256_file(ws.path("data", "mix", "blend.json"))}}})


def test_mix_gate_passes_and_fails_on_heldout_leak(ws):
    params = ws.update("checks.mix.min_records", 50)
    build_mix(ws)
    result = run_gate("mix", params)
    assert result["success"]
    assert any(c["batch"] == "blend_shares" for c in result["checks"])
    build_mix(ws, heldout_leak=True)
    with pytest.raises(GateFailed) as err:
        run_gate("mix", params)
    assert "expect_column_values_to_be_unique(column=id) on heldout_vs_blend_ids" in str(err.value)


def test_mix_gate_fails_on_share_off_target_and_missing_blend(ws):
    params = ws.update("checks.mix.min_records", 50)
    build_mix(ws)
    blend = json.loads(ws.path("data", "mix", "blend.json").read_text())
    blend["phases"]["phase1"]["sources"]["news"]["target_share"] = 0.5
    write_json_atomic(ws.path("data", "mix", "blend.json"), blend)
    with pytest.raises(GateFailed, match=r"column=share_error.*phase1"):
        run_gate("mix", params)
    ws.path("data", "mix", "blend.json").unlink()
    with pytest.raises(GateFailed, match="file_exists.*blend.json"):
        run_gate("mix", params)


# --- pack -------------------------------------------------------------------------------------------

SEQ_LEN, PAD, EOS = 16, 0, 1


def build_pack(ws, fill: int = SEQ_LEN, n_seq: int = 6) -> None:
    """Two phases of ``n_seq`` sequences with ``fill`` real tokens each (two docs per sequence)."""
    summary = {}
    rng = np.random.default_rng(0)
    for phase in ("phase1", "phase2"):
        d = ws.path("data", "pack", phase)
        d.mkdir(parents=True, exist_ok=True)
        tokens = np.full((n_seq, SEQ_LEN), PAD, dtype=np.uint16)
        tokens[:, :fill] = rng.integers(2, 100, size=(n_seq, fill))
        half = fill // 2
        entry = write_packed_shard(d, 0, tokens, [[0, half]] * n_seq)
        n_real = n_seq * fill
        write_index(d, {"seq_len": SEQ_LEN, "dtype": "uint16", "vocab_size": 100, "eos_id": EOS, "pad_id": PAD,
                        "n_seq": n_seq, "tokens": n_real, "padding": n_seq * SEQ_LEN - n_real, "shards": [entry]})
        lineage = pa.table({"seq": [i for i in range(n_seq) for _ in range(2)],
                            "record_id": [f"r{i}-{j}" for i in range(n_seq) for j in range(2)],
                            "source": ["news"] * (2 * n_seq),
                            "start": [s for _ in range(n_seq) for s in (0, half)],
                            "end": [e for _ in range(n_seq) for e in (half, fill)]})
        pq.write_table(lineage, d / "lineage.parquet")
        summary[phase] = {"n_seq": n_seq, "seq_len": SEQ_LEN, "tokens": n_real, "padding": n_seq * SEQ_LEN - n_real,
                          "fill_ratio": n_real / (n_seq * SEQ_LEN), "docs": 2 * n_seq}
    write_json_atomic(ws.path("data", "pack", "pack.json"), {"phases": summary})
    write_manifest(ws.path("data", "pack"), "pack", "x", [], {"artifacts": artifacts_of(ws.path("data", "pack"))})


def test_pack_gate_passes_then_fails_on_low_fill(ws):
    build_pack(ws)
    assert run_gate("pack", ws.params())["success"]
    build_pack(ws, fill=8)  # half the positions are padding
    with pytest.raises(GateFailed) as err:
        run_gate("pack", ws.params())
    msg = str(err.value)
    assert "expect_column_values_to_be_between(column=fill_ratio, max_value=1, min_value=0.9) on phases" in msg
    assert "0.5" in msg


def test_pack_gate_fails_on_shape_and_token_count_mismatch(ws):
    build_pack(ws)
    d = ws.path("data", "pack", "phase2")
    tokens = np.load(d / "tokens-00000.npy")
    np.save(d / "tokens-00000.npy", tokens[:-1])  # one sequence lost
    with pytest.raises(GateFailed) as err:
        run_gate("pack", ws.params())
    msg = str(err.value)
    assert "phase2/tokens-00000.npy: shape [5, 16] != index [6, 16]" in msg
    assert "column=token_mismatch" in msg and "column=lineage_mismatch" in msg
    assert "data/pack/phase2/tokens-00000.npy: sha256 mismatch" in msg  # the manifest's file list


# --- data docs --------------------------------------------------------------------------------------

def test_data_docs_are_built_when_enabled(ws):
    build_pack(ws)
    params = ws.update("checks.data_docs", True)
    result = run_gate("pack", params)
    assert result["data_docs"] == "reports/gx/pack/index.html"
    assert ws.path("reports", "gx", "pack", "index.html").is_file()
    assert list(ws.path("reports", "gx", "pack", "validations").rglob("*.html"))
    assert_offline(ws.path("reports", "gx", "pack"))
    # One index for the six stage sites: pack's linked with its gate's result, the others not built yet.
    index = ws.path("reports", "gx", "index.html").read_text()
    assert '<a href="pack/index.html">check_pack</a>' in index and "passed" in index
    assert all(f"check_{s}" in index for s in ("ingest", "filter", "dedup", "select", "mix", "pack"))


def assert_offline(site):
    """No page of a Data Docs site loads a script, stylesheet or image from the network, and every local
    file a page loads exists."""
    import re
    from urllib.parse import unquote

    pages = list(site.rglob("*.html"))
    assert pages
    for page in pages:
        text = page.read_text()
        for tag in re.findall(r"<(?:script|link|img)\b[^>]*>", text, flags=re.I):
            for url in re.findall(r"""\b(?:src|href)=["']([^"']*)["']""", tag, flags=re.I):
                assert not re.match(r"(https?:)?//", url), (page, tag)
                if url.startswith(("data:", "#")):
                    continue
                assert (page.parent / unquote(url.split("?")[0])).resolve().is_file(), (page, url)
        assert "integrity=" not in text and "crossorigin=" not in text, page


def test_data_docs_load_vendored_assets_and_the_index_links_every_stage(tmp_path):
    """The pages GX 1.x writes (CDN Bootstrap, jQuery, vega, Font Awesome; S3 logo) point at local copies."""
    import re
    from pathlib import Path

    import pandas as pd

    from pipelines.checks.data_docs import CDN, write_index
    from pipelines.checks.gx_runner import import_gx, validate
    from pipelines.checks.suites import Batch

    gx = import_gx()
    gx_root = tmp_path / "reports" / "gx"
    frame = pd.DataFrame({"id": ["a", "b", "c"], "x": [0.1, 0.5, 2.0]})
    for stage in ("filter", "pack"):
        batch = Batch("stats", frame, [gx.expectations.ExpectColumnValuesToNotBeNull(column="id"),
                                       gx.expectations.ExpectColumnValuesToBeBetween(column="x", min_value=0, max_value=1)],
                      ["id"])
        results, built = validate(stage, [batch], gx_root / stage)
        assert built and [r.success for r in results] == [True, False]
        assert_offline(gx_root / stage)
    page = next((gx_root / "pack" / "validations").rglob("*.html")).read_text()
    assert "_static/js/jquery-3.7.1.min.js" in page and "_static/css/bootstrap-4.3.1.min.css" in page
    assert "static/images/logo-long.png" in page  # GX's logo from the site's own static/, not S3
    assert all((gx_root / "_static" / f).is_file() for f in CDN.values())
    # Every CDN URL the installed GX templates name has a vendored copy (a GX upgrade that adds one fails here).
    templates = Path(gx.__file__).parent / "render" / "view" / "templates"
    named = {u for t in templates.glob("*.j2") for u in re.findall(r'(?:src|href)="(https://[^"]+)"', t.read_text())
             if re.search(r"\.(js|css)$|@\d+$", u)}
    assert named <= set(CDN), named - set(CDN)
    (tmp_path / "checks").mkdir()
    (tmp_path / "checks" / "pack.json").write_text(json.dumps({"success": False, "failed": 1, "evaluated": 2}))
    index = write_index(gx_root, ["ingest", "filter", "pack"], tmp_path / "checks").read_text()
    assert '<a href="filter/index.html">check_filter</a>' in index and "check_ingest <i>(not built)</i>" in index
    assert "FAILED (1 of 2 checks)" in index and "http" not in index


def test_data_docs_render_in_a_browser_with_the_network_blocked(tmp_path):
    """Chromium, every request through a proxy that does not exist, opens a validation page from disk:
    jQuery, Bootstrap and bootstrap-table run and the results table is drawn."""
    from tests.browser import chrome, close, require_chrome

    require_chrome()
    import pandas as pd

    from pipelines.checks.gx_runner import import_gx, validate
    from pipelines.checks.suites import Batch

    gx = import_gx()
    batch = Batch("stats", pd.DataFrame({"id": ["a", "b"], "x": [0.1, 2.0]}),
                  [gx.expectations.ExpectColumnValuesToBeBetween(column="x", min_value=0, max_value=1)], ["id"])
    assert validate("pack", [batch], tmp_path / "gx" / "pack")[1]
    page = next((tmp_path / "gx" / "pack" / "validations").rglob("*.html"))
    driver = chrome(offline=True)
    try:
        driver.get(page.as_uri())
        state = driver.execute_script(
            "return {jquery: typeof $, bootstrap: typeof $.fn.modal, table: typeof $.fn.bootstrapTable, "
            "vega: typeof vegaEmbed, icons: getComputedStyle(document.body).fontFamily, "
            "sheets: Array.from(document.styleSheets).filter(s => { try { return s.cssRules.length > 0 } "
            "catch (e) { return false } }).length}")
        assert state["jquery"] == "function" and state["bootstrap"] == "function", state
        assert state["table"] == "function" and state["vega"] == "function", state
        assert state["sheets"] >= 5, state  # bootstrap, bootstrap-table, datepicker, dark, font awesome, GX's own
        assert "expect_column_values_to_be_between" in driver.page_source or "values must be" in driver.page_source
        # Reaching the network would have failed: the proxy refuses, so everything above came from disk.
        failed = driver.execute_script("return performance.getEntriesByType('resource')"
                                       ".filter(r => !r.name.startsWith('file:')).map(r => r.name)")
        assert failed == [], failed
    finally:
        close(driver)
