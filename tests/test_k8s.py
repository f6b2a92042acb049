"""Kubernetes manifests: every overlay renders with `kubectl kustomize`, every object validates
against the Kubernetes schemas offline (kubernetes-validate, strict), and the rendered objects
have the properties the design asks for: native gRPC probes, resources, locked-down security
contexts, headless Services for the model services, HPAs, PDBs, NetworkPolicies, GPUs on the GPU
overlay. Prometheus-operator objects (no schema offline) are checked structurally. The Dockerfile
is checked by reading it (no Docker engine in CI). Names and ports are those of common/services.py."""

from __future__ import annotations

import functools
import json
import re
import subprocess
from pathlib import Path

import pytest

from common.services import SERVICES as SERVICE_SPECS
from ops import k8s_services, tools

PROJECT_ROOT = Path(__file__).resolve().parent.parent
K8S = PROJECT_ROOT / "k8s"
OVERLAYS = ("cpu", "gpu")
# Oldest release the manifests target (native gRPC probes are GA since 1.27) and the newest schema.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
SERVICES = {  # Deployment -> (module, gRPC port, metrics port, health service)
    s.name: (s.module, s.port, s.metrics_port, s.health_service) for s in SERVICE_SPECS}
MODEL_SERVICES = ("text-service", "image-service", "fusion-service")
GPU_SERVICES = ("text-service", "image-service")
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


@functools.cache
def kubectl() -> str:
    try:
        return tools.kubectl()
    except tools.ToolMissing as error:
        pytest.skip(f"cannot install kubectl: {error}")


def python_packages():
    """PyYAML and kubernetes-validate, installed (pinned) if missing; the yaml module."""
    try:
        tools.ensure_python_packages()
    except tools.ToolMissing as error:
        pytest.skip(f"cannot install PyYAML and kubernetes-validate: {error}")
    import yaml

    return yaml


@functools.cache
def render(path: str) -> tuple[dict, ...]:
    yaml = python_packages()
    result = subprocess.run([kubectl(), "kustomize", str(K8S / path)], capture_output=True, text=True)
    assert result.returncode == 0, f"kubectl kustomize {path}:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(overlay: str, kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in render(f"overlays/{overlay}") if o["kind"] == kind}


def container(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def config_maps(overlay: str) -> dict[str, dict]:
    """ConfigMaps by their name before kustomize's hash suffix."""
    return {re.sub(r"-[a-z0-9]{10}$", "", name): o["data"] for name, o in objects(overlay, "ConfigMap").items()}


def env_of(overlay: str, name: str) -> dict[str, str]:
    """The environment a service's container gets: its envFrom ConfigMaps, then its env."""
    maps = {n: o["data"] for n, o in objects(overlay, "ConfigMap").items()}
    c = container(objects(overlay, "Deployment")[name])
    env = {}
    for source in c.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]])  # KeyError: a reference kustomize did not resolve
    env.update({e["name"]: e["value"] for e in c.get("env", [])})
    return env


# -- rendering and schemas --------------------------------------------------------------------------

@pytest.mark.parametrize("path", [*(f"overlays/{o}" for o in OVERLAYS), "base", "monitoring"])
def test_kustomization_renders(path):
    kinds = {o["kind"] for o in render(path)}
    if path == "monitoring":
        assert kinds == {"ServiceMonitor", "PrometheusRule", "ConfigMap"}
    else:
        assert {"Namespace", "Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler",
                "PodDisruptionBudget", "NetworkPolicy"} <= kinds


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", [*(f"overlays/{o}" for o in OVERLAYS), "monitoring"])
def test_objects_validate_against_kubernetes_schemas(path, version):
    python_packages()
    import kubernetes_validate

    checked = 0
    for obj in render(path):
        if obj["kind"] in CRD_KINDS:
            continue  # no schema offline: test_monitoring_objects checks them
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} ({path}, Kubernetes {version}): "
                        f"{'.'.join(map(str, error.path))}: {error.message}")
        checked += 1
    assert checked


# -- one source for names and ports --------------------------------------------------------------

def test_service_values_are_generated_from_common_services():
    for service in SERVICE_SPECS:
        assert k8s_services.values_path(service).read_text() == k8s_services.render(service), (
            f"{service.name}: run `python -m ops.k8s_services` after editing common/services.py")
    assert sorted(p.parent.name for p in (K8S / "base").glob("*/values.yaml")) == sorted(SERVICES)


def test_no_deployment_is_written_twice():
    """One Deployment (and Service, autoscaler, budget) template, filled in per service."""
    yaml = python_packages()
    written = [doc["kind"] for path in (K8S / "base").rglob("*.yaml") for doc in yaml.safe_load_all(path.read_text())
               if isinstance(doc, dict)]
    assert written.count("Deployment") == written.count("Service") == 1


def test_health_services_are_the_servers_own():
    import importlib

    for service in SERVICE_SPECS:
        server = importlib.import_module(f"{service.module}.server")
        assert service.health_service == server.SERVICE_NAME, service.name


# -- workloads ----------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_deployment_per_service_with_native_grpc_probes(overlay):
    deployments = objects(overlay, "Deployment")
    assert set(deployments) == set(SERVICES)
    for name, (module, port, metrics_port, health_service) in SERVICES.items():
        c = container(deployments[name])
        assert c["command"] == ["python3", "-m", module]
        assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"grpc": port, "metrics": metrics_port}
        env = env_of(overlay, name)
        assert (env["PORT"], env["METRICS_PORT"]) == (str(port), str(metrics_port))
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"]["port"] == port, f"{name} {probe}"
            assert set(c[probe]) - {"grpc", "periodSeconds", "timeoutSeconds", "failureThreshold",
                                    "successThreshold", "initialDelaySeconds"} == set()
        assert c["readinessProbe"]["grpc"]["service"] == health_service
        assert c["startupProbe"]["grpc"]["service"] == health_service
        startup_budget = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
        # TensorFlow import and model load take about a minute on a small CPU: leave room.
        assert startup_budget >= (180 if name in MODEL_SERVICES else 30), f"{name}: {startup_budget} s"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_resources_and_security_context(overlay):
    for name, deployment in objects(overlay, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        c = container(deployment)
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{name} {kind}"
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        assert pod["enableServiceLinks"] is False  # no SERVICE_PORT=tcp://... variables beside the settings
        security = c["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], "TensorFlow writes to /tmp"
        # The drain (SHUTDOWN_GRACE_SECONDS) and the preStop sleep fit in the grace period.
        grace = float(env_of(overlay, name)["SHUTDOWN_GRACE_SECONDS"])
        assert pod["terminationGracePeriodSeconds"] >= grace + 5


def test_namespace_enforces_restricted_pod_security():
    namespaces = objects("cpu", "Namespace")
    assert list(namespaces) == ["rakuten"]
    assert namespaces["rakuten"]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {o["metadata"].get("namespace", "rakuten") for o in render("overlays/cpu")} == {"rakuten"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_are_known_to_the_services(overlay):
    """Every variable a ConfigMap sets is a setting of that service (or a library's own)."""
    from fusion_service.server import FusionServiceSettings
    from gateway.server import GatewaySettings
    from image_service.server import ImageServiceSettings
    from text_service.server import TextServiceSettings

    classes = {"gateway": GatewaySettings, "text-service": TextServiceSettings,
               "image-service": ImageServiceSettings, "fusion-service": FusionServiceSettings}
    library = re.compile(r"^(TF_[A-Z_]+|PROMETHEUS_DISABLE_CREATED_SERIES)$")
    for name, cls in classes.items():
        env = env_of(overlay, name)
        unknown = [k for k in env if k.lower() not in cls.model_fields and not library.match(k)]
        assert not unknown, f"{name}: {unknown} are no settings of {cls.__name__}"
        settings = cls(**{k.lower(): v for k, v in env.items() if k.lower() in cls.model_fields})
        assert settings.port == SERVICES[name][1]  # and pydantic accepts every value


# -- services and load balancing ------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_headless_for_models_clusterip_for_gateway(overlay):
    services = objects(overlay, "Service")
    deployments = objects(overlay, "Deployment")
    assert set(services) == set(SERVICES)
    for name, service in services.items():
        spec = service["spec"]
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert spec["selector"].items() <= labels.items()
        assert {p["name"]: (p["port"], p["targetPort"]) for p in spec["ports"]} == {
            "grpc": (SERVICES[name][1], "grpc"), "metrics": (SERVICES[name][2], "metrics")}
        if name in MODEL_SERVICES:
            assert spec["clusterIP"] == "None", f"{name}: a headless Service lets round_robin see every pod"
        else:
            assert spec.get("clusterIP") != "None" and spec.get("type", "ClusterIP") == "ClusterIP"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_dials_the_headless_services_by_dns(overlay, monkeypatch):
    env = env_of(overlay, "gateway")
    for stage, service in (("TEXT", "text-service"), ("IMAGE", "image-service"), ("FUSION", "fusion-service")):
        assert env[f"{stage}_ADDRESS"] == f"dns:///{service}:{SERVICES[service][1]}"
    # The gateway's channels ask for round_robin: with dns:/// it spreads calls over every address.
    from gateway import backends

    opened = {}
    monkeypatch.setattr(backends, "make_channel", lambda address, tls, aio, options: opened.update(options))
    backends.open_channel(env["TEXT_ADDRESS"], max_message_bytes=1024)
    assert {"round_robin": {}} in json.loads(opened["grpc.service_config"])["loadBalancingConfig"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_serves_the_fusion_the_committed_bundle_was_measured_best_with(overlay):
    """`make train-fusion` records its choice in the bundle; the cluster must apply the same one."""
    from common.model_bundle import read_bundle

    recorded = read_bundle(PROJECT_ROOT / "models", "fusion").metadata["gateway_settings"]
    env = env_of(overlay, "gateway")
    assert env["FUSION_MODE"] == recorded["fusion_mode"]
    assert float(env["LATE_FUSION_TEXT_WEIGHT"]) == pytest.approx(recorded["late_fusion_text_weight"])
    assert float(env["LATE_FUSION_REVIEW_THRESHOLD"]) == pytest.approx(recorded["late_fusion_review_threshold"])


# -- scaling and disruption ---------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_has_an_hpa_and_a_pdb(overlay):
    deployments = objects(overlay, "Deployment")
    hpas = objects(overlay, "HorizontalPodAutoscaler")
    pdbs = objects(overlay, "PodDisruptionBudget")
    for name, deployment in deployments.items():
        hpa = hpas[name]["spec"]
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        pdb = pdbs[name]["spec"]
        assert pdb["selector"]["matchLabels"].items() <= labels.items()
        assert pdb.get("minAvailable", 0) >= 1 and pdb["minAvailable"] < hpa["minReplicas"]
        metrics = hpa["metrics"]
        if overlay == "gpu" and name in GPU_SERVICES:
            assert {m["type"] for m in metrics} == {"Pods"}
        else:
            assert metrics == [{"type": "Resource", "resource": {"name": "cpu", "target": {
                "type": "Utilization", "averageUtilization": 70}}}]


def test_custom_metric_hpa_uses_metrics_the_adapter_serves():
    yaml = python_packages()
    adapter = yaml.safe_load((K8S / "monitoring" / "prometheus-adapter-values.yaml").read_text())
    served = {rule["name"]["as"]: rule for rule in adapter["rules"]["custom"]}
    from common import metrics as kit

    exposed = {m._name for m in vars(kit).values() if hasattr(m, "_name")}
    for name in GPU_SERVICES:
        for metric in objects("gpu", "HorizontalPodAutoscaler")[name]["spec"]["metrics"]:
            wanted = metric["pods"]["metric"]["name"]
            assert wanted in served, f"prometheus-adapter serves no {wanted}"
            series = re.match(r"(\w+)\{", served[wanted]["seriesQuery"]).group(1)
            assert re.sub(r"_bucket$", "", series) in exposed, f"{series} is not a metric the services expose"


# -- network policy -------------------------------------------------------------------------------

def _selects(selector: dict, labels: dict) -> bool:
    return selector.get("matchLabels", {}).items() <= labels.items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gateway_reaches_the_model_services(overlay):
    deployments = objects(overlay, "Deployment")
    policies = list(objects(overlay, "NetworkPolicy").values())
    labels = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in deployments.items()}
    for name in SERVICES:
        mine = [p["spec"] for p in policies if _selects(p["spec"]["podSelector"], labels[name])]
        assert mine, f"no NetworkPolicy selects {name}: every pod may reach it"
        rules = [rule for p in mine for rule in p.get("ingress", [])]
        assert all("Ingress" in p["policyTypes"] for p in mine)
        grpc_rules = [r for r in rules if any(port["port"] == "grpc" for port in r["ports"])]
        metrics_rules = [r for r in rules if any(port["port"] == "metrics" for port in r["ports"])]
        assert grpc_rules and metrics_rules
        for rule in metrics_rules:  # only Prometheus scrapes
            assert rule["from"] and all(peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
                                        for peer in rule["from"])
        if name in MODEL_SERVICES:
            for rule in grpc_rules:  # only gateway pods call
                assert rule["from"], f"{name}: gRPC open to every pod"
                for peer in rule["from"]:
                    assert "namespaceSelector" not in peer and _selects(peer["podSelector"], labels["gateway"])
                    assert not any(_selects(peer["podSelector"], labels[m]) for m in MODEL_SERVICES)


# -- GPU overlay ----------------------------------------------------------------------------------

def test_gpu_overlay_puts_the_encoders_on_gpu_nodes():
    deployments = objects("gpu", "Deployment")
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        c = container(deployment)
        env = env_of("gpu", name)
        if name in GPU_SERVICES:
            assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
            assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
            assert c["image"].endswith("-gpu")
            assert 64 <= int(env["MAX_BATCH_SIZE"]) <= 256 and float(env["MAX_BATCH_DELAY_MS"]) <= 5
            assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
        else:
            assert "nvidia.com/gpu" not in c["resources"]["limits"] and "nodeSelector" not in pod
            assert not c["image"].endswith("-gpu")


def test_cpu_overlay_asks_for_no_gpu():
    for name, deployment in objects("cpu", "Deployment").items():
        c = container(deployment)
        assert "nvidia.com/gpu" not in json.dumps(deployment) and not c["image"].endswith("-gpu")
        assert int(env_of("cpu", name).get("MAX_BATCH_SIZE", "32")) <= 64


# -- monitoring objects (CRDs: structure only) ----------------------------------------------------

def test_monitoring_objects():
    rendered = {o["kind"]: o for o in render("monitoring")}
    monitor = rendered["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    services = objects("cpu", "Service")
    for name, service in services.items():
        assert _selects(spec["selector"], service["metadata"]["labels"]), f"ServiceMonitor misses {name}"
        assert service["metadata"]["namespace"] in spec["namespaceSelector"]["matchNames"]
    assert [e["port"] for e in spec["endpoints"]] == ["metrics"]
    assert all(re.fullmatch(r"\d+s", e["interval"]) for e in spec["endpoints"])

    rule = rendered["PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for r in group["rules"]:
            assert ("record" in r) != ("alert" in r) and r["expr"]
            assert set(r) <= {"record", "alert", "expr", "for", "labels", "annotations"}

    dashboard = rendered["ConfigMap"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["rakuten-classifier.json"])["uid"] == "rakuten-classifier"
    assert monitor["metadata"]["namespace"] == rule["metadata"]["namespace"] == "rakuten"


# -- container image ------------------------------------------------------------------------------

def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile():
    text = (PROJECT_ROOT / "Dockerfile").read_text()
    instructions = _instructions(text)
    args = [v for k, v in instructions if k == "ARG"]
    assert "BASE_IMAGE=python:3.11-slim-bookworm" in args
    assert "tensorflow/tensorflow:2.21.0-gpu" in text  # the GPU variant, as a build argument
    froms = [v for k, v in instructions if k == "FROM"]
    assert froms[0].startswith("${BASE_IMAGE}") and len(froms) >= 2
    runs = " ".join(v for k, v in instructions if k == "RUN")
    assert "-c requirements.lock" in runs and "grpc_tools.protoc -Iprotos" in runs
    copies = [v for k, v in instructions if k == "COPY"]
    for source in ("models/", "protos/", "common/", "gateway/", "text_service/", "image_service/", "fusion_service/",
                   "web/"):
        assert any(c.startswith(source) for c in copies), f"{source} not copied"
        assert (PROJECT_ROOT / source).is_dir() or source == "models/"
    users = [v for k, v in instructions if k == "USER"]
    k8s_user = objects("cpu", "Deployment")["gateway"]["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert users and users[-1].split(":")[0] == str(k8s_user), "numeric non-root USER, the one Kubernetes runs as"
    exposed = {int(port) for k, v in instructions if k == "EXPOSE" for port in v.split()}
    assert exposed == {p for s in SERVICE_SPECS for p in (s.port, s.metrics_port)}, "EXPOSE: common/services.py"
    healthcheck = [v for k, v in instructions if k == "HEALTHCHECK"]
    assert healthcheck and "common.healthcheck" in healthcheck[0]
    assert (PROJECT_ROOT / "common" / "healthcheck.py").is_file()

    ignored = (PROJECT_ROOT / ".dockerignore").read_text().split()
    for path in (".git", ".venv", ".cache", "run", "reports", "rakuten", "**/__pycache__"):
        assert path in ignored, f".dockerignore lacks {path}"
    assert "models" not in ignored and "protos" not in ignored


def test_healthcheck_finds_the_service_port():
    from common.healthcheck import port_from_cmdline, resolve_port

    assert port_from_cmdline(["python3", "-m", "text_service"]) == 50052
    assert resolve_port(None, {}, lambda: ["python3", "-m", "fusion_service"]) == 50054
    with pytest.raises(SystemExit):
        resolve_port(None, {}, lambda: ["sleep", "5"])
    assert port_from_cmdline(["python3", "-m", "gateway", "--port", "6000"]) == 6000
    assert port_from_cmdline(["python3", "-m", "image_service", "--port=7000"]) == 7000
    assert port_from_cmdline(["sleep", "5"]) is None
    assert resolve_port(None, {"PORT": "50054"}) == 50054
    assert resolve_port(8000, {"PORT": "50054"}) == 8000
