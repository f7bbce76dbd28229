"""check_pack on a real pack: passes, then fails on each broken invariant (lineage, splits, padding, shares)."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.checks.gate import GateFailed, run_gate
from pipelines.pack.measure import token_share_rows
from tests.fixtures.pack_inputs import prepare_pack, run_pack


def _gate(ws, params):
    with pytest.raises(GateFailed) as err:
        run_gate("pack", params)
    return str(err.value)


def _lineage(ws, phase="phase1"):
    path = ws.path("data", "pack", phase, "lineage.parquet")
    return path, pq.read_table(path).to_pandas()


def test_pack_gate_passes_on_real_pack_and_fails_on_each_broken_invariant(workspace):
    params = prepare_pack(workspace, per_source=6)
    params["checks"]["data_docs"] = False
    run_pack(params)
    result = run_gate("pack", params)
    assert result["success"]
    shares = token_share_rows(workspace.path("data", "pack"), ("phase1", "phase2"),
                              json.loads(workspace.path("data", "mix", "blend.json").read_text()))
    assert {r["phase"] for r in shares} == {"phase1", "phase2"}
    assert all(r["share_error"] <= 0.1 for r in shares)

    # A needless split: one whole document cut in two pieces (the pieces still tile the sequence).
    path, lin = _lineage(workspace)
    original = path.read_bytes()
    short = lin[(lin.doc_tokens < 100) & (lin.end - lin.start >= 4)].index[0]
    cut = lin.loc[[short]].copy()
    mid = int(lin.at[short, "start"]) + 2
    lin.at[short, "end"] = mid
    cut["start"], cut["doc_offset"] = mid, 2
    pq.write_table(pa.Table.from_pandas(pd_concat(lin, cut), preserve_index=False), path)
    msg = _gate(workspace, params)
    assert "column=needless_splits" in msg and "column=lineage_gaps" not in msg

    # A piece lost from the lineage: tokens without lineage and an incomplete document.
    path.write_bytes(original)
    _, lin = _lineage(workspace)
    pq.write_table(pa.Table.from_pandas(lin.iloc[1:], preserve_index=False), path)
    msg = _gate(workspace, params)
    assert "column=lineage_gaps" in msg and "column=incomplete_docs" in msg and "column=lineage_mismatch" in msg

    # Padding miscounted in index.json, and padding in the middle of a sequence.
    path.write_bytes(original)
    d = workspace.path("data", "pack", "phase2")
    index = json.loads((d / "index.json").read_text())
    index["padding"] += 1
    (d / "index.json").write_text(json.dumps(index))
    name = index["shards"][0]["tokens"]
    tokens = np.load(d / name)
    row = int(np.flatnonzero((tokens[:, -1] == index["pad_id"]))[0])
    tokens[row, 0], tokens[row, -1] = index["pad_id"], tokens[row, 0]  # same counts, padding moved inside
    np.save(d / name, tokens)
    msg = _gate(workspace, params)
    assert "column=padding_mismatch" in msg and "column=pad_not_tail" in msg

    # Token shares far from the blend.
    blend_path = workspace.path("data", "mix", "blend.json")
    blend = json.loads(blend_path.read_text())
    sources = blend["phases"]["phase1"]["sources"]
    first, second = sorted(sources)[:2]
    sources[first]["share"], sources[second]["share"] = sources[first]["share"] + 0.3, sources[second]["share"] - 0.3
    blend_path.write_text(json.dumps(blend))
    msg = _gate(workspace, params)
    assert "column=share_error" in msg and "token_shares" in msg and first in msg


def pd_concat(a, b):
    import pandas as pd

    return pd.concat([a, b], ignore_index=True)
