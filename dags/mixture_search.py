"""mixture_search: the CLIMB-style search with one mapped task per proxy model.

Thin on purpose: the functions are pipelines.mixture_search.search's, the same ones
`dvc repro` runs with a process pool. Rounds are unrolled from params.yaml
(mixture.rounds); each round proposes candidates, maps run_proxy over them
(dynamic task mapping) and hands all results so far to the next round.
"""
from __future__ import annotations

from datetime import datetime, timezone

from airflow.sdk import DAG, task

from pipelines.config import load_params
from pipelines.runtime import quiet_threads


def _params() -> dict:
    quiet_threads()
    return load_params()


@task
def prepare() -> dict:
    from pipelines.mixture_search.search import prepare as _prepare

    return {"domains": _prepare(_params())["domains"]}


@task
def propose(round_index: int, _prepared: dict, results: list[dict] | None = None) -> list[dict]:
    from pipelines.mixture_search.search import propose as _propose

    return _propose(_params(), round_index, list(results or []))


@task
def run_proxy(candidate: dict) -> dict:
    from pipelines.mixture_search.search import run_proxy as _run

    return _run(_params(), candidate)


@task
def gather(previous: list[dict] | None, new: list[dict]) -> list[dict]:
    return list(previous or []) + list(new)


@task
def finalize(results: list[dict]) -> dict:
    from pipelines.mixture_search.search import finalize as _finalize

    doc = _finalize(_params(), list(results))
    return {"best": doc["best_candidate"], "phase1_weights": doc["phase1_weights"]}


ROUNDS = int(((load_params().get("mixture") or {}).get("rounds")) or 1)

with DAG(
    dag_id="mixture_search",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["data", "mixture"],
    doc_md=__doc__,
) as dag:
    prepared = prepare()
    results = None
    for r in range(ROUNDS):
        candidates = propose.override(task_id=f"propose_r{r}")(r, prepared, results)
        measured = run_proxy.override(task_id=f"proxy_r{r}").expand(candidate=candidates)
        results = gather.override(task_id=f"gather_r{r}")(results, measured)
    finalize(results)
