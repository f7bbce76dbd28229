"""The dedup index's read paths: the probe of a sorted key file and reads by hid across segments."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.store import LocalStore
from pipelines.dedup import history, spill


def test_probe_returns_exactly_the_rows_whose_key_is_asked_for(tmp_path):
    rng = np.random.default_rng(3)
    table = np.zeros(5000, spill.EXACT_DTYPE)
    table["k"] = rng.integers(0, 800, len(table), dtype=np.uint64)  # many repeated keys
    table["k2"], table["r"] = rng.integers(0, 2**63, len(table)), np.arange(len(table))
    table = table[np.lexsort((table["r"], table["k"]))]
    path = tmp_path / "keys.bin"
    table.tofile(path)
    keys = np.unique(rng.integers(0, 1200, 300, dtype=np.uint64))  # some present, some not
    found = history.probe(path, spill.EXACT_DTYPE, keys)
    expected = table[np.isin(table["k"], keys)]
    assert len(expected) > 0 and np.array_equal(found, expected)
    assert len(history.probe(path, spill.EXACT_DTYPE, np.zeros(0, np.uint64))) == 0
    (tmp_path / "empty.bin").write_bytes(b"")
    assert len(history.probe(tmp_path / "empty.bin", spill.EXACT_DTYPE, keys)) == 0


def test_records_and_signatures_are_read_by_hid_across_segments(tmp_path):
    store = LocalStore(tmp_path)
    sizes, files, sig_files, first = [7, 0, 11], [], [], 0
    num_perm = 4
    for k, n in enumerate(sizes):
        rel = f"index/s{k}/{history.RECORDS}"
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        table = pa.table({"id": [f"id-{first + i}" for i in range(n)], "source": ["s"] * n,
                          "added": [f"gen{k}"] * n}, schema=history.RECORDS_SCHEMA)
        pq.write_table(table, tmp_path / rel, row_group_size=3)  # several row groups per segment
        files.append({"rel": rel, "first": first, "count": n})
        sig = np.arange(first * num_perm, (first + n) * num_perm, dtype=history.SIG_DTYPE)
        sig.tofile(tmp_path / f"index/s{k}/{history.SIGNATURES}")
        sig_files.append({"rel": f"index/s{k}/{history.SIGNATURES}", "first": first, "count": n})
        first += n
    hids = np.array([17, 0, 8, 6, 7, 17, 12], np.int64)
    got = history.take_records(store, files, hids, ["id", "added"])
    assert got["id"] == [f"id-{h}" for h in hids.tolist()]
    assert got["added"] == ["gen2", "gen0", "gen2", "gen0", "gen2", "gen2", "gen2"]
    rows = history.read_signature_rows(store, sig_files, hids, num_perm)
    assert np.array_equal(rows, np.stack([np.arange(h * num_perm, (h + 1) * num_perm) for h in hids.tolist()]))
    assert history.read_records(store, files, ["id"]).column("id").to_pylist() == [f"id-{i}" for i in range(18)]
