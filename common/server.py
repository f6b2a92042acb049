"""Start-up and shutdown of a service: the one way every service in this project runs.

A service is a `Servable`: it registers its servicers, loads and warms up its models in
`start`, and releases them in `stop`. `serve` binds the port first and reports NOT_SERVING on
`grpc.health.v1` until `start` returns, then SERVING; on SIGTERM or SIGINT it reports
NOT_SERVING again, lets in-flight calls finish within the grace period, and stops.

The port serves TLS, or mutual TLS, when the settings name certificate files (`common/tls.py`);
`health_port` adds a plaintext port with `grpc.health.v1` alone, for probes that cannot speak TLS
(Kubernetes' native gRPC probes). The metrics port is plain HTTP either way.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Callable, Protocol, Sequence, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common.interceptors import ServingInterceptor
from common.logs import configure_logging
from common.metrics import start_metrics_server
from common.settings import ServiceSettings, load_settings

log = logging.getLogger(__name__)

SettingsT = TypeVar("SettingsT", bound=ServiceSettings)


class Servable(Protocol):
    """What a service gives the runtime (compare KServe's Model: load, predict; Triton's
    initialize, execute, finalize)."""

    #: Full names of the gRPC services it serves, for health and reflection.
    service_names: Sequence[str]

    def register(self, server: grpc.aio.Server) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class RunningServer:
    """A started service: its bound ports and a way to stop it (used by `serve` and by tests)."""

    def __init__(self, server: grpc.aio.Server, servable: Servable, health_servicer: health.aio.HealthServicer,
                 port: int, metrics_port: int | None, grace_seconds: float,
                 probe_server: grpc.aio.Server | None = None, health_port: int | None = None):
        self.server = server
        self.servable = servable
        self.health = health_servicer
        self.port = port
        self.metrics_port = metrics_port
        self.grace_seconds = grace_seconds
        self.probe_server = probe_server
        self.health_port = health_port

    async def mark_serving(self) -> None:
        for name in ("", *self.servable.service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def shutdown(self) -> None:
        """NOT_SERVING first so load balancers stop sending, then drain and stop."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.grace_seconds)
        await self._stop_probes()
        await self.servable.stop()

    async def _stop_probes(self) -> None:
        """Last, so that probes see NOT_SERVING, not a refused connection, while calls drain."""
        if self.probe_server is not None:
            await self.probe_server.stop(0)


async def start_server(servable: Servable, settings: ServiceSettings, *, with_metrics: bool = True) -> RunningServer:
    """Bind and start the gRPC server (NOT_SERVING), then load the servable and mark it SERVING."""
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
        # Clients re-resolve DNS only when a connection closes: ending connections after a minute
        # (in-flight calls get 10 s more) lets the gateway's round_robin reach pods added by scaling.
        ("grpc.max_connection_age_ms", 60_000),
        ("grpc.max_connection_age_grace_ms", 10_000),
    ]
    server = grpc.aio.server(interceptors=[ServingInterceptor()], options=options)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *servable.service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    servable.register(server)
    if settings.reflection:
        reflection.enable_server_reflection(
            (*servable.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    tls = settings.server_tls()
    address = f"{settings.host}:{settings.port}"
    port = server.add_secure_port(address, tls.credentials()) if tls.enabled else server.add_insecure_port(address)
    _check_bound(port, address)
    probe_server, health_port = None, None
    if settings.health_port is not None:
        probe_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, probe_server)
        health_address = f"{settings.host}:{settings.health_port}"
        health_port = _check_bound(probe_server.add_insecure_port(health_address), health_address)
    metrics_port = start_metrics_server(settings.metrics_port, settings.host) if with_metrics else None
    await server.start()
    if probe_server is not None:
        await probe_server.start()
    log.info("listening", extra={"port": port, "transport": tls.mode, "health_port": health_port,
                                 "metrics_port": metrics_port, "services": list(servable.service_names)})
    running = RunningServer(server, servable, health_servicer, port, metrics_port, settings.shutdown_grace_seconds,
                            probe_server, health_port)
    try:
        await servable.start()
    except BaseException:
        await server.stop(0)
        if probe_server is not None:
            await probe_server.stop(0)
        raise
    await running.mark_serving()
    log.info("serving", extra={"services": list(servable.service_names)})
    return running


def _check_bound(port: int, address: str) -> int:
    if port == 0:
        raise OSError(f"could not bind {address}")
    return port


async def serve(servable: Servable, settings: ServiceSettings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running = await start_server(servable, settings)
    await stop.wait()
    log.info("draining", extra={"grace_seconds": settings.shutdown_grace_seconds})
    await running.shutdown()
    log.info("stopped")


def main(name: str, settings_cls: type[SettingsT], make_servable: Callable[[SettingsT], Servable],
         argv: list[str] | None) -> None:
    """`python -m <service>`: settings from flags and environment, structured logs, serve."""
    settings = load_settings(settings_cls, argv if argv is not None else [])
    configure_logging(name, settings.log_level, settings.log_format)
    asyncio.run(serve(make_servable(settings), settings))
