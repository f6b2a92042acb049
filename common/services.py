"""The services of the classifier, their names and ports: the one place these facts are written.

The settings classes take their default ports from here, `make up` (ops/local_stack.py) starts
the services on them and the container health check finds a service's port here. The Kubernetes
manifests cannot import Python: `python -m ops.k8s_services` writes each service's values
(k8s/base/<name>/service.yaml) from this table, and tests/test_k8s.py fails when they differ;
the Dockerfile's EXPOSE line is checked against it by the same tests.

Plain data, no imports beyond the standard library: the health check imports it in a few ms.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceSpec:
    """One gRPC service: how it is named, run and reached."""

    #: Kubernetes name (Deployment, Service, DNS name), e.g. "text-service".
    name: str
    #: Python package run as `python -m MODULE`.
    module: str
    #: gRPC port.
    port: int
    #: Prometheus /metrics port.
    metrics_port: int
    #: grpc.health.v1 service name that reports the domain service's readiness.
    health_service: str
    #: Whether it serves a model bundle (--models-dir) rather than calling the others.
    uses_models: bool

    @property
    def local_address(self) -> str:
        return f"localhost:{self.port}"


GATEWAY = ServiceSpec("gateway", "gateway", 50051, 9101, "rakuten.v1.ProductClassifier", uses_models=False)
TEXT_SERVICE = ServiceSpec("text-service", "text_service", 50052, 9102, "rakuten.v1.TextEncoder", uses_models=True)
IMAGE_SERVICE = ServiceSpec("image-service", "image_service", 50053, 9103, "rakuten.v1.ImageEncoder", uses_models=True)
FUSION_SERVICE = ServiceSpec("fusion-service", "fusion_service", 50054, 9104, "rakuten.v1.Fusion", uses_models=True)

#: Model services first, in the order `make up` starts them; the gateway last.
SERVICES = (TEXT_SERVICE, IMAGE_SERVICE, FUSION_SERVICE, GATEWAY)
BY_MODULE = {service.module: service for service in SERVICES}

#: HTTP port of the demo page (web/), which is no gRPC service.
WEB_PORT = 8080
