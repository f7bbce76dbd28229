"""Validate frames with Great Expectations 1.x (ephemeral context) and build Data Docs.

The context lives in memory for one gate: a pandas data source per gate, one
dataframe asset + suite + validation definition per frame. Data Docs (HTML)
go to a filesystem site of their own per stage, because a site build removes
pages whose results are not in the (in-memory) stores of the building context;
their CDN assets are then pointed at vendored copies (pipelines.checks.data_docs).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from pipelines.checks.results import CheckResult

log = logging.getLogger(__name__)
SITE_NAME = "pipelines_gates"
PARTIAL_UNEXPECTED = 10  # failing values/rows reported per expectation


def import_gx():
    """Import GX quietly: usage analytics off (no network calls; must be set before the import) and
    its INFO chatter (hundreds of lines per import) kept out of the stage logs."""
    os.environ["GX_ANALYTICS_ENABLED"] = "False"
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx

    return gx


def make_context(docs_dir: Path | None):
    gx = import_gx()
    from great_expectations.data_context.types.base import (DataContextConfig, InMemoryStoreBackendDefaults,
                                                             ProgressBarsConfig)

    sites = {}
    if docs_dir is not None:
        sites[SITE_NAME] = {
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(Path(docs_dir).resolve())},
        }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites=sites,
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _exception_message(info) -> str | None:
    """GX reports an expectation that raised either flat or keyed by metric; find the message."""
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message"))
    return None


def _observed(result) -> object:
    error = _exception_message(result.exception_info)
    if error:
        return {"exception": error}
    r = result.result or {}
    if "observed_value" in r:
        return r["observed_value"]
    if "unexpected_count" in r:
        observed = {"element_count": r.get("element_count"), "unexpected_count": r.get("unexpected_count")}
        if r.get("unexpected_count"):
            observed["unexpected"] = r.get("partial_unexpected_index_list") or r.get("partial_unexpected_list")
        return observed
    return r or None


def to_check_result(batch: str, result) -> CheckResult:
    config = result.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "column") and v is not None}
    return CheckResult(batch=batch, type=config.type, column=config.kwargs.get("column"), kwargs=kwargs,
                       success=bool(result.success), observed=_observed(result))


def validate(stage: str, batches, docs_dir: Path | None = None) -> tuple[list[CheckResult], bool]:
    """Run each batch's expectations; return results in suite order and whether Data Docs were built."""
    gx = import_gx()
    context = make_context(docs_dir)
    source = context.data_sources.add_pandas(f"check_{stage}")
    results: list[CheckResult] = []
    for batch in batches:
        definition = source.add_dataframe_asset(batch.name).add_batch_definition_whole_dataframe(batch.name)
        suite = context.suites.add(gx.ExpectationSuite(name=f"check_{stage}.{batch.name}"))
        added = [suite.add_expectation(e) for e in batch.expectations]
        validation = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"check_{stage}.{batch.name}", data=definition, suite=suite))
        result_format: dict = {"result_format": "SUMMARY", "partial_unexpected_count": PARTIAL_UNEXPECTED}
        index_columns = [c for c in batch.index_columns if c in batch.frame.columns]
        if index_columns:
            result_format["unexpected_index_column_names"] = index_columns
        outcome = validation.run(batch_parameters={"dataframe": batch.frame}, result_format=result_format)
        # GX does not return results in suite order; restore it so the report is stable.
        order = {e.id: i for i, e in enumerate(added)}
        for r in sorted(outcome.results, key=lambda r: order.get(r.expectation_config.id, len(order))):
            results.append(to_check_result(batch.name, r))
    built = False
    if docs_dir is not None:
        try:
            context.build_data_docs(site_names=[SITE_NAME])
            from pipelines.checks.data_docs import make_offline

            make_offline(Path(docs_dir))  # vendored Bootstrap/jQuery/vega/...: the pages work with no network
            built = True
        except Exception as e:  # noqa: BLE001 - docs are a convenience, never a reason to fail a gate
            log.warning("check_%s: building GX Data Docs failed: %s", stage, e)
    return results, built
