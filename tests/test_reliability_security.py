"""Trust no input, leak nothing: gaps test_security.py leaves open.

- A stage that prints a credential (a buggy or hostile command, a debug log) does not put it in the
  Airflow task output: the real DvcStageOperator runs a real `dvc repro` of such a stage, and its log
  and its failure message show ``***`` instead (pipelines/orchestration/dvc_runner.py redacts the
  values of credential environment variables).
- No deserialiser that can run code reads our inputs: no ``np.load(allow_pickle=True)``,
  ``pandas.read_pickle``, ``yaml.load``/``unsafe_load``, ``marshal``/``shelve``, builtin ``eval``/``exec``
  (``torch.load`` and ``pickle`` are test_security.py's).
"""
from __future__ import annotations

import ast
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.project import REPO

SECRET = "Zx9-not-a-real-secret-7Qw2-LEAKCHECK"
LEAKY = f"""stages:
  leaky_ok:
    cmd: python -c "import os; print('connecting with', os.environ['AWS_SECRET_ACCESS_KEY'])"
  leaky_fail:
    cmd: python -c "import os, sys; sys.exit('denied for ' + os.environ['AWS_SECRET_ACCESS_KEY'])"
"""


@pytest.fixture
def leaky_project(tmp_path, monkeypatch):
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text(LEAKY)
    monkeypatch.setenv("PIPELINES_WORKSPACE", str(tmp_path))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    return tmp_path


class Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_a_stage_printing_a_credential_does_not_leak_it_into_the_task_output(leaky_project):
    from pipelines.orchestration.dag_factory import DvcStageOperator

    task_log = Lines()  # what the task logs (Airflow's logging config may not propagate to caplog)
    logger = logging.getLogger("pipelines.orchestration.dvc_runner")
    logger.addHandler(task_log)
    logger.setLevel(logging.INFO)
    try:
        DvcStageOperator(task_id="leaky_ok", stage="leaky_ok").execute({})
        with pytest.raises(RuntimeError) as failed:
            DvcStageOperator(task_id="leaky_fail", stage="leaky_fail").execute({})
    finally:
        logger.removeHandler(task_log)
    text = "\n".join(task_log.lines)
    assert "connecting with ***" in text  # the line was logged, the value was not
    assert "denied for ***" in str(failed.value)  # the failure message keeps its meaning
    assert SECRET not in text and SECRET not in str(failed.value)


def test_credentials_are_recognised_by_variable_name():
    from pipelines.orchestration.dvc_runner import redact, secret_values

    env = {"AWS_SECRET_ACCESS_KEY": "a" * 40, "AWS_SESSION_TOKEN": "t" * 20, "PGPASSWORD": "hunter2hunter2",
           "HF_TOKEN": "hf_" + "x" * 10, "PATH": "/usr/bin:/bin", "TOKENIZERS_PARALLELISM": "false-ish-long",
           "AWS_ACCESS_KEY_ID": "not-secret-id"}
    found = secret_values(env)
    assert set(found) == {env["AWS_SECRET_ACCESS_KEY"], env["AWS_SESSION_TOKEN"], env["PGPASSWORD"], env["HF_TOKEN"]}
    assert redact(f"PATH={env['PATH']} key={'a' * 40}", found) == "PATH=/usr/bin:/bin key=***"


UNSAFE_CALLS = {"pandas.read_pickle", "pd.read_pickle", "yaml.unsafe_load", "yaml.full_load", "marshal.load",
                "marshal.loads", "shelve.open", "eval", "exec"}


def _unsafe_loads(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        kw = {k.arg: k.value for k in node.keywords}
        if name in UNSAFE_CALLS:
            found.append((node.lineno, name))
        elif name == "yaml.load" and "SafeLoader" not in ast.unparse(kw.get("Loader", ast.Constant(None))):
            found.append((node.lineno, "yaml.load without SafeLoader"))
        elif name in ("np.load", "numpy.load") and "allow_pickle" in kw and not (
                isinstance(kw["allow_pickle"], ast.Constant) and kw["allow_pickle"].value is False):
            found.append((node.lineno, "np.load(allow_pickle=...)"))
    return found


def test_no_code_running_deserialiser_reads_our_inputs():
    offenders = []
    for d in ("pipelines", "dags", "plugins"):
        for path in sorted((REPO / d).rglob("*.py")):
            offenders += [f"{path.relative_to(REPO)}:{line}: {what}" for line, what in _unsafe_loads(ast.parse(path.read_text()))]
    assert not offenders, "\n".join(offenders)
    # The scanner finds what it looks for.
    bad = "import numpy as np, yaml\nnp.load(p, allow_pickle=True)\nyaml.load(s)\neval(x)\nyaml.load(s, Loader=yaml.SafeLoader)\n"
    assert [w for _, w in _unsafe_loads(ast.parse(bad))] == ["np.load(allow_pickle=...)", "yaml.load without SafeLoader", "eval"]
