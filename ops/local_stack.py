"""Runs the four services and the demo page here with the bundles in models/: `make up`, `make down`.

    python -m ops.local_stack up [--models models] [--run-dir run] [--web-port 8080]
    python -m ops.local_stack status
    python -m ops.local_stack classify [--data ../shared/rakuten]
    python -m ops.local_stack down

Each service is its own process in its own session (so it outlives `make`), on the design's
ports, with its log, pid and port files under the run folder. `up` returns once every service
reports SERVING on grpc.health.v1 and the demo page (web/, HTTP only) answers on /healthz, or
stops them all and shows the failing log. `down` sends SIGTERM (a graceful drain) and waits; a
process still running after the grace period is killed.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common import services as registry
from ops import pidfiles
from ops.service_process import http_ready

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Service:
    module: str
    port: int
    metrics_port: int | None
    uses_models: bool
    #: Answers HTTP GET /healthz rather than grpc.health.v1 (the demo page).
    http: bool = False


def _local(spec: registry.ServiceSpec) -> Service:
    return Service(spec.module, spec.port, spec.metrics_port, spec.uses_models)


GATEWAY = _local(registry.GATEWAY)
WEB = Service("web", registry.WEB_PORT, None, False, http=True)
SERVICES = (*map(_local, registry.SERVICES), WEB)


def _pid_file(run_dir: Path, service: Service) -> Path:
    return run_dir / f"{service.module}.pid"


def _pid(run_dir: Path, service: Service) -> int | None:
    return pidfiles.pid(_pid_file(run_dir, service))


def _port(run_dir: Path, service: Service) -> int:
    """The port `up` started it on (the demo page's can be changed), else its default."""
    path = run_dir / f"{service.module}.port"
    return int(path.read_text()) if path.is_file() else service.port


def _health(port: int) -> int | None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1).status
        except grpc.RpcError:
            return None


def _serving(service: Service, port: int) -> bool:
    if service.http:
        return http_ready(f"http://127.0.0.1:{port}/healthz")
    return _health(port) == health_pb2.HealthCheckResponse.SERVING


def _start(service: Service, models: Path, run_dir: Path, extra: list[str]) -> int:
    args = [sys.executable, "-m", service.module, "--port", str(service.port), *extra]
    if service.metrics_port is not None:
        args += ["--metrics-port", str(service.metrics_port)]
    if service.uses_models:
        args += ["--models-dir", str(models)]
    log = (run_dir / f"{service.module}.log").open("ab")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    process = subprocess.Popen(args, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    pidfiles.write(_pid_file(run_dir, service), process.pid)
    (run_dir / f"{service.module}.port").write_text(str(service.port))
    return process.pid


def gateway_flags(models: Path) -> list[str]:
    """The fusion choice `make train-fusion` measured and recorded in the fusion bundle's metadata."""
    from common.model_bundle import read_bundle

    try:
        settings = read_bundle(models, "fusion").metadata.get("gateway_settings", {})
    except FileNotFoundError:
        return []
    return [f"--{name.replace('_', '-')}={value}" for name, value in settings.items()]


def up(models: Path, run_dir: Path, timeout: float, gateway_args: list[str], web_port: int = WEB.port) -> int:
    run_dir.mkdir(parents=True, exist_ok=True)
    extra = {GATEWAY.module: gateway_flags(models) + gateway_args,
             WEB.module: ["--gateway-address", f"127.0.0.1:{GATEWAY.port}", "--log-format", "text"]}
    services = [replace(s, port=web_port) if s == WEB else s for s in SERVICES]
    for service in services:
        if _pid(run_dir, service) is None:
            _start(service, models, run_dir, extra.get(service.module, []))
    deadline = time.monotonic() + timeout
    waiting = [replace(s, port=_port(run_dir, s)) for s in services]
    while waiting and time.monotonic() < deadline:
        for service in list(waiting):
            if _pid(run_dir, service) is None:
                print(f"{service.module} exited; its log ({run_dir / (service.module + '.log')}):", file=sys.stderr)
                print((run_dir / f"{service.module}.log").read_text()[-3000:], file=sys.stderr)
                down(run_dir, 10)
                return 1
            if _serving(service, service.port):
                where = (f"http://localhost:{service.port}/" if service.http
                         else f":{service.port} (metrics :{service.metrics_port})")
                print(f"{service.module:15} SERVING on {where}")
                waiting.remove(service)
        time.sleep(0.3)
    if waiting:
        print(f"not SERVING after {timeout:.0f} s: {[s.module for s in waiting]}; logs in {run_dir}", file=sys.stderr)
        down(run_dir, 10)
        return 1
    print(f"""
The four services and the demo page are up (logs and pids in {run_dir}/).
Open the demo page: http://localhost:{_port(run_dir, WEB)}/
Or try:
  make classify
  .venv/bin/python -m gateway.client --designation "Piscine tubulaire 300 x 76 cm" --top-k 3
  grpcurl -plaintext -d '{{"product": {{"designation": "Roman policier"}}}}' localhost:{GATEWAY.port} rakuten.v1.ProductClassifier/Classify
  curl -s localhost:{GATEWAY.metrics_port}/metrics | grep gateway_
Stop them with: make down""")
    return 0


def down(run_dir: Path, grace: float) -> int:
    stopped = pidfiles.stop([_pid_file(run_dir, s) for s in SERVICES], grace)
    for service in SERVICES:
        (run_dir / f"{service.module}.port").unlink(missing_ok=True)
        killed = stopped.get(_pid_file(run_dir, service))
        if killed:
            print(f"{service.module}: killed after {grace:.0f} s", file=sys.stderr)
        if killed is not None:
            print(f"{service.module:15} stopped")
    return 0


def status(run_dir: Path) -> int:
    names = {health_pb2.HealthCheckResponse.SERVING: "SERVING", health_pb2.HealthCheckResponse.NOT_SERVING: "NOT_SERVING"}
    for service in SERVICES:
        pid, port = _pid(run_dir, service), _port(run_dir, service)
        if not pid:
            state = "not running"
        elif service.http:
            state = f"SERVING (http://localhost:{port}/)" if _serving(service, port) else "no answer"
        else:
            state = names.get(_health(port), "no answer")
        print(f"{service.module:15} :{port:<5}  pid {pid or '-':<8} {state}")
    return 0


def example_product(data: Path):
    """The first product of the data folder's traffic sample that has an image, else an invented one."""
    from gateway.client import Product

    traffic = data / "traffic"
    if (traffic / "X_test.csv").is_file():
        with (traffic / "X_test.csv").open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                image = traffic / "images" / f"image_{row['imageid']}_product_{row['productid']}.jpg"
                if image.is_file():
                    return Product(row["designation"], row["description"], image.read_bytes()), f"{image.name}"
    return Product("Piscine tubulaire ronde 300 x 76 cm", "Piscine hors-sol avec pompe de filtration"), "invented"


def classify(data: Path) -> int:
    from gateway.client import ClassifierClient, render

    product, source = example_product(data)
    print(f"product ({source}): {product.designation[:100]}")
    with ClassifierClient() as client:
        try:
            answer = client.classify(product, top_k=3)
        except grpc.RpcError as error:
            print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    print(render(answer))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.local_stack", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status", "classify"])
    parser.add_argument("--models", type=Path, default=PROJECT_ROOT / "models")
    parser.add_argument("--run-dir", type=Path, default=PROJECT_ROOT / "run")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("RAKUTEN_DATA", PROJECT_ROOT.parent / "shared" / "rakuten")))
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for SERVING")
    parser.add_argument("--gateway-arg", action="append", default=[], help="extra flag for the gateway")
    parser.add_argument("--web-port", type=int, default=int(os.environ.get("WEB_PORT", WEB.port)),
                        help="port of the demo page (env WEB_PORT)")
    args = parser.parse_args(argv)
    if args.command == "up":
        return up(args.models.resolve(), args.run_dir, args.timeout, args.gateway_arg, args.web_port)
    if args.command == "down":
        return down(args.run_dir, 20.0)
    if args.command == "status":
        return status(args.run_dir)
    return classify(args.data)


if __name__ == "__main__":
    sys.exit(main())
