"""Benchmark decontamination on the real eval files: planted items are caught, near misses are not, the gate holds."""
from __future__ import annotations

import gzip
import json

import pytest

from pipelines.checks.gate import GateFailed, run_gate
from pipelines.core.shards import read_all, read_shard
from pipelines.dedup.decontam import CONTAMINATED, ContaminationIndex
from pipelines.dedup.eval_sets import load_set
from pipelines.dedup.normalize import words
from pipelines.stages import runner
run = runner("dedup")

from tests.fixtures.dedup_inputs import dedup_record, write_filter_output
from tests.fixtures.project import SAMPLES
from tests.fixtures.real_text import news_articles, web_articles

EVAL = SAMPLES / "eval"
SETS = {"gsm8k": {"path": str(EVAL / "gsm8k_test_lines0001-0500.jsonl"), "format": "gsm8k"},
        "humaneval": {"path": str(EVAL / "humaneval.jsonl.gz"), "format": "humaneval"},
        "commonsenseqa": {"path": str(EVAL / "commonsenseqa_dev.jsonl"), "format": "commonsenseqa"}}
N = 13


def _grams(text: str, n: int = N) -> set:
    w = words(text)
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


@pytest.fixture(scope="module")
def items() -> dict[str, list[str]]:
    return {name: load_set(name, spec, EVAL).texts for name, spec in SETS.items()}


@pytest.fixture(scope="module")
def index(items) -> ContaminationIndex:
    idx = ContaminationIndex(ngram=N)
    for name in sorted(items):
        idx.add(name, items[name])
    return idx


def test_loaders_read_the_real_formats(items, tmp_path):
    assert {k: len(v) for k, v in items.items()} == {"gsm8k": 500, "humaneval": 164, "commonsenseqa": 1221}
    assert "####" in items["gsm8k"][0] and "def has_close_elements" in items["humaneval"][0]
    assert "revolving door" in items["commonsenseqa"][0] and "department store" in items["commonsenseqa"][0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"sets\.gsm8k: .*bad\.jsonl row 1 does not fit the gsm8k format: no field 'question'"):
        load_set("gsm8k", {"path": str(bad), "format": "gsm8k"}, tmp_path)
    with pytest.raises(ValueError, match="unknown format 'gsm9k'"):
        load_set("gsm8k", {"path": str(bad), "format": "gsm9k"}, tmp_path)
    with pytest.raises(FileNotFoundError, match="sets.gsm8k: eval set .*missing.jsonl does not exist"):
        load_set("gsm8k", {"path": "missing.jsonl", "format": "gsm8k"}, tmp_path)


def test_gsm8k_train_against_test_matches_brute_force(index, items):
    """samples/text/math is GSM8K *train*, the eval set is *test*: the index finds exactly the real 13-gram overlaps."""
    with gzip.open(SAMPLES / "text" / "math" / "gsm8k_train_lines0001-3737.jsonl.gz", "rt", encoding="utf-8") as f:
        train = [json.loads(line) for line in f]
    texts = [f"{r['question']}\n{r['answer']}" for r in train]
    test_grams = set().union(*(_grams(t) for t in items["gsm8k"]))
    truth = {i for i, t in enumerate(texts) if _grams(t) & test_grams}
    hits = index.match(texts)
    found = {int(i) for i in hits[:, index.names.index("gsm8k")].nonzero()[0]}
    assert found == truth
    assert len(found) <= 5  # train and test are disjoint problems: only shared arithmetic phrasing may overlap
    assert not hits[:, index.names.index("humaneval")].any()
    print(f"GSM8K train (3737) vs test (500): {len(found)} records share a {N}-gram: {sorted(found)}")


def _planted_corpus(items) -> tuple[list[dict], dict[str, set]]:
    """Real news/web documents, some with a real eval item pasted into the middle."""
    hosts = news_articles(12) + web_articles(12)
    records, planted = [], {name: set() for name in SETS}
    plant = {0: ("gsm8k", 3), 1: ("gsm8k", 250), 2: ("humaneval", 10), 3: ("humaneval", 99),
             4: ("commonsenseqa", 7), 5: ("commonsenseqa", 1000)}
    for i, text in enumerate(hosts):
        tokens = text.split()
        if i in plant:
            name, k = plant[i]
            text = " ".join(tokens[:60]) + "\n" + items[name][k] + "\n" + " ".join(tokens[60:])
        elif i == 6:  # a 12-word fragment of a GSM8K question is below n: not contamination
            text = " ".join(tokens[:60] + words(items["gsm8k"][3])[:N - 1] + tokens[60:])
        rec = dedup_record("web", f"host-{i}", text)
        records.append(rec)
        if i in plant:
            planted[plant[i][0]].add(rec["id"])
    # A verbatim copy of a contaminated record: contaminated as well, never a cluster head for anything kept.
    records.append(dedup_record("web", "host-0-copy", records[0]["text"]))
    planted["gsm8k"].add(records[-1]["id"])
    return records, planted


def test_stage_drops_planted_items_and_gate_holds(workspace, items):
    workspace.update("checks.data_docs", False)
    records, planted = _planted_corpus(items)
    write_filter_output(workspace, records, 3)
    summary = run(workspace.params())
    removed = read_all(workspace.path("data", "dedup", "removed"))
    by_reason = {}
    for rid, reason, detail in zip(*(removed.column(c).to_pylist() for c in ("id", "drop_reason", "drop_detail"))):
        by_reason.setdefault(reason, {})[rid] = json.loads(detail)
    all_planted = set().union(*planted.values())
    assert set(by_reason[CONTAMINATED]) == all_planted
    for name, ids in planted.items():
        assert all(by_reason[CONTAMINATED][i]["benchmarks"] == [name] for i in ids)
        assert summary[f"{CONTAMINATED}__{name}"] == len(ids)
    assert summary[CONTAMINATED] == len(all_planted)
    stats = read_shard(workspace.path("data", "dedup", "_stats.parquet")).to_pandas()
    assert stats[f"extra__{CONTAMINATED}__gsm8k"].sum() == len(planted["gsm8k"])
    kept = read_all(workspace.path("data", "dedup"))
    assert kept.column("contamination").null_count == kept.num_rows
    assert summary["records_out"] == len(records) - len(all_planted)  # no other duplicates among the hosts
    assert run_gate("dedup", workspace.params())["success"]

    # Flag mode keeps them, labelled; the drop-mode gate then refuses the output.
    params = workspace.update("dedup.decontam.mode", "flag")
    flagged = run(params)
    assert flagged["records_out"] == len(records) - 1  # only the verbatim copy goes (exact dup)
    kept = read_all(workspace.path("data", "dedup")).to_pylist()
    labels = {r["id"]: r["contamination"] for r in kept if r["contamination"]}
    kept_ids = {r["id"] for r in kept}
    assert set(labels) == all_planted & kept_ids and len(labels) == len(all_planted) - 1
    assert {labels[i] for i in planted["humaneval"]} == {"humaneval"}
    params = workspace.update("dedup.decontam.mode", "drop")
    with pytest.raises(GateFailed, match="contamination"):
        run_gate("dedup", params)


def test_decontam_params_are_validated(workspace):
    write_filter_output(workspace, [dedup_record("news", "a", news_articles(1)[0])], 1)
    with pytest.raises(ValueError, match="dedup.decontam.mode"):
        run(workspace.update("dedup.decontam.mode", "remove"))
    workspace.update("dedup.decontam.mode", "drop")
    with pytest.raises(ValueError, match="sets.gsm8k: format 'csv' needs a template or fields"):
        run(workspace.update("dedup.decontam.sets.gsm8k.format", "csv"))
    workspace.update("dedup.decontam.sets.gsm8k.format", "gsm8k")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        run(workspace.update("dedup.decontam.sets.gsm8k.path", "samples/eval/nope.jsonl"))
