"""Committed benchmark results keep the bench/results contract, and each comes from a committed script."""
from __future__ import annotations

import json
from numbers import Number
from pathlib import Path

from bench.__main__ import REQUIRED

BENCH = Path(__file__).resolve().parents[1] / "bench"
# Results written by a module outside bench/ (the science experiment writes anneal_vs_constant from the demo's pack).
PRODUCERS = {"anneal_vs_constant": Path("pipelines/experiments/science.py")}


def test_every_result_has_the_contract_fields_and_a_producer():
    results = sorted((BENCH / "results").glob("*.json"))
    assert results, "no committed benchmark results"
    for path in results:
        data = json.loads(path.read_text())
        assert isinstance(data, dict), f"{path.name}: one JSON object per benchmark"
        missing = REQUIRED - set(data)
        assert not missing, f"{path.name}: missing {sorted(missing)}"
        assert data["name"] == path.stem, f"{path.name}: name {data['name']!r}"
        for key in ("ours", "anchor", "ratio", "peak_rss_mb"):
            assert isinstance(data[key], Number), f"{path.name}: {key} = {data[key]!r} is not a number"
        producer = PRODUCERS.get(path.stem, Path("bench") / f"bench_{path.stem}.py")
        assert (BENCH.parent / producer).is_file(), f"{path.name}: no script {producer} writes it"
