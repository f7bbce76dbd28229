"""infra/: the docker-compose stack and the Helm values cannot run here (no Docker engine, no
cluster). They are validated: `docker compose config` / `docker-compose config` when a client is
installed (offline: it only parses, interpolates and schema-checks), and structurally in Python
(every service, the executor wiring, secrets from the environment, the shared workspace,
the GPU pod template the DAG factory hands to GPU tasks)."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import REPO

INFRA = REPO / "infra"
SECRETS = {"POSTGRES_PASSWORD": "pg", "REDIS_PASSWORD": "rd", "MINIO_ROOT_PASSWORD": "minio-secret",
           "AIRFLOW_JWT_SECRET": "jwt", "AIRFLOW_SECRET_KEY": "sk"}
AIRFLOW_SERVICES = ["airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-worker"]


def _compose_cli() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_config_with_the_cli():
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker compose client installed (the structural test below still runs)")
    env = {**os.environ, **SECRETS}
    out = subprocess.run([*cli, "-f", str(INFRA / "docker-compose.yaml"), "--profile", "gpu", "config"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout)
    assert set(AIRFLOW_SERVICES + ["airflow-worker-gpu", "postgres", "redis", "minio"]) <= set(resolved["services"])
    assert "jwt" == resolved["services"]["airflow-scheduler"]["environment"]["AIRFLOW__API_AUTH__JWT_SECRET"]
    missing = subprocess.run([*cli, "-f", str(INFRA / "docker-compose.yaml"), "config"], capture_output=True, text=True,
                             env={k: v for k, v in env.items() if k != "POSTGRES_PASSWORD"}, timeout=120)
    assert missing.returncode != 0 and "POSTGRES_PASSWORD" in missing.stderr  # secrets are required, not defaulted


def test_compose_file_structure():
    doc = yaml.safe_load((INFRA / "docker-compose.yaml").read_text())
    services = doc["services"]
    assert {"postgres", "redis", "minio", "airflow-init", *AIRFLOW_SERVICES} <= set(services)
    for name in AIRFLOW_SERVICES + ["airflow-worker-gpu"]:
        svc = services[name]
        env = svc["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://"), name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://"), name
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000" and env["PIPELINES_WORKSPACE"] == "/workspace", name
        assert "workspace:/workspace" in svc["volumes"], f"{name} must mount the shared DVC workspace"
        assert "${" in env["AIRFLOW__API_AUTH__JWT_SECRET"], "secrets come from the environment"
    assert services["airflow-worker-gpu"]["command"][-3:] == ["gpu", "--concurrency", "1"]
    assert services["airflow-worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert services["airflow-worker"]["environment"]["PIPELINES_GPU_QUEUE"] == "gpu"
    assert set(doc["volumes"]) >= {"workspace", "postgres-db", "minio-data"}
    init = "\n".join(services["airflow-init"]["command"])
    assert "airflow db migrate" in init and "airflow pools set gpu" in init and "dvc remote add" in init
    example = dict(line.split("=", 1) for line in (INFRA / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert set(SECRETS) <= set(example) and not any(example[k] for k in SECRETS)  # placeholders only


def test_helm_values_use_kubernetes_executor_with_shared_workspace():
    values = yaml.safe_load((INFRA / "helm/values.yaml").read_text())
    assert values["executor"] == "KubernetesExecutor"
    env = {e["name"]: e["value"] for e in values["env"]}
    template_path = env["PIPELINES_GPU_POD_TEMPLATE"]
    mounts = {m["name"]: m["mountPath"] for m in values["volumeMounts"]}
    assert template_path.startswith(mounts["gpu-pod-template"] + "/")
    assert mounts["workspace"] == env["PIPELINES_WORKSPACE"] == "/workspace"
    vols = {v["name"]: v for v in values["volumes"]}
    assert vols["workspace"]["persistentVolumeClaim"]["claimName"] == "pipelines-workspace"
    pvc = yaml.safe_load((INFRA / "helm/workspace-pvc.yaml").read_text())
    assert pvc["metadata"]["name"] == "pipelines-workspace" and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    # The chart's worker pod template emits `volumes` and then `workers.extraVolumes` (same for the
    # mounts): a name in both would be a duplicate volume, and Kubernetes rejects the pod.
    workers = values.get("workers") or {}
    assert not {v["name"] for v in workers.get("extraVolumes") or []} & set(vols)
    assert not {m["name"] for m in workers.get("extraVolumeMounts") or []} & set(mounts)


def test_gpu_pod_template_is_a_valid_executor_pod():
    pod = yaml.safe_load((INFRA / "helm/gpu-pod-template.yaml").read_text())
    assert pod["apiVersion"] == "v1" and pod["kind"] == "Pod"
    base = [c for c in pod["spec"]["containers"] if c["name"] == "base"]
    assert base, "the KubernetesExecutor runs tasks in the container named 'base'"
    res = base[0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == 1 and res["requests"]["nvidia.com/gpu"] == 1
    mounts = {m["name"]: m["mountPath"] for m in base[0]["volumeMounts"]}
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["spec"]["volumes"]}
    assert mounts["workspace"] == "/workspace" and claims["workspace"] == "pipelines-workspace"
    if shutil.which("kubectl"):  # client-side schema check, offline
        out = subprocess.run(["kubectl", "create", "--dry-run=client", "--validate=false", "-o", "yaml", "-f",
                              str(INFRA / "helm/gpu-pod-template.yaml")], capture_output=True, text=True, timeout=60)
        if out.returncode == 0:
            assert yaml.safe_load(out.stdout)["spec"]["containers"][0]["name"] == "base"


def test_gpu_stages_get_pool_queue_and_pod_template(monkeypatch):
    from pipelines.orchestration.dag_factory import resources
    from pipelines.orchestration.graph import load_stages

    stages = load_stages(REPO / "dvc.yaml")
    assert resources(stages["train"]) == {}  # off by default: `dags test` / SQLite runs have no pools
    monkeypatch.setenv("PIPELINES_USE_POOLS", "1")
    monkeypatch.setenv("PIPELINES_GPU_QUEUE", "gpu")
    monkeypatch.setenv("PIPELINES_GPU_POD_TEMPLATE", "/opt/airflow/pod_templates/gpu-pod-template.yaml")
    assert resources(stages["train"]) == {"pool": "gpu", "queue": "gpu",
                                          "executor_config": {"pod_template_file": "/opt/airflow/pod_templates/gpu-pod-template.yaml"}}
    assert resources(stages["filter"]) == {}
