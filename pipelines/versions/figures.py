"""PNG figures for the offline report (matplotlib, headless): where a picture reads faster than a table.

Training loss and learning rate of both phases on one step axis, bits per byte per source after each
phase, and the records funnel. Written to ``reports/figures/`` (to paste elsewhere) and embedded in
``reports/index.html`` as data URIs, so the report stays one file that needs no network.
"""
from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path

from pipelines.core.atomic import write_bytes_atomic

FIGURES = "reports/figures"


def _png(fig) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training(curves: dict) -> bytes | None:
    """Loss (left) and learning rate (right) against step, one line per phase."""
    if not curves.get("loss"):
        return None
    plt = _pyplot()
    fig, (loss, lr) = plt.subplots(1, 2, figsize=(10, 3.2))
    for phase, points in curves["loss"].items():
        loss.plot([p[0] for p in points], [p[1] for p in points], label=phase, linewidth=1)
    for phase, points in (curves.get("lr") or {}).items():
        lr.plot([p[0] for p in points], [p[1] for p in points], label=phase, linewidth=1)
    loss.set(xlabel="step", ylabel="training loss", title="Training loss")
    lr.set(xlabel="step", ylabel="learning rate", title="Learning rate")
    for ax in (loss, lr):
        ax.grid(alpha=0.3)
        ax.legend()
    return _png(fig)


def bpb(curves: dict) -> bytes | None:
    """Held-out bits per byte per source, one bar per phase (lower is better)."""
    phases = curves.get("bpb") or {}
    if not phases:
        return None
    plt = _pyplot()
    sources = sorted({s for p in phases.values() for s in p})
    fig, ax = plt.subplots(figsize=(10, 3.2))
    width = 0.8 / len(phases)
    for i, (phase, per_source) in enumerate(phases.items()):
        ax.bar([j + i * width for j in range(len(sources))], [per_source.get(s, 0.0) for s in sources], width, label=phase)
    ax.set_xticks([j + width * (len(phases) - 1) / 2 for j in range(len(sources))], sources, rotation=20)
    ax.set(ylabel="bits per byte", title="Held-out bits per byte per source (lower is better)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return _png(fig)


def funnel(records: list[dict]) -> bytes | None:
    """Records left after each stage."""
    if not records:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(records) + 1))
    labels = [r["stage"] for r in records][::-1]
    values = [r["records"] for r in records][::-1]
    ax.barh(labels, values, color="#4e79a7")
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:,}", va="center", fontsize=9)
    ax.set(xlabel="records", title="Records per stage")
    return _png(fig)


def figures_html(root: Path, version: dict) -> str:
    """The version's figures, written to reports/figures/ and returned as <img> tags with data URIs."""
    out = []
    for name, data in (("funnel", funnel(version["funnel"]["records"])), ("training", training(version["curves"])),
                       ("bpb", bpb(version["curves"]))):
        if data is None:
            continue
        path = Path(root) / FIGURES / f"{name}.png"
        write_bytes_atomic(path, data)
        path.chmod(0o644)
        out.append(f'<img class="figure" alt="{escape(name)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">')
    return "<h3>Figures</h3><div>" + "".join(out) + "</div>" if out else ""
