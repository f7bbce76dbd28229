"""Build Airflow DAGs from dvc.yaml: one task per DVC stage (gates included),
one task group per stage with its gate inside, edges taken from the stages' deps/outs
(only those no other path implies, so the groups form a chain: stage, gate, next stage).

Import-cheap on purpose (yaml + airflow.sdk): DAG files are parsed often. The workspace and
params.yaml come from ``pipelines.config`` (``workspace()``, ``load_params``), as for every stage.
"""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import yaml
from airflow.sdk import BaseOperator, TaskGroup

from pipelines.config import load_params, workspace
from pipelines.orchestration.graph import StageSpec, load_stages, topological, upstream

GPU_POOL_SLOTS = 1  # `make airflow` creates the pools named in dvc.yaml meta.pool with this many slots


def default_args(params: dict | None = None) -> dict:
    """Retry policy for stage tasks from params.orchestration (gates override it: never retried)."""
    orch = (params or {}).get("orchestration") or {}
    return {
        "retries": int(orch.get("retries", 0)),
        "retry_delay": timedelta(seconds=float(orch.get("retry_delay_s", 30))),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(seconds=float(orch.get("max_retry_delay_s", 600))),
        "on_failure_callback": report_failure,
    }


def report_failure(context) -> None:
    """Task failure callback: log which stage or gate failed and, for a gate, each failed expectation
    with its observed value (from reports/checks/<stage>.json, which the gate wrote)."""
    import logging

    from pipelines.orchestration.failures import failure_summary

    task = context.get("task")
    stage = getattr(task, "stage", None) or getattr(task, "task_id", "?")
    message = failure_summary(stage, bool(getattr(task, "is_gate", False)), workspace(), context.get("exception"))
    logging.getLogger("pipelines.failures").error("%s", message)


class DvcStageOperator(BaseOperator):
    """Reproduce one DVC stage (`dvc repro --single-item`) in the workspace."""

    template_fields = ("stage",)
    ui_color = "#945dd6"

    def __init__(self, *, stage: str, is_gate: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.stage = stage
        self.is_gate = is_gate

    def execute(self, context):
        from pipelines.orchestration.dvc_runner import StageFailed, repro_stage

        try:
            repro_stage(self.stage, workspace())
        except StageFailed as e:
            kind = "gate" if self.is_gate else "stage"
            raise RuntimeError(f"{kind} {self.stage} failed; the run stops here.\n{e}") from None


def stage_tasks(dag_id: str, dvc_yaml: Path | None = None, params: dict | None = None) -> dict[str, BaseOperator]:
    """Create the tasks for every dvc.yaml stage whose meta.dag is ``dag_id`` (call inside a DAG context);
    ``params`` is the DAG file's params.yaml, read once per parse."""
    stages = load_stages(dvc_yaml or workspace() / "dvc.yaml")
    mine: dict[str, StageSpec] = {n: s for n, s in stages.items() if s.dag == dag_id}
    edges = upstream(stages)
    k8s = kubernetes_launcher(params if params is not None else load_params()) if any(s.meta.get("pool") == "gpu" for s in mine.values()) else None
    groups: dict[str, TaskGroup] = {}
    tasks: dict[str, BaseOperator] = {}
    for name in topological(stages):
        if name not in mine:
            continue
        spec = mine[name]
        group = groups.get(spec.group)
        if group is None:
            members = [n for n, s in mine.items() if s.group == spec.group]
            group = groups[spec.group] = TaskGroup(group_id=spec.group, tooltip=" -> ".join(
                [n for n in topological(stages) if n in members]))
        extra = resources(spec)
        if spec.is_gate:
            extra["retries"] = 0  # a failed gate is a data problem, not a transient one
        if k8s is not None and spec.meta.get("pool") == "gpu":
            tasks[name] = kubernetes_stage_task(name, k8s, task_group=group, **extra)
            continue
        tasks[name] = DvcStageOperator(task_id=name, stage=name, is_gate=spec.is_gate, task_group=group, **extra)
    for name, ups in reduced({n: {u for u in edges[n] if u in tasks} for n in tasks}).items():
        for up in sorted(ups):
            tasks[up] >> tasks[name]
    return tasks


def reduced(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """``edges`` (node -> its upstream nodes) without the edges another path already implies (a transitive
    reduction; the order of the tasks is the same). What dvc.yaml says, e.g. filter reads data/ingest *and*
    the ingest gate's report, becomes ingest -> check_ingest -> filter: each stage's group is entered after
    the previous stage's gate, and no edge leaves a group around its gate, so the graph reads stage by stage."""
    memo: dict[str, set[str]] = {}

    def ancestors(n: str) -> set[str]:
        if n not in memo:
            memo[n] = set().union(*({u} | ancestors(u) for u in edges[n])) if edges[n] else set()
        return memo[n]

    return {n: {u for u in ups if not any(u in ancestors(o) for o in ups - {u})} for n, ups in edges.items()}


def resources(spec: StageSpec) -> dict:
    """Pool / queue of a stage from dvc.yaml meta (e.g. `pool: gpu`).

    Off unless PIPELINES_USE_POOLS=1 (set by `make airflow` and the deployments, which create
    the pool): a task naming a pool that does not exist would never be scheduled.
    PIPELINES_GPU_QUEUE routes pooled tasks to a Celery queue served by GPU workers;
    PIPELINES_GPU_POD_TEMPLATE gives them a KubernetesExecutor pod template.
    """
    out: dict = {}
    pool = spec.meta.get("pool")
    if pool and os.environ.get("PIPELINES_USE_POOLS") == "1":
        out["pool"] = pool
        queue = spec.meta.get("queue") or os.environ.get(f"PIPELINES_{pool.upper()}_QUEUE")
        if queue:
            out["queue"] = queue
        template = os.environ.get(f"PIPELINES_{pool.upper()}_POD_TEMPLATE")
        if template:  # KubernetesExecutor: run this task from the pool's pod template (GPU node, shared workspace)
            out["executor_config"] = {"pod_template_file": template}
    return out


def pools(dvc_yaml: Path | None = None) -> list[str]:
    return sorted({s.meta["pool"] for s in load_stages(dvc_yaml or workspace() / "dvc.yaml").values() if s.meta.get("pool")})


def sinks(tasks: dict[str, BaseOperator]) -> list[BaseOperator]:
    return [t for t in tasks.values() if not t.downstream_list]


def sources(tasks: dict[str, BaseOperator]) -> list[BaseOperator]:
    return [t for t in tasks.values() if not t.upstream_list]


# ---------------------------------------------------------------- GPU stages as Kubernetes pods

def kubernetes_launcher(params: dict) -> dict | None:
    """The `orchestration.kubernetes` settings when GPU stages run as pods, else None (the default: local).

    `orchestration.train_launcher: kubernetes` (or $PIPELINES_TRAIN_LAUNCHER, for a deployment) turns it on;
    $PIPELINES_TRAIN_IMAGE / $PIPELINES_TRAIN_NAMESPACE override the image and namespace.
    """
    orch = params.get("orchestration") or {}
    launcher = os.environ.get("PIPELINES_TRAIN_LAUNCHER") or orch.get("train_launcher", "local")
    if launcher == "local":
        return None
    if launcher != "kubernetes":
        raise ValueError(f"orchestration.train_launcher must be 'local' or 'kubernetes', got {launcher!r}")
    cfg = dict(orch.get("kubernetes") or {})
    cfg["image"] = os.environ.get("PIPELINES_TRAIN_IMAGE") or cfg.get("image")
    cfg["namespace"] = os.environ.get("PIPELINES_TRAIN_NAMESPACE") or cfg.get("namespace")
    if not cfg["image"]:
        raise ValueError("orchestration.train_launcher is kubernetes but orchestration.kubernetes.image is not set")
    return cfg


def gpu_pod_template(cfg: dict, root: Path | None = None) -> dict:
    """The pod template (infra/) as a dict, its base container asking for ``gpus`` GPUs."""
    path = Path(cfg.get("pod_template") or "infra/helm/gpu-pod-template.yaml")
    with open(path if path.is_absolute() else (root or workspace()) / path) as f:
        pod = yaml.safe_load(f)
    gpus = int(cfg.get("gpus", 1))
    for c in pod["spec"]["containers"]:
        if c["name"] == "base":
            res = c.setdefault("resources", {})
            for kind in ("requests", "limits"):  # Kubernetes wants GPU requests == limits
                res.setdefault(kind, {})["nvidia.com/gpu"] = str(gpus)  # a Kubernetes quantity
    return pod


def kubernetes_stage_task(stage: str, cfg: dict, **kwargs) -> BaseOperator:
    """A KubernetesPodOperator running `dvc repro --single-item <stage>` in the workspace volume of the pod template.

    The pod runs the same command as the local task, so DVC still decides whether the stage
    is stale, and the stage launches torchrun itself when the pod has several GPUs (train.nproc: auto).
    """
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    kwargs.pop("executor_config", None)  # the pod template of the KubernetesExecutor is not this pod's
    op = KubernetesPodOperator(
        task_id=stage,
        name=f"pipelines-{stage}",
        namespace=cfg.get("namespace"),
        image=cfg["image"],
        pod_template_dict=gpu_pod_template(cfg),
        cmds=["dvc"],
        arguments=["repro", "--single-item", stage],
        labels={"app": "pipelines", "pipelines/stage": stage},
        get_logs=True,
        on_finish_action="delete_succeeded_pod",
        startup_timeout_seconds=int(cfg.get("startup_timeout_s", 600)),
        **kwargs,
    )
    op.stage = stage  # what failure reports and tests read (as on DvcStageOperator)
    op.is_gate = False
    return op
