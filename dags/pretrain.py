"""pretrain: phase-1 training -> anneal -> evaluation, on each new corpus version.

Scheduled on the `corpus` Asset that corpus_refresh emits; tasks come from dvc.yaml
(meta.dag: pretrain). Runs locally by default. A data version that the last training already
trained (and whose pretrain stages DVC finds up to date) is skipped, and the log says which.
"""
from __future__ import annotations

from datetime import datetime, timezone

from airflow.sdk import DAG, Asset, task

from pipelines.config import load_params, workspace
from pipelines.orchestration.dag_factory import default_args, sources, stage_tasks

PARAMS = load_params()
ORCH = PARAMS.get("orchestration") or {}
CORPUS = Asset(name="corpus", uri=ORCH.get("corpus_asset", "pipelines://corpus"))

with DAG(
    dag_id="pretrain",
    schedule=[CORPUS],
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(PARAMS),
    tags=["train", "dvc"],
    doc_md=__doc__,
) as dag:

    @task
    def resolve_data_version(triggering_asset_events=None) -> dict:
        """The data version to train on; skips the run (its training tasks follow the skip) when the
        last training already trained this version and every pretrain stage is up to date."""
        import logging

        from airflow.sdk.exceptions import AirflowSkipException

        from pipelines.versions.record import training_data_version

        result = training_data_version(workspace(), triggering_asset_events, skip_trained=True)
        if result.get("already_trained"):
            logging.getLogger("pipelines.pretrain").info("skipping: %s", result["already_trained"])
            raise AirflowSkipException(result["already_trained"])
        return result

    stages = stage_tasks("pretrain", params=PARAMS)
    version = resolve_data_version()
    for t in sources(stages):
        version >> t
