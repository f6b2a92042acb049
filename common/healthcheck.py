"""Container health check: exit 0 when this container's service reports SERVING on grpc.health.v1.

    python -m common.healthcheck [PORT] [--service NAME] [--timeout 3]

The port is the argument, else the HEALTH_PORT environment variable (the plaintext health port a
service serves beside a TLS port), else PORT, else the `--port` flag of the service that PID 1
runs (its command line, read with psutil), else that service's port in common/services.py. Used
by the Dockerfile's HEALTHCHECK; Kubernetes uses its own native gRPC probes instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

import psutil

from common.services import BY_MODULE


def port_from_cmdline(cmdline: list[str]) -> int | None:
    """`python -m text_service --port 6000` -> 6000; `python -m text_service` -> 50052."""
    for i, arg in enumerate(cmdline):
        if arg == "--port" and i + 1 < len(cmdline):
            return int(cmdline[i + 1])
        if arg.startswith("--port="):
            return int(arg.split("=", 1)[1])
    for i, arg in enumerate(cmdline):
        if arg == "-m" and i + 1 < len(cmdline) and cmdline[i + 1] in BY_MODULE:
            return BY_MODULE[cmdline[i + 1]].port
    return None


def pid1_cmdline() -> list[str]:
    """The command line of the container's main process (PID 1); empty when it cannot be read."""
    try:
        return psutil.Process(1).cmdline()
    except psutil.Error:
        return []


def resolve_port(given: int | None, environ=os.environ, cmdline: Callable[[], list[str]] = pid1_cmdline) -> int:
    if given:
        return given
    for variable in ("HEALTH_PORT", "PORT"):
        if environ.get(variable):
            return int(environ[variable])
    port = port_from_cmdline(cmdline())
    if port is None:
        raise SystemExit("healthcheck: no port given, no PORT variable, and PID 1 is not a known service")
    return port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int, nargs="?")
    parser.add_argument("--service", default="", help="health service name ('' is the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    port = resolve_port(args.port)

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout).status
        except grpc.RpcError as error:
            print(f"healthcheck: :{port} {error.code().name}", file=sys.stderr)
            return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    print(f"healthcheck: :{port} {name}")
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
