"""Runs a service as its own process (`python -m NAME`) on free ports: for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.tls import ClientTLS, make_channel


PROJECT_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServiceProcess:
    """One service process; `start` returns once its health check says SERVING.

    `tls` is how `channel` (health waits, tests' calls) reaches a service started with TLS flags;
    `root` is the checkout whose code runs (this one, or a worktree of another release).
    """

    def __init__(self, module: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None,
                 tls: ClientTLS | None = None, root: Path = PROJECT_ROOT):
        self.module = module
        self.root = Path(root)
        self.tls = tls
        self.port = free_port()
        self.metrics_port = free_port()
        self.args = ["--host", "127.0.0.1", "--port", str(self.port), "--metrics-port", str(self.metrics_port),
                     "--log-format", "text", *args]
        self.log_path = log_dir / f"{module}-{self.port}.log"
        self.env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(self.root), **(env or {})}
        self.process: subprocess.Popen | None = None
        self.channel: grpc.Channel | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> "ServiceProcess":
        return self.launch().wait_serving(timeout)

    def launch(self) -> "ServiceProcess":
        """Start the process without waiting (start several, then wait for each)."""
        log = self.log_path.open("ab")
        self.process = subprocess.Popen([sys.executable, "-m", self.module, *self.args], cwd=self.root,
                                        env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.channel = make_channel(self.address, self.tls)
        return self

    def wait_serving(self, timeout: float = 120.0) -> "ServiceProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {self.process.returncode}:\n{self.log()}")
            if self.ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"{self.module} not SERVING after {timeout} s:\n{self.log()}")

    def ready(self) -> bool:
        return self.health() == health_pb2.HealthCheckResponse.SERVING

    def health(self, service: str = ""):
        try:
            stub = health_pb2_grpc.HealthStub(self.channel)
            return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1).status
        except grpc.RpcError:
            return None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return response.read().decode()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def kill(self) -> None:
        """SIGKILL: a crash, no drain."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, as Kubernetes does; returns the exit code."""
        if self.channel is not None:
            self.channel.close()
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


class HttpServiceProcess(ServiceProcess):
    """A process that serves HTTP, not gRPC (the web front): ready once GET /healthz answers 200."""

    def __init__(self, module: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None):
        super().__init__(module, args, log_dir, env)
        self.args = ["--host", "127.0.0.1", "--port", str(self.port), "--log-format", "text", *args]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        return http_ready(f"{self.url}/healthz")


def http_ready(url: str) -> bool:
    """Whether GET `url` answers 200 within a second."""
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False
