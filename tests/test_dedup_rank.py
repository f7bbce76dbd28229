"""The distributed keep rank (a sample sort by executor tasks) gives exactly the reference ranking."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipelines.core.executor import LocalExecutor
from pipelines.core.shards import write_shard
from pipelines.core.store import LocalStore
from pipelines.dedup import rank, spill
from pipelines.dedup.keep import global_rank, parse_keep


def _shards(tmp_path, seed: int, sizes: list[int]) -> tuple[list[str], list[str], list[str], np.ndarray]:
    """Shards with tied, missing and signed-zero scores and non-ASCII ids; some shards lack the column."""
    rng = np.random.default_rng(seed)
    paths, ids, sources, scores = [], [], [], []
    for s, n in enumerate(sizes):
        shard_ids = [f"{rng.integers(0, 50)}-é{'z' * int(rng.integers(0, 9))}-{s}-{i}" for i in range(n)]
        q = rng.choice([0.5, -0.0, 0.0, np.nan, 0.25, 1.0], n) if s != 1 else np.full(n, np.nan)
        columns = {"id": shard_ids, "source": [f"src-{(i + s) % 3}" for i in range(n)], "text": ["t"] * n}
        if s != 1:
            columns["q"] = q
        path = tmp_path / f"part-{s}.parquet"
        write_shard(path, pa.table(columns))
        paths.append(str(path))
        ids += shard_ids
        sources += columns["source"]
        scores.append(q)
    return paths, ids, sources, np.concatenate(scores) if scores else np.zeros(0)


@pytest.mark.parametrize("policy", [["q desc"], "smallest_id", ["q asc", "id asc"]])
@pytest.mark.parametrize("chunk", [1, 37, 10_000])
def test_sample_sort_gives_the_reference_rank(tmp_path, policy, chunk):
    paths, ids, sources, q = _shards(tmp_path, 3, [120, 40, 0, 200])
    store = LocalStore(tmp_path / "scratch")
    got = rank.rank_records(LocalExecutor(workers=2).map, store, paths, policy, first=7, chunk=chunk)
    expected = global_rank(np.array(ids, dtype=str), {"q": q}, parse_keep(policy))

    assert got.n == len(ids) and got.rows == [120, 40, 0, 200] and got.bases[0] == 7 and got.bases[-1] == 7 + len(ids)
    table = np.concatenate([spill.load_array(store, t) for t in got.tables])
    order = np.argsort(expected)
    assert [i.decode() for i in table["id"]] == [ids[i] for i in order]  # rank tables: every record, in keep order
    assert [got.sources[c] for c in table["src"]] == [sources[i] for i in order]
    offsets = np.r_[0, np.cumsum(got.rows)]
    for s in range(len(paths)):  # what pass 1 reads back: each shard's rank per row
        rec = spill.read_parts(store, rank.RANK_DTYPE, got.shard_ranks(s))
        mine = np.empty(got.rows[s], np.int64)
        mine[rec["row"]] = rec["rank"]
        assert mine.tolist() == (expected[offsets[s]:offsets[s + 1]] + 7).tolist()
    if chunk == 1:
        assert len(got.tables) > 10  # many key ranges: the splitters were exercised


def test_a_repeated_id_is_named(tmp_path):
    for s, ids in enumerate([["a", "b", "c"], ["d", "b"]]):
        write_shard(tmp_path / f"part-{s}.parquet", pa.table({"id": ids, "source": ["x"] * len(ids),
                                                              "text": ["t"] * len(ids)}))
    paths = [str(tmp_path / f"part-{s}.parquet") for s in range(2)]
    with pytest.raises(ValueError, match="record id 'b' occurs more than once"):
        rank.rank_records(LocalExecutor(workers=1).map, LocalStore(tmp_path / "scratch"), paths, "smallest_id",
                          first=0, chunk=2)
