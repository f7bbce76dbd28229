"""The project's airflow CLI works from a fresh checkout without touching ~/airflow (newcomer issue, item 5)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_airflow_cli_lists_the_dags_with_the_project_home(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO / name, root / name)
    for name in ("dags", "plugins", "samples"):
        (root / name).symlink_to(REPO / name)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(HOME=str(home), PIPELINES_WORKSPACE=str(root))
    cli = [sys.executable, "-m", "pipelines.local_airflow.cli"]
    done = subprocess.run([*cli, "dags", "list", "-o", "plain"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {"corpus_refresh", "pretrain", "mixture_search"} <= set(done.stdout.split())
    assert (root / ".airflow" / "airflow.db").is_file() and not (home / "airflow").exists()
    exports = subprocess.run([*cli, "--env"], cwd=root, env=env, capture_output=True, text=True, check=True).stdout
    assert f"export AIRFLOW_HOME={root / '.airflow'}" in exports.splitlines()
