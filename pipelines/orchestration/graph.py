"""The stage graph read from dvc.yaml (cheap: YAML only, safe at DAG-parse time)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass(frozen=True)
class StageSpec:
    name: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    meta: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def dag(self) -> str | None:
        return self.meta.get("dag")

    @property
    def group(self) -> str:
        return self.meta.get("group", self.name)

    @property
    def is_gate(self) -> bool:
        return bool(self.meta.get("gate"))


def _paths(entries) -> tuple[str, ...]:
    out = []
    for e in entries or []:
        out.append(next(iter(e)) if isinstance(e, dict) else str(e))
    return tuple(p.rstrip("/") for p in out)


def load_stages(dvc_yaml: str | Path) -> dict[str, StageSpec]:
    doc = yaml.safe_load(Path(dvc_yaml).read_text()) or {}
    stages = {}
    for name, spec in (doc.get("stages") or {}).items():
        outs = _paths(spec.get("outs")) + _paths(spec.get("metrics")) + _paths(spec.get("plots"))
        stages[name] = StageSpec(name, _paths(spec.get("deps")), outs, dict(spec.get("meta") or {}))
    return stages


def _overlaps(dep: str, out: str) -> bool:
    return dep == out or dep.startswith(out + "/") or out.startswith(dep + "/")


def upstream(stages: dict[str, StageSpec]) -> dict[str, set[str]]:
    """stage -> the stages producing something it depends on (the edges DVC itself uses)."""
    edges: dict[str, set[str]] = {n: set() for n in stages}
    for name, s in stages.items():
        for other, o in stages.items():
            if other != name and any(_overlaps(d, out) for d in s.deps for out in o.outs):
                edges[name].add(other)
    return edges


def topological(stages: dict[str, StageSpec]) -> list[str]:
    edges, order, done = upstream(stages), [], set()

    def visit(n, stack=()):
        if n in done:
            return
        if n in stack:
            raise ValueError(f"dvc.yaml has a cycle through {n}")
        for u in sorted(edges[n]):
            visit(u, stack + (n,))
        done.add(n)
        order.append(n)

    for n in stages:
        visit(n)
    return order
