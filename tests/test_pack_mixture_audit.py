"""Data Mixture Inference (pipelines/pack/mixture_audit.py): a byte-level BPE trained on a known mixture of real
sample text gives its shares back from its merges alone, counted on other text of the same sources; the audit
warns when the shares it is compared with are wrong."""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from pipelines.pack.config import mixture_audit_config
from pipelines.pack.mixture_audit import (
    audit, auditable, byte_shares, infer_shares, merge_list, mixture_warning, total_variation,
)
from pipelines.pack.tokenizer import train_tokenizer

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "text"
PIECE = 2000
KNOWN = {"books": 0.5, "news": 0.3, "math": 0.2}
TRAIN_CHARS = 200_000
COUNT_CHARS = 60_000
# Measured on this data (vocab 1024, first 200 merges, top 50 pairs): total variation 0.018 (0.010 and 0.071
# for two other mixtures of these sources at this size: the counting sample is small). The bound is about
# twice the measured error; swapping two sources' shares (the wrong blend below) is 0.3 away.
TOLERANCE = 0.04


def _source_text(source: str) -> str:
    if source == "books":
        return "\n".join((SAMPLES / "books" / f).read_text(encoding="utf-8", errors="replace")
                         for f in ("hamlet_gut.txt", "macbeth_gut.txt", "tempest_gut.txt", "sonnets_gut.txt"))
    if source == "news":
        return (SAMPLES / "news" / "lee_background.cor").read_text(encoding="utf-8", errors="replace")
    rows = gzip.open(next((SAMPLES / "math").glob("*.jsonl.gz")), "rt", encoding="utf-8")
    return "\n\n".join(f"{r['question']}\n{r['answer']}" for r in map(json.loads, rows))


def _halves(text: str) -> tuple[list[str], list[str]]:
    """Pieces of ``text``, alternately for training and for counting: two disjoint samples of one source."""
    pieces = [text[k:k + PIECE] for k in range(0, len(text), PIECE)]
    return pieces[0::2], pieces[1::2]


def _take(pieces: list[str], chars: int) -> list[str]:
    """About ``chars`` of ``pieces``, evenly spaced over all of them (a sample of the whole source, not its start)."""
    total = sum(map(len, pieces))
    step = max(1, total // max(chars, 1))
    return pieces[::step]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1024-token BPE trained (as the pack stage trains it) on KNOWN shares of books, news and math."""
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    train, count, sources = [], {}, []
    for source, share in KNOWN.items():
        train_half, count_half = _halves(_source_text(source))
        taken = _take(train_half, int(share * TRAIN_CHARS))
        train += taken
        sources += [source] * len(taken)
        count[source] = _take(count_half, COUNT_CHARS)
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    train_tokenizer(iter(train), 1024).save(str(path))
    return path, count, byte_shares(train, sources)


def test_a_known_mixture_is_recovered_from_the_merges(trained):
    path, count, actual = trained
    assert auditable(path) and len(merge_list(path)) == 1024 - 258
    inferred = infer_shares(path, count, merges=200, top_pairs=50)
    assert set(inferred["shares"]) == set(KNOWN) and abs(sum(inferred["shares"].values()) - 1) < 1e-9
    assert total_variation(inferred["shares"], actual) < TOLERANCE, (inferred["shares"], actual)
    result = audit(inferred, actual, warn_at=mixture_audit_config(None)["warn_at"])
    assert not result["warn"] and mixture_warning(result, result["warn_at"]) is None


def test_the_audit_warns_on_a_wrong_blend(trained):
    path, count, actual = trained
    inferred = infer_shares(path, count, merges=200, top_pairs=50)
    wrong = {"books": 0.2, "news": 0.3, "math": 0.5}  # books and math swapped
    result = audit(inferred, wrong, warn_at=0.05)
    assert result["warn"] and result["total_variation"] > 0.2
    message = mixture_warning(result, 0.05)
    assert message and "total variation" in message and "books" in message


def test_mixture_audit_params_are_validated():
    assert mixture_audit_config({"warn_at": 0.1})["warn_at"] == 0.1
    for bad in ({"merges": 0}, {"top_pairs": 0}, {"warn_at": 1.5}, {"sample_chars_per_source": 0}):
        with pytest.raises(ValueError, match="pack.mixture_audit"):
            mixture_audit_config(bad)


def test_pack_records_the_audit_and_check_pack_warns_without_failing(workspace):
    from pipelines.checks.gate import run_gate
    from tests.fixtures.pack_inputs import prepare_pack, run_pack

    params = prepare_pack(workspace, per_source=6)
    params["checks"]["data_docs"] = False
    run_pack(params)
    result = json.loads(workspace.path("data", "pack", "pack.json").read_text())["mixture_audit"]
    assert result["actual_from"] == "tokenizer_sample" and result["merges"] == params["pack"]["mixture_audit"]["merges"]
    assert set(result["shares"]) == set(result["actual_shares"]) and abs(sum(result["shares"].values()) - 1) < 1e-9
    assert result["total_variation"] == pytest.approx(total_variation(result["shares"], result["actual_shares"]))
    assert set(result["blend_shares"]) == set(result["actual_shares"])
    quiet = run_gate("pack", params)
    assert quiet["success"] and any(w.startswith("mixture audit:") for w in quiet["warnings"]) == result["warn"]
    params["pack"]["mixture_audit"]["warn_at"] = 0.0  # any disagreement at all: the check warns, the gate passes
    loud = run_gate("pack", params)
    assert loud["success"] and any(w.startswith("mixture audit:") for w in loud["warnings"])


def test_regenerating_the_science_report_keeps_the_audit_section(tmp_path, monkeypatch):
    from pipelines.experiments import _report
    from pipelines.experiments._report import upsert_section
    from pipelines.experiments.mixture_audit import SECTION

    out = tmp_path / "science"
    out.with_suffix(".md").write_text("# anneal\n\n## Claims\nold\n")
    upsert_section(out.with_suffix(".md"), SECTION, f"{SECTION}\n\naudit v1\n")
    upsert_section(out.with_suffix(".md"), SECTION, f"{SECTION}\n\naudit v2\n")  # replaced, not appended twice
    monkeypatch.setattr(_report, "markdown", lambda summary, png: "# anneal\n\n## Claims\nnew\n")
    monkeypatch.setattr(_report, "figure", lambda summary: None)
    _report.write({}, out)
    text = out.with_suffix(".md").read_text()
    assert "new" in text and "old" not in text and text.count(SECTION) == 1 and "audit v2" in text


def test_the_distance_is_the_same_bits_in_every_process():
    """pack.json must not depend on the process's string hash seed (a set's order did: Ray vs local differed)."""
    import subprocess
    import sys

    code = ("from pipelines.pack.mixture_audit import total_variation as t;"
            "p={'books':0.1091,'cc-a':0.0478,'cc-b':0.0074,'code':0.0008,'math':0.2104,'news':0.0757,'web':0.0162,"
            "'wikipedia':0.5327};q={'books':0.1095,'cc-a':0.0624,'cc-b':0.0278,'code':0.0004,'math':0.2092,"
            "'news':0.0943,'wikipedia':0.4963,'other':0.00011};print(repr(t(p,q)))")
    outs = {subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": str(seed)},
                           capture_output=True, text=True, check=True).stdout for seed in range(12)}
    assert len(outs) == 1, outs
