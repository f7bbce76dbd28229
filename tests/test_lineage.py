"""Lineage arithmetic: deltas against the parent, and a no-op re-record."""
from __future__ import annotations

from pipelines.versions import lineage


def test_deltas_are_now_minus_parent_per_source_and_reason():
    parent = {"ingest": {"records_out": {"a": 10, "b": 5}, "drops": {"empty_text": {"a": 1}}},
              "filter": {"records_out": {"a": 8, "b": 4}, "drops": {"language": {"a": 2, "b": 1}}}}
    now = {"ingest": {"records_out": {"a": 10, "b": 5, "c": 7}, "drops": {"empty_text": {"a": 1, "c": 2}}},
           "filter": {"records_out": {"a": 6, "b": 4, "c": 5}, "drops": {"language": {"a": 2, "b": 1, "c": 2},
                                                                         "takedown": {"a": 2}}}}
    d = lineage.deltas(now, parent)
    assert d == {"ingest": {"records_out": {"c": 7}, "drops": {"empty_text": 2}},
                 "filter": {"records_out": {"a": -2, "c": 5}, "drops": {"language": 2, "takedown": 2}}}
    assert lineage.deltas(now, now) == {}
    assert lineage.deltas(now, None)["filter"]["records_out"] == {"a": 6, "b": 4, "c": 5}


def test_re_recording_a_version_keeps_its_lineage(tmp_path):
    same = {"version": "v2", "parent": "v1", "stages": {}}
    assert lineage.build(tmp_path, "v2", same) is same  # re-recording a version keeps its parent
