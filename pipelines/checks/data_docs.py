"""GX Data Docs that work with no network, and one index for the six stage sites.

GX 1.x pages load Bootstrap, jQuery, popper, bootstrap-table, bootstrap-datepicker, Font Awesome and
vega from CDNs (and its logo from S3): offline they render unstyled and their scripts stop at
"$ is not defined". The same files (the versions GX names, from their npm packages; see
``data_docs_assets/SOURCES.md``) ship in ``data_docs_assets/``: each build copies them to
``reports/gx/_static/`` (shared by the stage sites) and rewrites the pages' CDN references to relative
paths, so a page opens from disk, through the Data versions page or from any static file server.
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
from pathlib import Path

ASSETS = Path(__file__).with_name("data_docs_assets")
STATIC = "_static"  # under reports/gx/
INDEX = "index.html"
GX_IMAGES = "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/"  # GX's logo; the site has a copy

# Each URL GX 1.x's templates name (great_expectations/render/view/templates) -> the vendored file.
CDN = {
    "https://cdn.jsdelivr.net/npm/vega@5": "js/vega-5.33.1.min.js",
    "https://cdn.jsdelivr.net/npm/vega-lite@5": "js/vega-lite-5.23.0.min.js",
    "https://cdn.jsdelivr.net/npm/vega-embed@6": "js/vega-embed-6.29.0.min.js",
    "https://code.jquery.com/jquery-3.7.1.min.js": "js/jquery-3.7.1.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": "js/popper-1.12.9.min.js",
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": "js/bootstrap-4.3.1.min.js",
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": "css/bootstrap-4.3.1.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": "js/bootstrap-table-1.19.1.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": "css/bootstrap-table-1.19.1.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js":
        "js/bootstrap-table-filter-control-1.19.1.min.js",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css":
        "css/bootstrap-table-filter-control-1.19.1.min.css",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css":
        "css/bootstrap-table-filter-control-1.19.1.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js":
        "js/bootstrap-datepicker-1.9.0.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css":
        "css/bootstrap-datepicker-1.9.0.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": "css/fontawesome-6.6.0.all.min.css",
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css":
        "css/bootstrap-prefers-dark-1.1.0.min.css",
}
LOADS = re.compile(r"<(?:script|link|img)\b[^>]*>", re.IGNORECASE)  # the tags that load something
REMOTE = re.compile(r"""\b(src|href)=(["'])(https?://[^"']*)\2""", re.IGNORECASE)
SITE_STATIC = re.compile(r"""\b(src|href)=(["'])((?:\.\./)+static/[^"'?#]+)\2""", re.IGNORECASE)
CHECKSUM = re.compile(r"""\s+(?:integrity|crossorigin)=(["'])[^"']*\1""", re.IGNORECASE)


class RemoteAsset(RuntimeError):
    """A Data Docs page loads something from the network that has no vendored copy."""


def vendor_assets(gx_root: Path) -> Path:
    """``gx_root``/_static/ holding the vendored files (copied when missing or different)."""
    static = Path(gx_root) / STATIC
    for src in ASSETS.rglob("*"):
        if src.is_file():
            dst = static / src.relative_to(ASSETS)
            if not dst.is_file() or dst.stat().st_size != src.stat().st_size:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
    return static


def local_copy(url: str, site: Path, static: Path) -> Path | None:
    if url in CDN:
        return static / CDN[url]
    if url.startswith(GX_IMAGES):
        image = site / "static" / "images" / url[len(GX_IMAGES):].split("?", 1)[0]
        return image if image.is_file() else None
    return None


def offline_page(text: str, page: Path, site: Path, static: Path) -> str:
    """``text`` (an HTML page of ``site``) with every script, stylesheet and image it loads from the network
    pointing at the local copy, relative to ``page``; RemoteAsset names any without one."""
    def tag(m: re.Match) -> str:
        def attr(a: re.Match) -> str:
            local = local_copy(html.unescape(a.group(3)), site, static)
            if local is None:
                raise RemoteAsset(f"{page}: {a.group(3)} has no vendored copy (pipelines/checks/data_docs.py CDN)")
            return f'{a.group(1)}="{Path(os.path.relpath(local, page.parent)).as_posix()}"'

        def site_static(a: re.Match) -> str:  # GX's favicon link on validation pages climbs one level short
            if (page.parent / a.group(3)).is_file():
                return a.group(0)
            own = site / "static" / a.group(3).rsplit("static/", 1)[1]
            return f'{a.group(1)}="{Path(os.path.relpath(own, page.parent)).as_posix()}"' if own.is_file() else a.group(0)

        rewritten = REMOTE.sub(attr, m.group(0))
        # A file:// page cannot satisfy crossorigin (CORS) and the CDN's integrity hash is no longer needed.
        rewritten = CHECKSUM.sub("", rewritten) if rewritten != m.group(0) else rewritten
        return SITE_STATIC.sub(site_static, rewritten)

    return LOADS.sub(tag, text)


def make_offline(site: Path) -> int:
    """Rewrite every page of the Data Docs site ``site`` (reports/gx/<stage>/) to load the vendored assets
    from ``site``/../_static/; returns the number of pages changed."""
    site = Path(site)
    static = vendor_assets(site.parent)
    changed = 0
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        new = offline_page(text, page, site, static)
        if new != text:
            page.write_text(new, encoding="utf-8")
            changed += 1
    return changed


def write_index(gx_root: Path, stages: list[str], reports: Path | None = None) -> Path:
    """``gx_root``/index.html: one page linking each stage's Data Docs site, with its gate's outcome from
    ``reports``/<stage>.json (reports/checks/) when there is one. Plain HTML, no script, nothing remote."""
    gx_root = Path(gx_root)
    rows = []
    for stage in stages:
        site = gx_root / stage / INDEX
        report = {}
        if reports is not None and (reports / f"{stage}.json").is_file():
            try:
                report = json.loads((reports / f"{stage}.json").read_text())
            except ValueError:
                report = {}
        outcome = ("" if not report else "passed" if report.get("success") else f"FAILED ({report.get('failed')} of "
                   f"{report.get('evaluated')} checks)")
        cls = "" if not report else "ok" if report.get("success") else "bad"
        built = ""
        if site.is_file():
            import datetime as dt

            built = dt.datetime.fromtimestamp(site.stat().st_mtime, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        link = f'<a href="{stage}/{INDEX}">check_{stage}</a>' if site.is_file() else f"check_{stage} <i>(not built)</i>"
        rows.append(f'<tr><td>{link}</td><td class="{cls}">{html.escape(outcome)}</td><td>{built}</td></tr>')
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Great Expectations Data Docs: gates</title>
<style>
 body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
 table {{ border-collapse: collapse; }} td, th {{ padding: .35rem .9rem; border-bottom: 1px solid #ddd; text-align: left; }}
 .ok {{ color: #1a7f37; }} .bad {{ color: #b42318; font-weight: 600; }}
</style></head>
<body><h1>Data Docs of the gates</h1>
<p>One Great Expectations site per stage gate (each built by its gate; they work offline).</p>
<table><thead><tr><th>gate</th><th>last result</th><th>built</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table></body></html>
"""
    from pipelines.core.atomic import write_bytes_atomic

    gx_root.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(gx_root / INDEX, page.encode())
    return gx_root / INDEX
