"""k8s/base/<service>/values.yaml from common/services.py: the services' names and ports, one source.

    python -m ops.k8s_services           # rewrite the four values files
    python -m ops.k8s_services --check   # exit 1 if one differs from common/services.py

Each values file is a local kustomize object (kind ServiceValues, not rendered) that
k8s/base/workload fills the service's Deployment, Service, autoscaler and disruption budget from.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.services import SERVICES, ServiceSpec

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BASE = PROJECT_ROOT / "k8s" / "base"


def values_path(service: ServiceSpec) -> Path:
    return BASE / service.name / "values.yaml"


def render(service: ServiceSpec) -> str:
    """Plain text, so that it needs no YAML library and reads like the manifests around it."""
    return f"""\
# Generated from common/services.py by `python -m ops.k8s_services`: edit that file, then run it.
# tests/test_k8s.py fails when the two differ.
apiVersion: rakuten-classifier.local/v1
kind: ServiceValues
metadata:
  name: {service.name}
  annotations:
    config.kubernetes.io/local-config: "true"
spec:
  module: {service.module}
  port: {service.port}
  metricsPort: {service.metrics_port}
  healthService: {service.health_service}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.k8s_services", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args(argv)
    stale = 0
    for service in SERVICES:
        path, text = values_path(service), render(service)
        shown = path.relative_to(PROJECT_ROOT)
        if args.check:
            same = path.is_file() and path.read_text() == text
            stale += not same
            print(f"{shown}: {'up to date' if same else 'differs from common/services.py'}")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {shown}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
