"""`make loadtest`: real traffic through the gateway at a fixed rate or fixed concurrency.

    python -m bench.loadtest --concurrency 1,8,32 --duration 30        # its own stack, free ports
    python -m bench.loadtest --rate 20 --duration 60 --address localhost:50051   # a running stack

Products come from DATA/traffic in the catalogue's mix (`bench/traffic.py`). Without
`--address` the four services are started on free ports with the bundles in --models; with it,
the running gateway is used and the services' pids are read from --run-dir (`make up`'s run/).
Prints, per run: calls sent, answered, errors by status code, degraded answers, p50/p95/p99
latency and throughput; and each service's resident memory at start and end. Writes
bench/results/loadtest.json and two PNGs: latency over time, latency against concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from bench.load import LoadResult, closed_loop, open_loop
from bench.plots import latency_over_time, latency_vs_concurrency
from bench.stack import ServiceStack, format_rss
from bench.traffic import Traffic, load_traffic, parse_mix
from gateway.client import AsyncClassifierClient
from training.data import PROJECT_ROOT, data_dir

RESULTS = PROJECT_ROOT / "bench" / "results"


def add_stack_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the traffic comes from and which services it goes to: shared by loadtest, bench, soak."""
    parser.add_argument("--data", help="data folder (default: $RAKUTEN_DATA or ../shared/rakuten)")
    parser.add_argument("--models", type=Path, default=PROJECT_ROOT / "models", help="bundles of the own stack")
    parser.add_argument("--address", help="a running gateway (host:port); default: start a stack on free ports")
    parser.add_argument("--run-dir", type=Path, default=PROJECT_ROOT / "run",
                        help="with --address: where the running services' pid files are (make up's run/)")
    parser.add_argument("--service-arg", action="append", default=[], metavar="MODULE:FLAG",
                        help="a flag or environment variable for one service of the own stack, e.g. "
                             "image_service:--max-batch-size=16 or *:TF_NUM_INTRAOP_THREADS=1 (*: the three "
                             "model services)")
    parser.add_argument("--products", type=int, default=1000, help="distinct products drawn from the traffic")
    parser.add_argument("--mix", type=parse_mix, default=None,
                        help="text+image=W,text=W,image=W (default: the catalogue's proportions)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the products' draw")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline of each call, seconds")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of unrecorded load first")


@contextlib.contextmanager
def services(args: argparse.Namespace) -> Iterator[ServiceStack]:
    if args.address:
        yield ServiceStack.attach(args.address, args.run_dir)
        return
    backend_args: dict[str, list[str]] = {}
    backend_env: dict[str, dict[str, str]] = {}
    gateway_args: list[str] = []
    for item in args.service_arg:
        module, _, flag = item.partition(":")
        if not flag.startswith("-"):
            name, _, value = flag.partition("=")
            backend_env.setdefault(module, {})[name] = value
        else:
            (gateway_args if module == "gateway" else backend_args.setdefault(module, [])).append(flag)
    print("starting text_service, image_service, fusion_service and gateway on free ports...", flush=True)
    stack = ServiceStack.start(args.models.resolve(), RESULTS / "logs", backend_args, gateway_args, backend_env)
    try:
        yield stack
    finally:
        stack.stop()


class Driver:
    """Classifies the traffic's products in turn through one client channel; counts degraded answers."""

    def __init__(self, traffic: Traffic, address: str, timeout: float, top_k: int):
        self.products = traffic.products
        self.address = address
        self.timeout = timeout
        self.top_k = top_k
        self.degraded = 0
        self.client: AsyncClassifierClient | None = None

    async def __aenter__(self) -> "Driver":
        self.client = AsyncClassifierClient(self.address, timeout=self.timeout)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.client.close()

    async def call(self, i: int) -> None:
        answer = await self.client.classify(self.products[i % len(self.products)], self.top_k)
        self.degraded += answer.degraded

    async def warm_up(self, seconds: float, concurrency: int = 8) -> None:
        """Connections, TF graphs for the batch shapes, thread pools: before anything is measured."""
        if seconds > 0:
            await closed_loop(self.call, concurrency, seconds)
        self.degraded = 0

    async def run(self, concurrency: int | None = None, rate: float | None = None, seconds: float = 30.0,
                  progress_every: float | None = 5.0) -> tuple[LoadResult, int]:
        """One closed-loop (concurrency) or open-loop (rate) run; the result and its degraded answers."""
        self.degraded = 0
        if rate:
            result = await open_loop(self.call, rate, seconds, progress_every)
        else:
            result = await closed_loop(self.call, concurrency, seconds, progress_every=progress_every)
        return result, self.degraded


def run_table(runs: list[tuple[str, LoadResult, int]]) -> list[str]:
    """Sent, answered, errors by code, degraded, throughput and latency percentiles, one line per run."""
    lines = [f"{'run':<18} {'sent':>6} {'answered':>8} {'degraded':>8} {'answers/s':>9} "
             f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}  errors by status"]
    for label, result, degraded in runs:
        errors = ", ".join(f"{code} {n}" for code, n in sorted(result.errors.items())) or "none"
        lines.append(f"{label:<18} {result.sent:>6} {result.answered:>8} {degraded:>8} {result.throughput:>9.1f} "
                     f"{result.percentile(50) * 1000:>8.1f} {result.percentile(95) * 1000:>8.1f} "
                     f"{result.percentile(99) * 1000:>8.1f}  {errors}")
    return lines


def run_label(result: LoadResult) -> str:
    return f"rate {result.rate:g}/s" if result.rate else f"concurrency {result.concurrency}"


def machine() -> dict:
    """Where a figure was measured; load average says how busy the shared machine was."""
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.platform(),
            "cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)}


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadtest", description=__doc__.splitlines()[0])
    add_stack_arguments(parser)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--rate", type=float, help="open loop: calls per second")
    mode.add_argument("--concurrency", default="8",
                      help="closed loop: calls in flight; a list (1,8,32) runs each level in turn")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of each run")
    args = parser.parse_args(argv)
    traffic = load_traffic(data_dir(args.data), args.products, args.mix, args.seed)
    levels = [] if args.rate else [int(c) for c in args.concurrency.split(",")]
    print(f"{len(traffic.products)} traffic products: {traffic.describe()}", flush=True)

    with services(args) as stack:
        print(f"gateway {stack.address}; "
              + (f"open loop at {args.rate:g}/s" if args.rate else f"closed loop at concurrency {args.concurrency}")
              + f" for {args.duration:g} s{' each' if len(levels) > 1 else ''}, deadline {args.timeout:g} s",
              flush=True)
        rss_start = stack.rss()

        async def drive() -> list[tuple[str, LoadResult, int]]:
            async with Driver(traffic, stack.address, args.timeout, args.top_k) as driver:
                await driver.warm_up(args.warmup)
                runs = []
                for level in levels or [None]:
                    result, degraded = await driver.run(level, args.rate, args.duration)
                    runs.append((run_label(result), result, degraded))
                return runs

        runs = asyncio.run(drive())
        rss_end = stack.rss()

    print()
    print("\n".join(run_table(runs)))
    print()
    print("\n".join(format_rss(rss_start, rss_end)))
    results = [result for _, result, _ in runs]
    charts = [latency_over_time([(label, result) for label, result, _ in runs], RESULTS / "loadtest-latency-time.png",
                                f"gateway latency over time ({traffic.describe()})"),
              latency_vs_concurrency(results, RESULTS / "loadtest-latency-concurrency.png",
                                     "gateway latency against concurrency")]
    path = write_json("loadtest.json", {
        **machine(), "command": "python -m bench.loadtest " + " ".join(argv if argv is not None else sys.argv[1:]),
        "traffic": traffic.describe(), "runs": [{**result.summary(), "degraded": degraded}
                                                for _, result, degraded in runs],
        "rss_start": rss_start, "rss_end": rss_end})
    print(f"\nwrote {path} and {', '.join(str(c) for c in charts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
