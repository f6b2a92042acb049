"""A local Prometheus for `make up-monitoring`: Debian's binary run as a plain process.

    python -m ops.prometheus up [--port 9090]   # start it (installs Debian's prometheus if missing)
    python -m ops.prometheus status
    python -m ops.prometheus down

It scrapes the four services of `make up` with monitoring/prometheus.yml and evaluates
monitoring/rules.yml; data, log and pid file live in run/prometheus/. Like the services, it runs
in its own session so it outlives `make`; `make down` stops it. Tests use `LocalPrometheus` with
their own targets and folder.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ops import pidfiles, tools

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG = PROJECT_ROOT / "monitoring" / "prometheus.yml"
RULES = PROJECT_ROOT / "monitoring" / "rules.yml"
RUN_DIR = PROJECT_ROOT / "run" / "prometheus"
DEFAULT_PORT = 9090


def config_for(targets: dict[str, str], scrape_interval: str | None = None) -> dict:
    """The committed configuration with other targets (job name -> host:port) and absolute rule paths."""
    import yaml

    config = yaml.safe_load(CONFIG.read_text())
    config["rule_files"] = [str((CONFIG.parent / path).resolve()) for path in config.get("rule_files", [])]
    config["scrape_configs"] = [{"job_name": job, "static_configs": [{"targets": [address]}]}
                                for job, address in targets.items()]
    if scrape_interval:
        config["global"].update(scrape_interval=scrape_interval, scrape_timeout=scrape_interval,
                                evaluation_interval=scrape_interval)
    return config


def _pid(run_dir: Path) -> int | None:
    return pidfiles.pid(run_dir / "prometheus.pid")


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start(config: Path, run_dir: Path, port: int, timeout: float = 60.0) -> int:
    """Start Prometheus on 127.0.0.1:`port` (or find it running); returns its pid once ready."""
    run_dir.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    pid = _pid(run_dir)
    if pid is None:
        if _port_taken(port):
            raise RuntimeError(f"port {port} is taken by another process: choose one with PROMETHEUS_PORT=...")
        binary = tools.prometheus()
        args = [binary, f"--config.file={config}", f"--storage.tsdb.path={run_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=2d",
                "--web.enable-lifecycle"]
        log = (run_dir / "prometheus.log").open("ab")
        process = subprocess.Popen(args, cwd=run_dir, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        pid = process.pid
        pidfiles.write(run_dir / "prometheus.pid", pid)
    deadline = time.monotonic() + timeout
    while not ready(url):
        if _pid(run_dir) is None:
            raise RuntimeError(f"prometheus exited; its log:\n{_log_tail(run_dir)}")
        if time.monotonic() > deadline:
            stop(run_dir)
            raise RuntimeError(f"prometheus not ready after {timeout:.0f} s; its log:\n{_log_tail(run_dir)}")
        time.sleep(0.3)
    return pid


def stop(run_dir: Path, grace: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL after `grace`; False when it was not running."""
    return bool(pidfiles.stop([run_dir / "prometheus.pid"], grace))


def _log_tail(run_dir: Path) -> str:
    path = run_dir / "prometheus.log"
    return path.read_text(errors="replace")[-3000:] if path.is_file() else "(no log)"


class LocalPrometheus:
    """A Prometheus of its own in `run_dir`, scraping `targets` (job -> host:port): for tests."""

    def __init__(self, targets: dict[str, str], run_dir: Path, scrape_interval: str = "1s"):
        import yaml

        from ops.service_process import free_port

        self.run_dir = run_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = run_dir / "prometheus.yml"
        run_dir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(yaml.safe_dump(config_for(targets, scrape_interval), sort_keys=False))

    def start(self) -> "LocalPrometheus":
        start(self.config, self.run_dir, self.port)
        return self

    def stop(self) -> None:
        stop(self.run_dir)

    def log(self) -> str:
        return _log_tail(self.run_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.prometheus", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PROMETHEUS_PORT", DEFAULT_PORT)))
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR)
    args = parser.parse_args(argv)
    url = f"http://127.0.0.1:{args.port}"
    if args.command == "up":
        try:
            pid = start(args.config.resolve(), args.run_dir.resolve(), args.port)
        except (RuntimeError, tools.ToolMissing) as error:
            print(f"prometheus: {error}", file=sys.stderr)
            return 1
        print(f"prometheus      ready on {url} (pid {pid}; data and log in {args.run_dir}/)\n"
              f"  targets: {url}/targets   rules: {url}/rules   check: make check-monitoring")
        return 0
    if args.command == "down":
        if stop(args.run_dir):
            print("prometheus      stopped")
        return 0
    pid = _pid(args.run_dir)
    state = ("ready" if ready(url) else "not ready") if pid else "not running"
    print(f"prometheus      :{args.port}  pid {pid or '-':<8} {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
