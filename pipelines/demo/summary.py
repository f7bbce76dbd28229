"""The demo's closing report: funnel, data version, gates, bits-per-byte per phase."""
from __future__ import annotations

import json
from pathlib import Path

from pipelines import stages
from pipelines.config import workspace
from pipelines.versions.read import Files, funnel, read_json

def collect(root: Path | None = None) -> dict:
    root = Path(root or workspace())
    files = Files(root)
    out: dict = {"funnel": [], "gates": {}, "version": read_json(root / "reports/data_version.json")}
    found = funnel(files)
    out["funnel"] = found["records"] + [{"stage": f"pack/{t['phase']}", "tokens": t["tokens"], "sequences": t["sequences"]}
                                        for t in found["tokens"]]
    for f in sorted((root / "reports/checks").glob("*.json")):
        out["gates"][f.stem] = (read_json(f) or {}).get("success")
    out["eval"] = read_json(root / "metrics/details/eval.json")
    return out


def render(params: dict | None = None, root: Path | None = None) -> str:
    root = Path(root or workspace())
    info = collect(root)
    lines = ["", "== Funnel =="]
    for row in info["funnel"]:
        if "records" in row:
            lines.append(f"  {row['stage']:<16} {row['records']:>10,} records")
        else:
            lines.append(f"  {row['stage']:<16} {row['tokens']:>10,} tokens in {row['sequences']:,} sequences")
    lines.append("== Gates ==")
    lines.append("  " + ", ".join(f"{k}: {'pass' if v else 'FAIL'}" for k, v in info["gates"].items()))
    v = info["version"] or {}
    lines.append("== Data version ==")
    lines.append(f"  {v.get('version')}  tag={v.get('tag')}  commit={(v.get('commit') or '')[:12]}  pushed={v.get('pushed')}")
    ev = info["eval"]
    if ev:
        lines.append("== Bits per byte on held-out text (lower is better) ==")
        p1, p2 = ev.get("phase1", {}).get("bpb", {}), ev.get("phase2", {}).get("bpb", {})
        lines.append(f"  {'source':<18} {'phase 1':>9} {'anneal':>9} {'delta':>9}")
        for src in sorted(set(p1) | set(p2)):
            a, b = p1.get(src), p2.get(src)
            d = f"{b - a:+.4f}" if a is not None and b is not None else ""
            lines.append(f"  {src:<18} {a if a is None else f'{a:.4f}':>9} {b if b is None else f'{b:.4f}':>9} {d:>9}")
        for key in ("bpb_mean",):
            a, b = ev.get("phase1", {}).get(key), ev.get("phase2", {}).get(key)
            if a is not None and b is not None:
                lines.append(f"  {'mean':<18} {a:>9.4f} {b:>9.4f} {b - a:>+9.4f}")
    lines.append("== Reports ==")
    for rel in ("reports/checks/", "reports/gx/", "reports/data_version.json", "metrics/", f"{stages.output('mix')}/blend.json", f"{stages.output('pack')}/pack.json"):
        if (root / rel).exists():
            lines.append(f"  {root / rel}")
    return "\n".join(lines)
