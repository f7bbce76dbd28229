"""A select refresh: the previous run's input plus new shards, with the same settings and code.

The refresh keeps the previous run's classifier, DSIR model and threshold: the quality bar does not
move between versions, so the earlier shards' decisions stay valid and their outputs are reused
untouched (their shard hashes are unchanged), and only the new shards are scored and cut. A full
build (any other change, or ``select.refresh: retrain``) trains again on the whole input and may move
the bar for every record. The whole-input figures (web records, web kept, the KL reduction) add the
new shards' counts to the previous run's.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipelines.core.hashing import params_hash, sha256_file, stage_hash
from pipelines.core.manifest import load_manifest_if_any


@dataclass
class Parent:
    old_inputs: set[str]  # the input shards the previous run decided
    manifest: dict        # the previous top manifest (quality, selection, artifacts)


def refresh_key(run) -> str:
    """Everything besides the input that decides select's output."""
    return params_hash({"config": run.cfg, "code": stage_hash(run.stage.code_packages, {})})


def find_parent(run, artifacts: list[str]) -> Parent | None:
    """The previous run when this one is a refresh of it, else None. ``artifacts``: the files it must still hold."""
    from pipelines.core.runner import fragment_rel

    if run.cfg.get("refresh", "reuse") != "reuse":
        return None
    top = load_manifest_if_any(run.out_dir) or {}
    if top.get("refresh_key") != refresh_key(run) or not top.get("quality") or not top.get("shards"):
        return None
    current = {ref.name: ref.fingerprint for ref in run.input_shards()}
    old: set[str] = set()
    for shard in top["shards"]:
        inputs = (run.store.read_json(fragment_rel("", shard)) or {}).get("inputs") or {}
        if not inputs or any(current.get(name) != fp for name, fp in inputs.items()):
            return None  # an input it was decided with changed or is gone
        old |= set(inputs)
    if old == set(current):
        return None  # nothing new: not a refresh (and the runner's skip-if-complete covers a re-run)
    listed = top.get("artifacts") or {}
    for rel in artifacts:
        path = run.out_dir / rel
        if rel not in listed or not path.is_file() or sha256_file(path) != listed[rel]["sha256"]:
            return None
    return Parent(old, top)
