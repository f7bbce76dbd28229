"""pack.order: related (In-Context Pretraining): related documents adjacent, nothing lost, deterministic."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.core.shards import read_all
from pipelines.pack.binpack import split_documents
from pipelines.pack.config import pack_config
from pipelines.pack.related import (
    BITS, adjacent_similarity, popcount, signature, signatures, similarity, traverse, windowed_best_fit,
)
from pipelines.pack.sequences import Rows, place
from pipelines.train.data import IGNORE, BatchStream, encode_sequence
from tests.fixtures.mix_inputs import real_docs
from tests.fixtures.pack_inputs import SEQ_LEN, check_packed_phase, prepare_pack, run_pack


def _snapshot(d):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _rows(texts: list[str], ids: list[str], chars_per_token: int = 4) -> Rows:
    """Rows as the encode tasks return them (token counts approximated from the characters)."""
    length = np.asarray([max(1, len(t) // chars_per_token) + 1 for t in texts], dtype=np.int64)
    return Rows([{"ids": ids, "sources": ["s"] * len(ids), "copies": [0] * len(ids),
                  "begin": np.cumsum(length) - length, "length": length, "prefix": np.zeros(len(ids), np.int64),
                  "signature": signatures(texts)}])


def _near_copy(text: str, k: int) -> str:
    words = text.split()
    for i in range(k, len(words), 25):  # one word in 25 changed
        words[i] = "zzz" + words[i]
    return " ".join(words)


def test_signature_is_a_stable_simhash():
    docs = real_docs(6)
    a = docs["wikipedia"][0]
    assert signature(a) == signature(a) and signature("") == 0
    assert 0 <= signature(a) < 2 ** BITS
    near = similarity(np.asarray([signature(a)], np.uint64), np.asarray([signature(_near_copy(a, 3))], np.uint64))
    far = similarity(np.asarray([signature(a)], np.uint64), np.asarray([signature(docs["code"][0])], np.uint64))
    assert near[0] > 0.85 and far[0] < near[0] - 0.2
    x = np.asarray([0, 1, 2 ** 64 - 1, 0b1011], dtype=np.uint64)
    assert popcount(x).tolist() == [0, 1, 64, 3]


def test_traversal_puts_near_copies_together_and_packs_everything():
    docs = real_docs(12)
    texts = [t[:1500] for source in ("wikipedia", "news", "math", "code", "books") for t in docs[source] if t.strip()]
    ids = [f"d{i}" for i in range(len(texts))]
    copies = {i: len(texts) + n for n, i in enumerate(range(0, len(texts), 7))}  # a near-copy of every 7th document
    texts += [_near_copy(texts[i], 1) for i in copies]
    ids += [f"c{i}" for i in copies]
    rows = _rows(texts, ids)
    order = traverse(rows.signature, np.arange(len(ids)))
    assert sorted(order.tolist()) == list(range(len(ids)))  # a permutation: every row once
    assert np.array_equal(order, traverse(rows.signature, np.arange(len(ids))))
    pos = np.empty(len(order), np.int64)
    pos[order] = np.arange(len(order))
    assert all(abs(pos[i] - pos[c]) == 1 for i, c in copies.items())  # each near-copy next to its original

    default = place(rows, SEQ_LEN, "best_fit")
    related = place(rows, SEQ_LEN, "best_fit", "related")
    for pl in (default, related):  # every token of every row, once, and no sequence overflows
        assert pl.pieces.length.sum() == rows.length.sum()
        assert np.bincount(pl.pieces.doc, weights=pl.pieces.length, minlength=len(ids)).tolist() == rows.length.tolist()
        ends = np.zeros(pl.n_seq, np.int64)
        np.maximum.at(ends, pl.seq, pl.start + pl.pieces.length)
        assert ends.max() <= SEQ_LEN
        used = np.bincount(pl.seq, weights=pl.pieces.length, minlength=pl.n_seq)
        assert np.array_equal(used, ends)  # pieces tile their sequence from 0, no overlap
    # Documents stay whole unless longer than seq_len (as best_fit)
    assert (np.bincount(related.pieces.doc) > 1).sum() == (rows.length > SEQ_LEN).sum()
    # Near-copies land in the same or adjacent sequences (before the seeded shuffle of whole sequences): some
    # piece of each within one sequence of the other's (best-fit-decreasing manages it only when lengths tie)
    def together(pl):
        seqs: dict[int, set] = {}
        for d, s in zip(pl.pieces.doc.tolist(), pl.seq.tolist()):
            seqs.setdefault(d, set()).add(s)
        return [min(abs(x - y) for x in seqs[i] for y in seqs[c]) <= 1 for i, c in copies.items()]
    assert all(together(related)) and sum(together(default)) < len(copies)
    assert all(together(place(rows, SEQ_LEN, "concat", "related")))
    assert adjacent_similarity(rows.signature, related) > adjacent_similarity(rows.signature, default) + 0.03


def test_windowed_best_fit_keeps_order_and_fills():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 3 * SEQ_LEN, 500)
    order = rng.permutation(500)
    pl = windowed_best_fit(lengths, order, SEQ_LEN)
    assert pl.pieces.length.sum() == lengths.sum()
    assert pl.n_seq * SEQ_LEN - lengths.sum() < 0.1 * pl.n_seq * SEQ_LEN  # fill > 90%
    assert np.array_equal(pl.pieces.doc[np.r_[True, np.diff(pl.pieces.doc) != 0]], order)  # traversal order kept
    assert len(split_documents(lengths, SEQ_LEN)) == len(pl.pieces)


def test_order_param_is_validated():
    assert pack_config({"pack": {}})["order"] == "input"
    assert pack_config({"pack": {"order": "related"}})["order"] == "related"
    with pytest.raises(ValueError, match="pack.order"):
        pack_config({"pack": {"order": "random"}})


def _adjacent_similarity(ws, phase="phase1") -> float:
    lin = pq.read_table(ws.path("data", "pack", phase, "lineage.parquet")).to_pandas().sort_values(["seq", "start"])
    mix = read_all(ws.path("data", "mix", phase), columns=["id", "text"]).to_pandas()
    sig = dict(zip(mix.id, signatures(mix.text.tolist())))
    a, b = lin.iloc[:-1], lin.iloc[1:]
    same = a.seq.to_numpy() == b.seq.to_numpy()
    return float(similarity(np.asarray([sig[i] for i in a.record_id[same]], np.uint64),
                            np.asarray([sig[i] for i in b.record_id[same]], np.uint64)).mean())


def test_related_order_through_the_stage(workspace, monkeypatch):
    from transformers import AutoTokenizer

    params = prepare_pack(workspace, per_source=10)
    run_pack(params)
    pack_dir = workspace.path("data", "pack")
    default = _snapshot(pack_dir)
    default_summary = json.loads((pack_dir / "pack.json").read_text())
    default_adjacent = _adjacent_similarity(workspace)

    params["pack"]["order"] = "related"
    run_pack(params)
    tok = AutoTokenizer.from_pretrained(str(pack_dir / "tokenizer"))
    for phase in ("phase1", "phase2"):
        check_packed_phase(workspace, phase, tok)  # every token once, lineage exact, documents decode back
    summary = json.loads((pack_dir / "pack.json").read_text())
    assert summary["order"] == "related" and "order" not in default_summary
    p1, d1 = summary["phases"]["phase1"], default_summary["phases"]["phase1"]
    for key in ("tokens", "docs", "unique_docs", "tokens_by_source", "docs_longer_than_seq_len", "docs_split"):
        assert p1[key] == d1[key], key  # nothing lost, documents still cut only when longer than seq_len
    assert p1["fill_ratio"] > 0.9
    assert p1["order"]["adjacent_similarity"] > 0.5
    related_adjacent = _adjacent_similarity(workspace)
    assert related_adjacent > default_adjacent + 0.02, (related_adjacent, default_adjacent)
    related = _snapshot(pack_dir)
    # Phase 2 (the anneal) keeps the input order: byte for byte the default's
    data = lambda snap: {k: v for k, v in snap.items()  # noqa: E731 (the bookkeeping records the params)
                         if k.startswith("phase2/") and "_shards/" not in k and not k.endswith("_manifest.json")}
    assert data(related) == data(default) and len(data(default)) > 4
    # Deterministic: a rebuild from scratch, on one worker instead of two, gives the same bytes
    shutil.rmtree(pack_dir)
    monkeypatch.setenv("PIPELINES_WORKERS", "1")
    run_pack(params)
    assert _snapshot(pack_dir) == related


def test_document_attention_across_makes_a_real_pack_sequence_one_stream(workspace):
    from pipelines.pack.format import PackedDataset

    params = prepare_pack(workspace, per_source=4)
    run_pack(params)
    ds = PackedDataset(workspace.path("data", "pack", "phase1"))
    item = next(ds[i] for i in range(len(ds)) if len(ds[i].doc_starts) > 1)
    _, masked, pos_masked, _ = encode_sequence(item)
    _, labels, pos, seg = encode_sequence(item, across=True)
    n = item.n_real
    assert (seg[:n] == 0).all() and np.array_equal(pos[:n], np.arange(n))
    assert (labels[:n - 1] != IGNORE).all() and (labels[n - 1:] == IGNORE).all()
    assert (masked[:n - 1] == IGNORE).sum() == len(item.doc_starts) - 1  # the default: no target across documents
    stream = BatchStream(ds, 2, seed=0, across=True)
    batch = stream.next()
    assert batch.attention_mask is not None and (batch.position_ids.max() >= 0)


def test_the_icp_experiment_pairs_seeds_and_keeps_other_sections(tmp_path):
    from pipelines.experiments import icp

    def row(seed, arm, bpb, after):
        return {"seed": seed, "arm": arm, "bpb": {"a": bpb, "b": bpb + 1}, "bpb_mean": bpb + 0.5, "step": 3,
                "pairs": {"pairs": 10, "all": {"alone": 4.0, "after_related": after, "gain": 4.0 - after}},
                "train_s": 1.0, "eval_s": 1.0}
    rows = [row(s, arm, bpb + 0.01 * s, after) for s in (1, 2, 3)
            for arm, bpb, after in (("input", 3.0, 3.9), ("related", 2.5, 3.5))]
    pack = {"adjacent_similarity": 0.5, "fill_ratio": 0.97, "tokens": 10, "docs": 2, "n_seq": 1, "pack_s": 1.0}
    s = {"steps": 3, **icp.summarize(rows, {"input": pack, "related": pack})}
    assert s["bpb"]["mean"]["related_lower"] == "shown" and s["bpb"]["mean"]["input_lower"] != "shown"
    assert s["bpb"]["mean"]["delta_related_minus_input"]["mean"] == pytest.approx(-0.5)
    assert s["pairs"]["verdict_after_related_lower"] == "shown" and s["pairs"]["verdict_gain_higher"] == "shown"
    md = tmp_path / "science.md"
    md.write_text("# Science\n\n## Step Law\n\nkept\n")
    icp.upsert_section(md, icp.markdown(s))
    icp.upsert_section(md, icp.markdown(s))  # replaced, not appended twice
    text = md.read_text()
    assert text.count(icp.SECTION) == 1 and "## Step Law\n\nkept" in text
    from pipelines.experiments import _report
    assert icp.SECTION in _report.OTHER_SECTIONS  # the main science report keeps it
