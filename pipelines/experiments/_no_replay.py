"""The phase-2 pack without replay: the product's mix and pack stages re-run with replay_fraction 0.

Built in a scratch workspace that links the workspace's ``data/select`` (the mix input) and
``data/mixture``, and reuses the workspace's tokenizer (``pack.tokenizer_dir``), so token ids,
the held-out split and the phase-1 blend are the product's own; only the phase-2 blend loses its
replay slice.
"""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

import yaml

from pipelines import stages
from pipelines.experiments._branches import in_workspace


def build_no_replay_pack(params: dict, workspace: Path, root: Path) -> Path:
    """``root``/data/pack/phase2 built from ``workspace``'s selected records with no replay; reused when
    its params are unchanged."""
    p = copy.deepcopy(params)
    p["mix"]["phase2"]["replay_fraction"] = 0.0
    p["pack"]["tokenizer_dir"] = str((workspace / stages.output("pack") / "tokenizer").resolve())
    out = root / stages.output("pack") / "phase2"
    stamp = root / "params.yaml"
    if out.exists() and stamp.exists() and yaml.safe_load(stamp.read_text()) == p:
        return out
    if root.exists():
        shutil.rmtree(root)
    (root / "data").mkdir(parents=True)
    for name in ("select", "mixture_search"):
        src = workspace / stages.output(name)
        if src.exists():
            (root / stages.output(name)).symlink_to(src.resolve(), target_is_directory=True)
    with in_workspace(root):
        stages.run("mix", p)
        stages.run("pack", p)
    stamp.write_text(yaml.safe_dump(p, sort_keys=False))  # written last: a finished build
    return out
