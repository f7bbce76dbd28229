"""Logged out, a browser asking for the Data versions page is sent to Airflow's login page (and back
afterwards); API clients (no text/html in Accept) keep the 401 JSON answer."""
from __future__ import annotations


def login_url(next_url: str) -> str:
    """Airflow's login page for the configured auth manager (simple: /auth/login, FAB: its own), coming back to
    ``next_url``."""
    from airflow.api_fastapi.app import create_auth_manager

    return create_auth_manager().get_url_login(next_url=next_url)  # the api-server's singleton, built once


def wants_html(request) -> bool:
    return request.method in ("GET", "HEAD") and "text/html" in request.headers.get("accept", "")


def with_login_redirect(app, login=login_url):
    """``app`` (a FastAPI app whose routes need a login) answering a browser's 401 with a redirect to ``login``."""
    from fastapi.exception_handlers import http_exception_handler
    from fastapi.responses import RedirectResponse
    from starlette.exceptions import HTTPException

    async def on_http_error(request, exc: HTTPException):
        if exc.status_code == 401 and wants_html(request):
            here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(login(here), status_code=307)
        return await http_exception_handler(request, exc)

    app.add_exception_handler(HTTPException, on_http_error)
    return app


def create_app_with_login():
    """The plugin's app (pipelines.versions.page.create_app) with the browser redirect."""
    from pipelines.versions.page import create_app

    return with_login_redirect(create_app())
