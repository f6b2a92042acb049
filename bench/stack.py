"""The services a load run drives: its own four processes on free ports, or a stack already running.

`ServiceStack.start` runs text, image and fusion services on a models folder and a gateway in
front of them (the gateway settings the fusion bundle records, as `make up` applies them);
`ServiceStack.attach` uses a running gateway and finds the services' pids in `make up`'s run
folder. Either way `rss()` reads each service's resident memory from /proc/<pid>/status, and
`cpu_seconds()` the CPU time the services and this process (the load) have used, which, set
against the whole machine's (`machine_busy_seconds`), tells how much CPU others took.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ops.local_stack import gateway_flags
from ops.service_process import ServiceProcess

BACKENDS = ("text_service", "image_service", "fusion_service")
SERVICES = (*BACKENDS, "gateway")


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a process (VmRSS), or None if it is gone or not readable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process has used, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime and stime, fields 14 and 15
    except (OSError, ValueError, IndexError):
        return None


def machine_busy_seconds() -> float:
    """CPU time all CPUs have spent on anything but idling (including time stolen by a hypervisor)."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


class ServiceStack:
    """A gateway address, the pids of the services behind it, and their processes if started here."""

    def __init__(self, address: str, pids: dict[str, int], processes: dict[str, ServiceProcess] | None = None):
        self.address = address
        self.pids = pids
        self.processes = processes or {}

    @classmethod
    def start(cls, models: Path, logs: Path, backend_args: dict[str, list[str]] | None = None,
              gateway_args: Sequence[str] = (), backend_env: dict[str, dict[str, str]] | None = None
              ) -> "ServiceStack":
        """Start the three model services (in parallel), then the gateway; returns once all serve.

        `backend_args` and `backend_env` add flags and environment variables per module (for
        every backend under the key "*"), such as TensorFlow's TF_NUM_INTRAOP_THREADS.
        """
        logs.mkdir(parents=True, exist_ok=True)
        backend_args, backend_env = backend_args or {}, backend_env or {}
        processes = {module: ServiceProcess(module, ["--models-dir", str(models), *backend_args.get("*", []),
                                                     *backend_args.get(module, [])], logs,
                                            {**backend_env.get("*", {}), **backend_env.get(module, {})})
                     for module in BACKENDS}
        try:
            for process in processes.values():
                process.launch()
            for process in processes.values():
                process.wait_serving(300)
            processes["gateway"] = gateway_process(
                models, logs, {module: p.address for module, p in processes.items()}, gateway_args).start()
        except BaseException:
            for process in processes.values():
                process.kill()
            raise
        return cls(processes["gateway"].address, {module: p.process.pid for module, p in processes.items()},
                   processes)

    @classmethod
    def attach(cls, address: str, run_dir: Path) -> "ServiceStack":
        """A running stack (`make up`): pids from run_dir/<service>.pid where they exist."""
        pids = {}
        for module in SERVICES:
            path = run_dir / f"{module}.pid"
            if path.is_file() and rss_bytes(int(path.read_text())) is not None:
                pids[module] = int(path.read_text())
        return cls(address, pids)

    def rss(self) -> dict[str, int | None]:
        return {module: rss_bytes(pid) for module, pid in self.pids.items()}

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


def gateway_process(models: Path, logs: Path, backends: dict[str, str], args: Sequence[str] = ()) -> ServiceProcess:
    """A gateway (not started) calling `backends` ({module: address}), with the fusion choice the
    bundle in `models` records."""
    addresses = [flag for module in BACKENDS
                 for flag in (f"--{module.removesuffix('_service')}-address", backends[module])]
    return ServiceProcess("gateway", [*gateway_flags(models), *addresses, *args], logs)


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
