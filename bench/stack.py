"""The services a load run drives: its own four processes on free ports, or a stack already running.

`ServiceStack.start` runs text, image and fusion services on a models folder and a gateway in
front of them (the gateway settings the fusion bundle records, as `make up` applies them);
`ServiceStack.attach` uses a running gateway and finds the services' pids in `make up`'s run
folder. A stack can run another checkout's code (`root`: a git worktree of an earlier release),
so that two releases are measured side by side. Either way `rss()` and `pss()` read each
service's memory (psutil), and `cpu_seconds()` the CPU time the services and this process (the
load) have used, which, set against the whole machine's (`machine_busy_seconds`), tells how much
CPU others took.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import psutil

from common import services
from ops import pidfiles
from ops.service_process import PROJECT_ROOT, ServiceProcess

BACKENDS = tuple(s.module for s in services.SERVICES if s.uses_models)
SERVICES = (*BACKENDS, services.GATEWAY.module)


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a process, or None if it is gone or not readable."""
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return None


def pss_bytes(pid: int) -> int | None:
    """Proportional set size: resident memory with each page shared by n processes counted 1/n.

    What a node really spends on a process: the TensorFlow or ONNX Runtime libraries mapped by
    several services count once in the sum, not once per service as RSS counts them.
    """
    try:
        return psutil.Process(pid).memory_full_info().pss
    except psutil.Error:
        return None


def process_cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process has used, or None if it is gone."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


def machine_busy_seconds() -> float:
    """CPU time all CPUs have spent on anything but idling (including time stolen by a hypervisor)."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0) - getattr(times, "guest", 0.0) \
        - getattr(times, "guest_nice", 0.0)


class ServiceStack:
    """A gateway address, the pids of the services behind it, and their processes if started here."""

    def __init__(self, address: str, pids: dict[str, int], processes: dict[str, ServiceProcess] | None = None):
        self.address = address
        self.pids = pids
        self.processes = processes or {}

    @classmethod
    def start(cls, models: Path, logs: Path, backend_args: dict[str, list[str]] | None = None,
              gateway_args: Sequence[str] = (), backend_env: dict[str, dict[str, str]] | None = None,
              root: Path = PROJECT_ROOT) -> "ServiceStack":
        """Start the three model services (in parallel), then the gateway; returns once all serve.

        `backend_args` and `backend_env` add flags and environment variables per module (for
        every backend under the key "*"), such as TensorFlow's TF_NUM_INTRAOP_THREADS.
        """
        logs.mkdir(parents=True, exist_ok=True)
        backend_args, backend_env = backend_args or {}, backend_env or {}
        processes = {module: ServiceProcess(module, ["--models-dir", str(models), *backend_args.get("*", []),
                                                     *backend_args.get(module, [])], logs,
                                            {**backend_env.get("*", {}), **backend_env.get(module, {})},
                                            root=root)
                     for module in BACKENDS}
        try:
            for process in processes.values():
                process.launch()
            for process in processes.values():
                process.wait_serving(300)
            processes["gateway"] = gateway_process(
                models, logs, {module: p.address for module, p in processes.items()}, gateway_args, root).start()
        except BaseException:
            for process in processes.values():
                process.kill()
            raise
        return cls(processes["gateway"].address, {module: p.process.pid for module, p in processes.items()},
                   processes)

    @classmethod
    def attach(cls, address: str, run_dir: Path) -> "ServiceStack":
        """A running stack (`make up`): pids from run_dir/<service>.pid where they exist."""
        pids = {module: pid for module in SERVICES if (pid := pidfiles.pid(run_dir / f"{module}.pid")) is not None}
        return cls(address, pids)

    def rss(self) -> dict[str, int | None]:
        return {module: rss_bytes(pid) for module, pid in self.pids.items()}

    def pss(self) -> dict[str, int | None]:
        return {module: pss_bytes(pid) for module, pid in self.pids.items()}

    def cpu_seconds(self) -> float:
        """CPU time used so far by the services and by this process (the load generator)."""
        return sum(filter(None, map(process_cpu_seconds, [*self.pids.values(), os.getpid()])))

    def stop(self) -> None:
        """SIGTERM, gateway first (it drains its callers before the backends go)."""
        for module in reversed(list(self.processes)):
            self.processes[module].stop()

    def __enter__(self) -> "ServiceStack":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def gateway_process(models: Path, logs: Path, backends: dict[str, str], args: Sequence[str] = (),
                    root: Path = PROJECT_ROOT) -> ServiceProcess:
    """A gateway (not started) calling `backends` ({module: address}), with the flags `make up` of
    the checkout `root` gives it for the bundles in `models`."""
    addresses = [flag for module in BACKENDS
                 for flag in (f"--{module.removesuffix('_service')}-address", backends[module])]
    return ServiceProcess("gateway", [*gateway_flags(root, models), *addresses, *args], logs, root=root)


def gateway_flags(root: Path, models: Path) -> list[str]:
    """`ops.local_stack.gateway_flags` as the checkout `root` defines it (asked in its own process,
    so that an earlier release gets the flags its own gateway understands)."""
    code = "import json, sys; from ops.local_stack import gateway_flags; print(json.dumps(gateway_flags(sys.argv[1])))"
    out = subprocess.run([sys.executable, "-c", code, str(models)], cwd=root, check=True, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(root)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def format_rss(before: dict[str, int | None], after: dict[str, int | None]) -> list[str]:
    """One line per service: resident memory at start and end, and the growth."""
    if not before:
        return ["resident memory: no service pids (run/*.pid not found; pass --run-dir)"]
    lines = [f"{'service':<15} {'RSS start':>10} {'RSS end':>10} {'growth':>8}"]
    for module, start in before.items():
        end = after.get(module)
        if start is None or end is None:
            lines.append(f"{module:<15} {'-':>10} {'-':>10}   (process gone)")
            continue
        lines.append(f"{module:<15} {start / 2**20:>7.0f} MiB {end / 2**20:>7.0f} MiB {(end - start) / start:>+8.1%}")
    return lines
