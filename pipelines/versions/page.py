"""The "Data versions" page of the Airflow plugin: a FastAPI app rendering
pipelines.versions.read as HTML with inline SVG charts, plus the GX Data
Docs served read-only from reports/gx. Reads files only.
"""
from __future__ import annotations

import json
from html import escape
from pathlib import Path

from pipelines import stages
from pipelines.versions.read import collect

COLORS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
          "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#17becf", "#bcbd22", "#7f7f7f", "#aec7e8", "#ffbb78"]


def source_colors(versions: list[dict]) -> dict[str, str]:
    """One colour per source for the whole page (every version's charts use the same one), by sorted name."""
    names = set()
    for v in versions:
        names |= {s for p in (v.get("mixture") or {}).values() for s in p}
        names |= {s for p in (v.get("token_shares") or {}).values() for s in p}
    return {s: COLORS[i % len(COLORS)] for i, s in enumerate(sorted(names))}


def text_on(color: str) -> str:
    """Black or white, whichever reads on ``color`` (relative luminance, WCAG)."""
    r, g, b = (int(color[i:i + 2], 16) / 255 for i in (1, 3, 5))
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    return "#000" if 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2] > 0.179 else "#fff"


def ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round values spanning [lo, hi] (1, 2 or 5 times a power of ten apart)."""
    import math

    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def bar_chart(rows: list[tuple[str, float]], unit: str, title: str) -> str:
    """Horizontal bars, one per (label, value)."""
    if not rows:
        return ""
    label_w, bar_h = max(120, 7 * max(len(label) for label, _ in rows) + 8), 22
    w = label_w + 440
    top = max(v for _, v in rows) or 1
    h = bar_h * len(rows) + 24
    parts = [f'<svg class="chart bar" role="img" aria-label="{escape(title)}" width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg">',
             f"<title>{escape(title)}</title>"]
    for i, (label, value) in enumerate(rows):
        y = 4 + i * bar_h
        bw = max(1.0, (w - label_w - 110) * value / top)
        parts.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end" font-size="12">{escape(label)}</text>'
                     f'<rect x="{label_w}" y="{y}" width="{bw:.1f}" height="{bar_h - 6}" fill="{COLORS[0]}"/>'
                     f'<text x="{label_w + bw + 6:.1f}" y="{y + 15}" font-size="12">{_fmt(value)} {escape(unit)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def share_chart(shares: dict[str, dict[str, float]], title: str, color: dict[str, str] | None = None) -> str:
    """One stacked 100% bar per phase, a segment per source, and a legend of the sources present.
    ``color``: the page's source -> colour, so a source looks the same under every version."""
    if not shares:
        return ""
    sources = sorted({s for p in shares.values() for s, v in p.items() if v > 0})
    color = {**{s: COLORS[i % len(COLORS)] for i, s in enumerate(sources)}, **(color or {})}
    w, label_w, bar_h = 560, 80, 26
    h = bar_h * len(shares) + 18 * ((len(sources) + 3) // 4) + 14
    parts = [f'<svg class="chart share" role="img" aria-label="{escape(title)}" width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg">',
             f"<title>{escape(title)}</title>"]
    for i, (phase, p) in enumerate(shares.items()):
        y, x = 4 + i * bar_h, float(label_w)
        parts.append(f'<text x="{label_w - 6}" y="{y + 16}" text-anchor="end" font-size="12">{escape(phase)}</text>')
        total = sum(p.values()) or 1
        for s in sources:
            seg = (w - label_w - 10) * p.get(s, 0.0) / total
            if seg > 0:
                parts.append(f'<rect x="{x:.1f}" y="{y}" width="{seg:.1f}" height="{bar_h - 6}" fill="{color[s]}">'
                             f"<title>{escape(phase)} {escape(s)}: {p[s]:.1%}</title></rect>")
                if seg > 34:
                    parts.append(f'<text x="{x + 3:.1f}" y="{y + 15}" font-size="10" fill="{text_on(color[s])}">'
                                 f'{p[s] / total:.0%}</text>')
                x += seg
    y0 = 4 + len(shares) * bar_h + 6
    for i, s in enumerate(sources):
        x, y = label_w + (i % 4) * 120, y0 + (i // 4) * 18
        parts.append(f'<rect x="{x}" y="{y}" width="10" height="10" fill="{color[s]}"/>'
                     f'<text x="{x + 14}" y="{y + 9}" font-size="11">{escape(s)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def line_chart(series: dict[str, list[tuple[float, float]]], title: str, y_label: str) -> str:
    """Polylines over a shared step axis (the anneal continues phase 1's steps), with ticks on both axes."""
    pts = [p for s in series.values() for p in s]
    if not pts:
        return ""
    w, h, m = 560, 240, 52
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    sx = lambda x: m + (w - 2 * m) * ((x - x0) / ((x1 - x0) or 1))  # noqa: E731
    sy = lambda y: h - m + (2 * m - h) * ((y - y0) / ((y1 - y0) or 1))  # noqa: E731
    parts = [f'<svg class="chart line" role="img" aria-label="{escape(title)}" width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg">',
             f"<title>{escape(title)}</title>",
             f'<line x1="{m}" y1="{h - m}" x2="{w - m}" y2="{h - m}" stroke="#888"/><line x1="{m}" y1="{m}" x2="{m}" y2="{h - m}" stroke="#888"/>',
             f'<text x="{m - 44}" y="{m - 14}" font-size="11">{escape(y_label)}</text>',
             f'<text x="{w - m}" y="{h - m + 30}" font-size="11" text-anchor="end">step</text>']
    for t in ticks(y0, y1):
        parts.append(f'<line x1="{m - 4}" y1="{sy(t):.1f}" x2="{m}" y2="{sy(t):.1f}" stroke="#888"/>'
                     f'<text class="ytick" x="{m - 6}" y="{sy(t) + 4:.1f}" font-size="10" text-anchor="end">{t:.3g}</text>')
    for t in ticks(x0, x1):
        parts.append(f'<line x1="{sx(t):.1f}" y1="{h - m}" x2="{sx(t):.1f}" y2="{h - m + 4}" stroke="#888"/>'
                     f'<text class="xtick" x="{sx(t):.1f}" y="{h - m + 16}" font-size="10" text-anchor="middle">{_fmt(t)}</text>')
    for i, (name, s) in enumerate(series.items()):
        line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s)
        parts.append(f'<polyline fill="none" stroke="{COLORS[i % len(COLORS)]}" stroke-width="1.5" points="{line}">'
                     f"<title>{escape(name)}</title></polyline>"
                     f'<text x="{w - m}" y="{m + 14 * i}" font-size="11" text-anchor="end" fill="{COLORS[i % len(COLORS)]}">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _gates_table(gates: list[dict], base: str, current: bool = True) -> str:
    if not gates:
        return "<p class='muted'>No gate reports for this version (its tag holds none).</p>"
    rows = []
    for g in gates:
        status = "pass" if g["success"] else "FAIL"
        failed = "; ".join(f"{escape(str(c['type']))}{'(' + escape(str(c['column'])) + ')' if c.get('column') else ''}: "
                           f"observed {escape(json.dumps(c.get('observed'), default=str)[:200])}" for c in g["failed"])
        docs = (f'<a href="{base}/gx/{escape(g["data_docs"].removeprefix("reports/gx/"))}" target="_blank">Data Docs</a>'
                if g["data_docs"] else "" if current else "<span class='muted'>current build only</span>")
        rows.append(f"<tr class='gate {status.lower()}'><td>check_{escape(g['stage'])}</td><td>{status}</td>"
                    f"<td>{g.get('evaluated') or ''}</td><td>{failed}</td><td>{docs}</td></tr>")
    index = (f"<p><a href='{base}/gx/index.html' target='_blank'>All Data Docs</a></p>"
             if current and any(g["data_docs"] for g in gates) else "")
    return (index + "<table class='gates'><tr><th>gate</th><th>result</th><th>expectations</th><th>failed (observed)</th>"
            "<th>GX</th></tr>" + "".join(rows) + "</table>")


def _lineage(lineage: dict | None) -> str:
    """Parent link, crawls held, what changed against the parent, and the cross-source duplicate rate."""
    if not lineage:
        return ""
    parent = lineage.get("parent")
    parts = ["<p>grew from " + (f"<a href='#v-{escape(parent)}'><code>{escape(parent)}</code></a>" if parent
                                  else "nothing (the first version)")
             + " &middot; crawls: " + (escape(", ".join(lineage.get("crawls") or [])) or "none")
             + " &middot; sources: " + escape(", ".join(lineage.get("sources") or [])) + "</p>"]
    cross = lineage.get("cross_source_duplicates") or {}
    if cross.get("records") and cross.get("kept"):
        parts.append(f"<p class='muted'>{cross['records']} records ({100 * cross['share']:.2f}% of dedup's input) are "
                     f"exact copies of a record from another source, kept (dedup scope snapshot)</p>")
    elif cross.get("records"):
        parts.append(f"<p class='muted'>dedup dropped {cross['records']} records as copies of a record from another "
                     f"source ({100 * cross['share']:.2f}% of its input)</p>")
    rows = []
    for stage, d in (lineage.get("deltas") or {}).items():
        records = ", ".join(f"{escape(s)} {n:+d}" for s, n in d.get("records_out", {}).items())
        drops = ", ".join(f"{escape(r)} {n:+d}" for r, n in d.get("drops", {}).items())
        rows.append(f"<tr><td>{escape(stage)}</td><td>{records or '-'}</td><td>{drops or '-'}</td></tr>")
    if rows and parent:
        parts.append("<h3>Changes against the parent</h3><table class='gates'><tr><th>stage</th>"
                     "<th>records out, by source</th><th>drops, by reason</th></tr>" + "".join(rows) + "</table>")
    return "".join(parts)


def drops_by_reason(lineage: dict | None) -> list[tuple[str, str, int, dict]]:
    """[(stage, reason, records, {source: records})] from the version's lineage, in pipeline order."""
    out = []
    recorded = (lineage or {}).get("stages") or {}
    for stage in sorted(recorded, key=stages.order_key):
        st = recorded[stage]
        for reason, by_source in sorted((st.get("drops") or {}).items()):
            n = sum(by_source.values()) if isinstance(by_source, dict) else int(by_source or 0)
            if n:
                out.append((stage, reason, n, by_source if isinstance(by_source, dict) else {}))
    return out


def _drops(lineage: dict | None, label: str) -> str:
    rows = drops_by_reason(lineage)
    if not rows:
        return ""
    table = "".join(f"<tr><td>{escape(stage)}</td><td>{escape(reason)}</td><td>{n:,}</td><td>"
                    + escape(", ".join(f"{s} {c:,}" for s, c in sorted(by.items(), key=lambda x: -x[1])[:6])) + "</td></tr>"
                    for stage, reason, n, by in rows)
    return ("<h3>Drops by reason</h3>" + bar_chart([(f"{stage}: {reason}", n) for stage, reason, n, _ in rows], "records",
                                                   f"drops by reason, {label}")
            + "<table class='gates drops'><tr><th>stage</th><th>reason</th><th>records</th><th>most from</th></tr>"
            + table + "</table>")


def render(versions: list[dict], base: str = ".", figures: dict[str, str] | None = None) -> str:
    """The page; ``figures``: version -> extra HTML shown under it (the offline report's PNG figures)."""
    body = []
    colors = source_colors(versions)
    if not versions:
        body.append("<p>No data version yet: run <code>corpus_refresh</code> (or <code>dvc repro</code>).</p>")
    for v in versions:
        label = v["version"] or "(untagged build)"
        head = f"<h2 id='v-{escape(label)}'>Data version <code>{escape(label)}</code>"
        head += " <span class='badge'>current workspace</span>" if v["current"] else ""
        head += "</h2>"
        meta = f"<p class='muted'>tag {escape(v.get('tag') or '-')} &middot; commit {escape((v.get('commit') or '-')[:12])} &middot; {escape(v.get('date') or '')}</p>"
        f = v["funnel"]
        sections = [head, meta, _lineage(v.get("lineage")), (figures or {}).get(v["version"] or "", ""),
                    "<h3>Funnel: records per stage</h3>",
                    bar_chart([(r["stage"], r["records"]) for r in f["records"]], "records", f"records per stage, {label}") or
                    "<p class='muted'>No stage manifests found (not in the workspace or the DVC cache).</p>"]
        if f["tokens"]:
            sections += ["<h3>Tokens per packed phase</h3>",
                         bar_chart([(t["phase"], t["tokens"]) for t in f["tokens"]], "tokens", f"tokens per phase, {label}")]
        sections += [_drops(v.get("lineage"), label), "<h3>Gates</h3>", _gates_table(v["gates"], base, v["current"])]
        mix = {p: {s: e["share"] for s, e in srcs.items()} for p, srcs in v["mixture"].items()}
        if mix:
            sections += ["<h3>Mixture weights (share of characters per source)</h3>", share_chart(mix, f"mixture {label}", colors)]
        if v["token_shares"]:
            sections += ["<h3>Token shares per phase</h3>", share_chart(v["token_shares"], f"token shares {label}", colors)]
        elif f["tokens"]:
            total = sum(t["tokens"] for t in f["tokens"]) or 1
            sections += ["<h3>Token shares per phase</h3>",
                         share_chart({"all": {t["phase"]: t["tokens"] / total for t in f["tokens"]}}, f"token shares {label}")]
        c = v["curves"]
        if c["loss"]:
            sections += ["<h3>Training loss</h3>", line_chart(c["loss"], f"loss {label}", "loss")]
            if c.get("lr"):
                sections += ["<h3>Learning rate</h3>", line_chart(c["lr"], f"learning rate {label}", "LR")]
        elif v["current"] and v.get("trained_on"):
            sections.append(f"<p class='muted'>Not trained on this version yet: the workspace's last training used "
                            f"<code>{escape(v['trained_on'])}</code>.</p>")
        if c["bpb"]:
            for phase, per_source in c["bpb"].items():
                sections += [f"<h3>Bits per byte on held-out text, {escape(phase)}</h3>",
                             bar_chart(list(per_source.items()), "bpb", f"bpb {phase} {label}")]
        body.append("<section class='version'>" + "".join(sections) + "</section>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>Data versions</title><style>"
            "body{font-family:system-ui,sans-serif;margin:16px;color:#222}code{background:#f3f3f3;padding:1px 4px}"
            ".muted{color:#777}.badge{font-size:12px;background:#59a14f;color:#fff;padding:2px 6px;border-radius:8px}"
            "table.gates{border-collapse:collapse}table.gates td,table.gates th{border:1px solid #ddd;padding:3px 8px;font-size:13px}"
            "tr.fail td{background:#fde8e8}section.version{border-top:1px solid #ccc;margin-top:18px}"
            "</style></head><body><h1>Data versions</h1>" + "".join(body) + "</body></html>")


class LazyApp:
    """An ASGI app built on its first request. Airflow imports plugins in every task process too
    (for their macros), where building the FastAPI app and Airflow's auth would cost ~1 s for nothing."""

    def __init__(self, factory):
        self._factory, self._app = factory, None

    async def __call__(self, scope, receive, send):
        if self._app is None:
            self._app = self._factory()
        await self._app(scope, receive, send)


def create_app(root: Path | None = None, require_auth: bool = True):
    """The plugin's FastAPI app; ``root`` is read per request (default: the pipelines workspace)."""
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

    deps = []
    if require_auth:  # the Airflow UI's session cookie (or a Bearer JWT) is required, like the UI itself
        from airflow.api_fastapi.core_api.security import requires_authenticated

        deps = [Depends(requires_authenticated())]
    app = FastAPI(title="Data versions", dependencies=deps)

    def workspace() -> Path:
        if root is not None:
            return Path(root)
        from pipelines.config import workspace as ws

        return ws()

    @app.get("/", response_class=HTMLResponse)
    def page():
        # Relative links: the app is mounted under a prefix (/data-versions/).
        return HTMLResponse(render(collect(workspace()), base="."))

    @app.get("/api/versions")
    def versions():
        return JSONResponse(collect(workspace()))

    @app.get("/gx/{path:path}")
    def data_docs(path: str):
        base = (workspace() / "reports" / "gx").resolve()
        target = (base / path).resolve()
        if not target.is_relative_to(base) or not target.is_file():
            raise HTTPException(status_code=404, detail="no such Data Docs file")
        return FileResponse(target)

    return app
