"""infra/: the docker-compose stack and the Helm values cannot run here (no Docker engine, no
cluster). They are validated: `docker compose config` / `docker-compose config` when a client is
installed (offline: it only parses, interpolates and schema-checks), and structurally in Python
(every service, the executor wiring, secrets from the environment, the shared workspace,
the GPU pod template the DAG factory hands to GPU tasks, the Ray cluster for `executor.kind: ray`
in compose and as a KubeRay RayCluster with token auth)."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from tests.fixtures.project import REPO

INFRA = REPO / "infra"
SECRETS = {"POSTGRES_PASSWORD": "pg", "REDIS_PASSWORD": "rd", "MINIO_ROOT_PASSWORD": "minio-secret",
           "AIRFLOW_JWT_SECRET": "jwt", "AIRFLOW_SECRET_KEY": "sk", "RAY_AUTH_TOKEN": "ray-token"}
RAY_SERVICES = ["ray-head", "ray-worker"]
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
    out = subprocess.run([*cli, "-f", str(INFRA / "docker-compose.yaml"), "--profile", "gpu", "--profile", "ray", "config"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout)
    assert set(AIRFLOW_SERVICES + RAY_SERVICES + ["airflow-worker-gpu", "postgres", "redis", "minio"]) <= set(resolved["services"])
    assert "jwt" == resolved["services"]["airflow-scheduler"]["environment"]["AIRFLOW__API_AUTH__JWT_SECRET"]
    for name in RAY_SERVICES + ["airflow-worker"]:
        assert resolved["services"][name]["environment"]["RAY_AUTH_TOKEN"] == "ray-token", name
    worker_cmd = resolved["services"]["ray-worker"]["command"]
    assert worker_cmd[worker_cmd.index("--num-cpus") + 1] == "2"  # ${RAY_WORKER_CPUS:-2}
    for secret in ("POSTGRES_PASSWORD", "RAY_AUTH_TOKEN"):  # secrets are required, not defaulted
        missing = subprocess.run([*cli, "-f", str(INFRA / "docker-compose.yaml"), "config"], capture_output=True, text=True,
                                 env={k: v for k, v in env.items() if k != secret}, timeout=120)
        assert missing.returncode != 0 and secret in missing.stderr, secret


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


def _published_host_ips(service: dict) -> list[str]:
    ips = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            ips.append(port.get("host_ip", ""))
        else:
            parts = str(port).split(":")
            ips.append(parts[0] if len(parts) == 3 else "")  # "8080:8080" / "8080" publish on every interface
    return ips


def test_compose_publishes_ports_on_the_host_loopback_only():
    services = yaml.safe_load((INFRA / "docker-compose.yaml").read_text())["services"]
    published = {name: _published_host_ips(svc) for name, svc in services.items() if svc.get("ports")}
    assert published.get("ray-head") == ["127.0.0.1"], "the Ray dashboard is the one Ray port a user reaches"
    assert all(ip == "127.0.0.1" for ips in published.values() for ip in ips), published


def test_compose_ray_cluster_with_token_auth_for_the_airflow_worker():
    doc = yaml.safe_load((INFRA / "docker-compose.yaml").read_text())
    services = doc["services"]
    image = services["airflow-worker"]["image"]
    for name in RAY_SERVICES:
        svc = services[name]
        env = svc["environment"]
        assert svc["profiles"] == ["ray"], name
        assert svc["image"] == image, "Ray runs the project image: the same pipelines code as the driver"
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?"), "the token is required, from .env, no default"
        assert "workspace:/workspace" in svc["volumes"] and env["PIPELINES_WORKSPACE"] == "/workspace", name
        assert svc["command"][:2] == ["ray", "start"] and "--block" in svc["command"], name
        assert not any("TOKEN" in str(arg) for arg in svc["command"]), "the token never goes on a command line"
    head = services["ray-head"]["command"]
    assert head[head.index("--port") + 1] == "6379" and "--head" in head
    assert services["ray-worker"]["command"][services["ray-worker"]["command"].index("--address") + 1] == "ray-head:6379"
    worker_env = services["airflow-worker"]["environment"]
    assert worker_env["RAY_ADDRESS"] == "ray-head:6379"
    assert worker_env["RAY_AUTH_TOKEN"] == services["ray-head"]["environment"]["RAY_AUTH_TOKEN"]
    assert "RAY_AUTH_TOKEN" not in doc["x-airflow-common"]["environment"], "only the worker that drives Ray gets the token"
    example = dict(line.split("=", 1) for line in (INFRA / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert example["RAY_AUTH_TOKEN"] == ""  # a placeholder, never a committed token


def test_kuberay_raycluster_token_auth_from_a_secret():
    docs = [d for d in yaml.safe_load_all((INFRA / "kuberay/raycluster.yaml").read_text()) if d]
    assert [d["kind"] for d in docs] == ["RayCluster"], "no Secret with a token value is committed"
    rc = docs[0]
    assert rc["apiVersion"] == "ray.io/v1"
    spec = rc["spec"]
    assert spec["authOptions"]["mode"] == "token"
    pin = [line for line in (REPO / "requirements.lock").read_text().splitlines() if line.startswith("ray==")]
    assert pin == [f"ray=={spec['rayVersion']}"], "the cluster runs the Ray version the driver is locked to"
    values = yaml.safe_load((INFRA / "helm/values.yaml").read_text())
    token_env = [e for e in values["secret"] if e["envName"] == "RAY_AUTH_TOKEN"]
    assert token_env == [{"envName": "RAY_AUTH_TOKEN", "secretName": spec["authOptions"]["secretName"], "secretKey": "auth_token"}]
    env = {e["name"]: e["value"] for e in values["env"]}
    assert env["RAY_ADDRESS"] == f"{rc['metadata']['name']}-head-svc:6379"
    pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    assert len(pods) >= 2 and spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    airflow_image = f"{values['images']['airflow']['repository']}:{values['images']['airflow']['tag']}"
    for pod in pods:
        (container,) = pod["spec"]["containers"]
        assert container["image"] == airflow_image, "Ray runs the project image: the same pipelines code as the driver"
        res = container["resources"]
        assert res["requests"]["cpu"] and res["requests"]["memory"] and res["limits"]["memory"], container["name"]
        assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["workspace"] == "/workspace"
        claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["spec"]["volumes"]}
        assert claims["workspace"] == "pipelines-workspace"
        names = {e["name"] for e in container["env"]}
        assert "RAY_AUTH_TOKEN" not in names and "RAY_AUTH_MODE" not in names, "the operator injects them from the Secret"
        assert all("value" not in e for e in container["env"] if "SECRET" in e["name"] or "KEY_ID" in e["name"])
    for group in spec["workerGroupSpecs"]:
        assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


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
