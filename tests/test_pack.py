"""pack: tokenizer, best-fit-decreasing packing, lineage exactness, format round trip, determinism."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pipelines.pack.binpack import best_fit_decreasing, concat_split, split_documents
from tests.fixtures.pack_inputs import SEQ_LEN, check_packed_phase, prepare_pack, run_pack
from tests.fixtures.project import run_and_tell


def _snapshot(d):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_pack_best_fit_round_trips_to_the_original_text(workspace):
    params = prepare_pack(workspace)
    summary = run_pack(params)
    assert summary["phase1"] > 0
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(workspace.path("data", "pack", "tokenizer")))
    pack = json.loads(workspace.path("data", "pack", "pack.json").read_text())
    assert tokenizer.eos_token_id == pack["eos_id"] and tokenizer.pad_token_id == pack["pad_id"]
    assert pack["vocab_size"] == len(tokenizer) == 512
    for phase in ("phase1", "phase2"):
        lineage, pieces = check_packed_phase(workspace, phase, tokenizer)
        stats = pack["phases"][phase]
        # Best fit cuts a document only when it does not fit in one sequence.
        for (rid, copy), parts in pieces.items():
            n_tokens = sum(len(p) for _, p in parts)
            assert (len(parts) > 1) == (n_tokens > SEQ_LEN)
        assert stats["docs_split"] == stats["docs_longer_than_seq_len"] > 0
        assert stats["fill_ratio"] > 0.95
        assert stats["pieces"] == len(lineage)
        assert abs(sum(stats["token_share"].values()) - 1) < 1e-9


def test_concat_mode_is_exact_but_splits_more(workspace):
    params = prepare_pack(workspace, per_source=8)
    run_pack(params)
    best = json.loads(workspace.path("data", "pack", "pack.json").read_text())["phases"]["phase1"]
    params["pack"]["packing"] = "concat"
    run_pack(params)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(workspace.path("data", "pack", "tokenizer")))
    check_packed_phase(workspace, "phase1", tokenizer)
    concat = json.loads(workspace.path("data", "pack", "pack.json").read_text())["phases"]["phase1"]
    assert concat["tokens"] == best["tokens"]
    assert concat["docs_split"] > best["docs_split"]
    assert concat["padding"] < SEQ_LEN  # only the last sequence is padded


def test_rerun_is_byte_identical_and_skips(workspace, caplog):
    params = prepare_pack(workspace, per_source=6)
    run_pack(params)
    pack = workspace.path("data", "pack")
    before = _snapshot(pack)
    assert run_and_tell(run_pack, params, caplog)[1] is True
    shutil.rmtree(pack)
    assert run_and_tell(run_pack, params, caplog)[1] is False
    assert _snapshot(pack) == before  # tokenizer training included
    # A damaged file is noticed and the stage redoes its work.
    (pack / "phase1" / "lineage.parquet").write_bytes(b"broken")
    assert run_and_tell(run_pack, params, caplog)[1] is False and _snapshot(pack) == before


def test_bad_params_and_missing_input(workspace):
    with pytest.raises(FileNotFoundError, match="run the mix stage first"):
        run_pack(workspace.params())
    params = prepare_pack(workspace, per_source=3)
    params["pack"]["packing"] = "first_fit"
    with pytest.raises(ValueError, match="pack.packing"):
        run_pack(params)
    params["pack"].update(packing="best_fit", vocab_size=100)
    with pytest.raises(ValueError, match="pack.vocab_size"):
        run_pack(params)


def _naive_best_fit_fills(lengths, seq_len):
    """Reference: scan every open sequence for the tightest fit (O(n * sequences))."""
    used = []
    for n in sorted(lengths, reverse=True):
        fits = [(seq_len - u, k) for k, u in enumerate(used) if seq_len - u >= n]
        if fits:
            used[min(fits)[1]] += n
        else:
            used.append(n)
    return sorted(used)


def test_best_fit_decreasing_matches_the_naive_reference():
    # Capacity 10: 6, 5, 4 -> the 4 goes with the 6 (room 4), not the 5 (room 5).
    placement = best_fit_decreasing(split_documents(np.array([5, 6, 4]), 10), 10)
    assert placement.seq[2] == placement.seq[1] != placement.seq[0]
    # A long document: seq_len chunks plus its remainder.
    pieces = split_documents(np.array([25, 3]), 10)
    assert pieces.length.tolist() == [10, 10, 5, 3] and pieces.offset.tolist() == [0, 10, 20, 0]
    rng = np.random.default_rng(0)
    for seq_len in (128, 97):  # the capacity tree's size is a power of two: test one that is not
        lengths = rng.integers(1, 300, size=1500)
        pieces = split_documents(lengths, seq_len)
        bfd = best_fit_decreasing(pieces, seq_len)
        fills = np.bincount(bfd.seq, weights=pieces.length).astype(int)
        assert sorted(fills.tolist()) == _naive_best_fit_fills(pieces.length.tolist(), seq_len)
        assert bfd.n_seq <= 1.01 * concat_split(lengths, seq_len).n_seq  # padding stays small
        # Pieces of one sequence do not overlap and stay inside it.
        for s in range(bfd.n_seq):
            sel = np.flatnonzero(bfd.seq == s)
            spans = sorted(zip(bfd.start[sel], bfd.start[sel] + pieces.length[sel]))
            assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:])) and spans[-1][1] <= seq_len


def test_capacity_tree_finds_the_smallest_fitting_capacity():
    from pipelines.pack.binpack import CapacityTree

    tree = CapacityTree(10)
    assert tree.smallest_at_least(1) == -1
    for cap in (3, 7, 7, 10):
        tree.add(cap, 1)
    assert [tree.smallest_at_least(n) for n in (0, 3, 4, 7, 8, 10)] == [3, 3, 7, 7, 10, 10]
    tree.add(7, -1)
    assert tree.smallest_at_least(4) == 7
    tree.add(7, -1)
    tree.add(3, -1)
    assert tree.smallest_at_least(0) == 10 and tree.smallest_at_least(4) == 10
