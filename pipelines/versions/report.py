"""``reports/index.html``: the one page a person opens after a build, offline.

The same content as the Airflow "Data versions" page (pipelines.versions.page): per data version, its
lineage, the records funnel and tokens per phase, drops by reason, every gate with a link to its Data
Docs page under ``reports/gx/``, the mixture and token shares, the training loss and learning rate and
bits per byte per source; for the workspace's version also PNG figures (pipelines.versions.figures).
One file, charts as inline SVG and embedded PNG, styles inline, no script and nothing fetched from the
network.
"""
from __future__ import annotations

from pathlib import Path

from pipelines.core.atomic import write_bytes_atomic
from pipelines.versions.figures import figures_html
from pipelines.versions.page import render
from pipelines.versions.read import collect

REPORT = "reports/index.html"


def write_report(root: Path) -> Path:
    path = Path(root) / REPORT
    versions = collect(Path(root))
    figures = {v["version"] or "": figures_html(root, v) for v in versions if v["current"]}
    # Links relative to reports/: the Data Docs sites are reports/gx/<stage>/...
    write_bytes_atomic(path, render(versions, base=".", figures=figures).encode("utf-8"))
    path.chmod(0o644)  # a page to open and share (the atomic writer's temp file is private)
    return path
