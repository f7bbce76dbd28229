"""`make venv` resolves the locked CPU torch on a machine without a local wheel folder (newcomer issue, item 6)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipelines.install import index_args

REPO = Path(__file__).resolve().parents[1]
LOCK = (REPO / "requirements.lock").read_text()


def test_without_a_wheel_folder_the_pytorch_index_of_the_locked_build_is_added():
    assert "torch==" in LOCK and "+cpu" in LOCK
    assert index_args(LOCK, {}) == ["--extra-index-url", "https://download.pytorch.org/whl/cpu"]
    assert index_args("torch==2.13.0+cu128\n", {}) == ["--extra-index-url", "https://download.pytorch.org/whl/cu128"]
    assert index_args("torch==2.13.0\nnumpy==2.0\n", {}) == []  # a plain torch comes from the default index


def test_a_wheel_folder_or_an_override_wins():
    assert index_args(LOCK, {"PIP_FIND_LINKS": "/opt/wheels /more"}) == ["--find-links", "/opt/wheels",
                                                                         "--find-links", "/more"]
    assert index_args(LOCK, {"PIPELINES_TORCH_INDEX": "https://mirror.example/whl"}) == [
        "--extra-index-url", "https://mirror.example/whl"]
    assert index_args(LOCK, {"PIPELINES_TORCH_INDEX": "none"}) == []


def test_it_runs_with_the_bare_interpreter_before_anything_is_installed():
    out = subprocess.run([sys.executable, "-S", "-I", str(REPO / "pipelines" / "install.py"),
                          str(REPO / "requirements.lock")], capture_output=True, text=True, check=True, env={})
    assert out.stdout.split() == ["--extra-index-url", "https://download.pytorch.org/whl/cpu"]
