"""corpus_refresh: raw crawl -> packed, gated corpus; ends by tagging the data version
and emitting the `corpus` Asset event that schedules `pretrain`.

Thin on purpose: tasks come from dvc.yaml (meta.dag: corpus_refresh); logic is in pipelines/.
"""
from __future__ import annotations

from datetime import datetime, timezone

from airflow.sdk.exceptions import AirflowSkipException
from airflow.sdk import DAG, Asset, Param, task

from pipelines.config import load_params, workspace
from pipelines.orchestration.dag_factory import default_args, sinks, sources, stage_tasks
from pipelines.orchestration.run_params import form_defaults, form_schema

PARAMS = load_params()
ORCH = PARAMS.get("orchestration") or {}
CORPUS = Asset(name="corpus", uri=ORCH.get("corpus_asset", "pipelines://corpus"))
FORM = form_schema(PARAMS, workspace())
FORM_DEFAULTS = form_defaults(FORM)  # "as in params.yaml" for the drop-downs, empty for the rest

with DAG(
    dag_id="corpus_refresh",
    schedule=ORCH.get("schedule"),
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(PARAMS),
    # The trigger form: each field is validated (JSON schema) on UI and REST triggers; apply_run_params
    # validates again and names the field in words.
    params={name: Param(FORM_DEFAULTS[name], **schema) for name, schema in FORM.items()},
    tags=["data", "dvc"],
    doc_md=__doc__,
) as dag:

    @task(retries=0)
    def apply_run_params(params=None, dag_run=None) -> dict:
        from pipelines.orchestration.run_params import apply_form, run_date

        scheduled, as_of = run_date(dag_run)
        return apply_form(workspace(), dict(params or {}), as_of=as_of, scheduled=scheduled)

    @task(outlets=[CORPUS])
    def record_version(outlet_events=None) -> dict:
        from pipelines.versions.record import record_data_version

        result = record_data_version(load_params())  # params.yaml as apply_run_params left it
        if not result["changed"]:  # skipped: no corpus Asset event, so pretrain does not run for nothing
            raise AirflowSkipException(f"data version {result['version']} is the one the workspace held: unchanged, "
                                       "no corpus event")
        outlet_events[CORPUS].extra = result
        return result

    stages = stage_tasks("corpus_refresh", params=PARAMS)
    start, end = apply_run_params(), record_version()
    for t in sources(stages):
        start >> t
    for t in sinks(stages):
        t >> end
