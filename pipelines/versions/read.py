"""What the "Data versions" page shows, read from files the pipeline already wrote.

Versions come from the git tags ``data/<version>`` (each points at a commit holding that
version's dvc.lock) plus the workspace's current build. For the current version the
workspace files are read (manifests, gate reports, blend.json, pack.json, metrics/); for an
older tag the stage manifests, blend.json and pack.json are read from the DVC cache via the
tag's dvc.lock, when the cache still holds them. No database, nothing written.
"""
from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import yaml

from pipelines import stages

PHASES = ["phase1", "phase2"]
PACK_SUMMARY = f"{stages.output('pack')}/pack.json"


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


class Files:
    """Reads a version's files: from the workspace, or from the DVC cache through a dvc.lock."""

    def __init__(self, root: Path, lock: dict | None = None):
        self.root = Path(root)
        self.lock = lock  # None: the workspace itself

    def json(self, rel: str):
        if self.lock is None:
            return read_json(self.root / rel)
        return self._cached_json(rel)

    def _cache_file(self, md5: str) -> Path:
        return self.root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]

    def _cached_json(self, rel: str):
        for stage in (self.lock.get("stages") or {}).values():
            for out in stage.get("outs") or []:
                path, md5 = str(out.get("path", "")).rstrip("/"), str(out.get("md5", ""))
                if rel == path and md5 and not md5.endswith(".dir"):
                    return read_json(self._cache_file(md5))
                if rel.startswith(path + "/") and md5.endswith(".dir"):
                    listing = read_json(self._cache_file(md5)) or []
                    inner = rel[len(path) + 1:]
                    for entry in listing:
                        if entry.get("relpath") == inner:
                            return read_json(self._cache_file(entry["md5"]))
        return None


def funnel(files: Files) -> dict:
    """Records per stage, in pipeline order (a stage that writes sub-datasets: per sub-dataset, the
    blends first), and tokens and sequences per packed phase."""
    records = []
    for stage in stages.names():
        m = files.json(f"{stages.output(stage)}/_manifest.json")
        if not m:
            continue
        outputs = m.get("outputs") or {}
        if not outputs:
            records.append({"stage": stage, "records": int(m["totals"]["rows"])})
        for dataset in sorted(outputs, key=lambda d: (d not in PHASES, d)):
            if outputs[dataset].get("rows"):  # token shards count sequences in pack.json, not rows
                records.append({"stage": f"{stage}/{dataset}", "records": int(outputs[dataset]["rows"])})
    tokens = []
    for phase, p in pack_phases(files.json(PACK_SUMMARY)).items():
        if "tokens" in p:
            tokens.append({"phase": phase, "tokens": int(p["tokens"]), "sequences": p.get("n_seq")})
    return {"records": records, "tokens": tokens}


def pack_phases(pack) -> dict:
    if not isinstance(pack, dict):
        return {}
    phases = pack.get("phases") if isinstance(pack.get("phases"), dict) else pack
    return {k: v for k, v in phases.items() if k in PHASES and isinstance(v, dict)}


def blend_shares(blend) -> dict:
    """phase -> source -> {share, target_share} from data/mix/blend.json."""
    out = {}
    for phase, p in ((blend or {}).get("phases") or {}).items():
        out[phase] = {s: {"share": float(e.get("share", 0.0)), "target_share": e.get("target_share")}
                      for s, e in sorted((p.get("sources") or {}).items())}
    return out


def token_shares(pack) -> dict:
    """phase -> source -> share of the phase's tokens (when pack.json counts tokens per source),
    else phase -> {"tokens": n} so the page can still compare the phases."""
    out = {}
    for phase, p in pack_phases(pack).items():
        per_source = p.get("tokens_by_source") or p.get("token_share")
        if isinstance(per_source, dict) and per_source:
            counts = {s: (v.get("tokens") if isinstance(v, dict) else v) for s, v in per_source.items()}
            counts = {s: int(v) for s, v in counts.items() if isinstance(v, (int, float))}
            total = sum(counts.values()) or 1
            out[phase] = {s: c / total for s, c in sorted(counts.items())}
    return out


def gates(root: Path, commit: str | None = None) -> list[dict]:
    """Gate results from reports/checks/<stage>.json: the workspace's, or those a version's tag commit carries
    (record_version commits them with the lock). Data Docs are linked for the workspace's build only."""
    out = []
    if commit is None:
        reports = {p.stem: read_json(p) for p in sorted((Path(root) / "reports" / "checks").glob("*.json"))}
    else:
        listed = _git(root, "ls-tree", "--name-only", f"{commit}:reports/checks") or ""
        reports = {}
        for name in listed.split():
            text = _git(root, "show", f"{commit}:reports/checks/{name}") if name.endswith(".json") else None
            try:
                reports[name[:-len(".json")]] = json.loads(text) if text else None
            except json.JSONDecodeError:
                reports[name[:-len(".json")]] = None
    for stage in sorted(reports, key=stages.order_key):
        r = reports[stage] or {}
        failed = [c for c in r.get("checks") or [] if not c.get("success")]
        docs = r.get("data_docs")
        out.append({
            "stage": stage, "success": bool(r.get("success")), "evaluated": r.get("evaluated"),
            "failed": [{"type": c.get("type"), "column": c.get("column"), "observed": c.get("observed")} for c in failed],
            "data_docs": docs if commit is None and docs and (Path(root) / docs).is_file() else None,
        })
    return out


def curves(root: Path) -> dict:
    """phase -> [(step, loss)] and [(step, learning rate)] from metrics/train_<phase>.csv; eval bits-per-byte from
    metrics/details/eval.json."""
    out: dict = {"loss": {}, "lr": {}, "bpb": {}}
    for phase in PHASES:
        path = Path(root) / "metrics" / f"train_{phase}.csv"
        if not path.exists():
            continue
        points, lrs = [], []
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                try:
                    points.append((float(row["step"]), float(row["loss"])))
                    lrs.append((float(row["step"]), float(row["lr"])))
                except (KeyError, TypeError, ValueError):
                    continue
        if points:
            out["loss"][phase] = points
        if lrs:
            out["lr"][phase] = lrs
    ev = read_json(Path(root) / "metrics" / "details" / "eval.json") or {}
    for phase in PHASES:
        bpb = (ev.get(phase) or {}).get("bpb")
        if isinstance(bpb, dict):
            out["bpb"][phase] = {s: float(v) for s, v in sorted(bpb.items()) if isinstance(v, (int, float))}
    return out


def _git(root: Path, *args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None


def tagged_versions(root: Path) -> list[dict]:
    """[{version, tag, commit, date}] for the data/* tags, newest first."""
    out = _git(root, "for-each-ref", "--sort=-creatordate", "--format=%(refname:short)\t%(objectname)\t%(creatordate:iso-strict)",
               "refs/tags/data/") or ""
    rows = []
    for line in out.splitlines():
        tag, commit, date = (line.split("\t") + ["", ""])[:3]
        rows.append({"version": tag.split("/", 1)[1], "tag": tag, "commit": commit, "date": date})
    return rows


def version_detail(root: Path, version: str | None, lock: dict | None, current: bool) -> dict:
    files = Files(root, None if current else lock)
    detail = {
        "version": version,
        "current": current,
        "funnel": funnel(files),
        "mixture": blend_shares(files.json(f"{stages.output('mix')}/blend.json")),
        "token_shares": token_shares(files.json(PACK_SUMMARY)),
    }
    if current:
        detail["lineage"] = read_json(Path(root) / "reports" / "lineage.json")
        used = read_json(Path(root) / "reports" / "pretrain_data_version.json") or {}
        # The workspace's training curves and bpb belong to the version that training used: shown under it only.
        trained = used.get("version") == version
        detail["curves"] = curves(root) if trained else {"loss": {}, "lr": {}, "bpb": {}}
        detail["trained"] = trained and bool(detail["curves"]["loss"])
        detail["trained_on"] = used.get("version")
        detail["gates"] = gates(root)
    else:
        detail.update(gates=[], curves={"loss": {}, "lr": {}, "bpb": {}}, trained=False)
    return detail


def collect(root: Path) -> list[dict]:
    """Every known data version, the workspace's current one first."""
    root = Path(root)
    current = (read_json(root / "reports" / "data_version.json") or {}).get("version")
    versions = []
    tags = tagged_versions(root)
    if current or (root / "data").exists():
        d = version_detail(root, current, None, current=True)
        d.update(next(({"tag": t["tag"], "commit": t["commit"], "date": t["date"]} for t in tags if t["version"] == current),
                      {"tag": None, "commit": None, "date": None}))
        versions.append(d)
    for t in tags:
        if t["version"] == current:
            continue
        lock_text = _git(root, "show", f"{t['commit']}:dvc.lock")
        lock = yaml.safe_load(lock_text) if lock_text else {}
        d = version_detail(root, t["version"], lock or {}, current=False)
        lineage_text = _git(root, "show", f"{t['commit']}:reports/lineage.json")  # travels in the tag's commit
        d.update(tag=t["tag"], commit=t["commit"], date=t["date"], lineage=json.loads(lineage_text) if lineage_text else None,
                 gates=gates(root, t["commit"]))
        versions.append(d)
    return versions
