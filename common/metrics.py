"""Prometheus metrics of the serving kit, served on each service's metrics port.

gRPC metrics follow the go-grpc-prometheus names that existing dashboards know; model metrics
carry only the model name (never product ids), so cardinality stays low.
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import Counter, Gauge, Histogram

# 1 ms to 10 s: the range between a cached text lookup and a cold image batch.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

GRPC_STARTED = Counter(
    "grpc_server_started_total", "RPCs started on the server.", ["grpc_service", "grpc_method"])
GRPC_HANDLED = Counter(
    "grpc_server_handled_total", "RPCs completed on the server, by status code.",
    ["grpc_service", "grpc_method", "grpc_code"])
GRPC_LATENCY = Histogram(
    "grpc_server_handling_seconds", "Time from receiving an RPC to sending its answer.",
    ["grpc_service", "grpc_method"], buckets=LATENCY_BUCKETS)
GRPC_IN_FLIGHT = Gauge(
    "grpc_server_in_flight_requests", "RPCs being handled right now.", ["grpc_service", "grpc_method"])

BATCH_SIZE = Histogram(
    "model_batch_size", "Items per model call made by the dynamic batcher.", ["model"],
    buckets=BATCH_SIZE_BUCKETS)
QUEUE_WAIT = Histogram(
    "model_queue_wait_seconds", "Time an item waited in the batcher before its model call started.",
    ["model"], buckets=LATENCY_BUCKETS)
INFERENCE_LATENCY = Histogram(
    "model_inference_seconds", "Duration of one batched model call.", ["model"], buckets=LATENCY_BUCKETS)
QUEUE_DEPTH = Gauge("model_queue_items", "Items waiting in the batcher.", ["model"])
MODEL_VERSION = Gauge(
    "model_version_info", "1 for the model version being served.", ["model", "version"])
MODEL_RUNTIME = Gauge(
    "model_runtime_info", "1 for the inference runtime and device running the served model (--runtime).",
    ["model", "runtime", "device"])
MODEL_LOADS = Counter(
    "model_loads_total", "Model version loads, by outcome (success, failure).", ["model", "outcome"])


def start_metrics_server(port: int, host: str = "0.0.0.0") -> int:
    """Serve /metrics from a daemon thread; returns the bound port (useful with port 0)."""
    server, _thread = prometheus_client.start_http_server(port, addr=host)
    return server.server_port
