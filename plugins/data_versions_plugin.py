"""Airflow 3 plugin: the "Data versions" page (funnel, gates, mixture, token shares, curves
per data version). Thin: the page lives in pipelines.versions.page."""
from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from pipelines.versions.login import create_app_with_login
from pipelines.versions.page import LazyApp

URL_PREFIX = "/data-versions"


class DataVersionsPlugin(AirflowPlugin):
    name = "data_versions"
    # Logged out, a browser is sent to the login page (and back); API clients get 401.
    fastapi_apps = [{"app": LazyApp(create_app_with_login), "url_prefix": URL_PREFIX, "name": "Data versions"}]
    # A menu entry in the UI's Browse menu; the page opens inside the UI at /plugin/data-versions.
    external_views = [{"name": "Data versions", "href": URL_PREFIX + "/", "url_route": "data-versions",
                       "destination": "nav", "category": "browse"}]
