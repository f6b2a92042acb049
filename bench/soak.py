"""`make soak`: a long open-loop run at 70% of the measured capacity, judged on three criteria.

    python -m bench.soak [--duration 600] [--load 0.7] [--rate R] [--address host:port]

The stack (its own on free ports, or --address) is warmed up, its capacity measured in the same
run (closed loop at concurrency 32, the bench's reference level) unless --rate is given, then the
traffic is sent at `--load` x capacity for `--duration` seconds. PASS or FAIL per criterion:
  errors     no failed call and no degraded answer
  p99        the p99 latency of the last `--window` seconds within 1.5x that of the first
  memory     each service's resident memory grew less than 10% from the start of the soak (after
             warm-up and the capacity run, so start-up allocations do not count) to its end
The exit status is 1 if any criterion fails. Per minute it also prints the p99 and the CPUs
used by the stack and the load against those used by everything else on the machine, so that a
neighbour taking the CPU shows as such. Writes bench/results/soak.json and
bench/results/soak-latency-time.png.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from bench.loadtest import RESULTS, Driver, add_stack_arguments, machine, run_table, services, write_json
from bench.plots import latency_over_time
from bench.stack import ServiceStack, format_rss, machine_busy_seconds
from bench.traffic import load_traffic
from training.data import data_dir

P99_RATIO_LIMIT = 1.5
RSS_GROWTH_LIMIT = 0.10
CAPACITY_CONCURRENCY = 32


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _sample(stack: ServiceStack, started: float) -> dict:
    """Memory of each service, and CPU time used so far by the stack and load and by the machine."""
    return {"seconds": round(time.monotonic() - started, 1), "rss": stack.rss(),
            "cpu_ours_s": stack.cpu_seconds(), "cpu_machine_s": machine_busy_seconds()}


async def _sample_every(stack: ServiceStack, every: float, started: float, samples: list) -> None:
    while True:
        samples.append(_sample(stack, started))
        await asyncio.sleep(every)


def cpu_per_minute(samples: list[dict]) -> list[tuple[float, float]]:
    """(CPUs used by the stack and the load, CPUs used by everything else) in each minute: on a
    shared machine, the second says when neighbours took the CPU."""
    minutes = []
    marks = [next(s for s in samples if s["seconds"] >= 60 * m) for m in range(int(samples[-1]["seconds"] // 60) + 1)]
    for a, b in zip(marks, marks[1:]):
        elapsed = b["seconds"] - a["seconds"]
        ours = (b["cpu_ours_s"] - a["cpu_ours_s"]) / elapsed
        minutes.append((ours, (b["cpu_machine_s"] - a["cpu_machine_s"]) / elapsed - ours))
    return minutes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    add_stack_arguments(parser)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of the soak")
    parser.add_argument("--load", type=float, default=0.7, help="fraction of the measured capacity to send")
    parser.add_argument("--rate", type=float, help="calls per second to send (skips measuring the capacity)")
    parser.add_argument("--capacity-seconds", type=float, default=30.0, help="duration of the capacity run")
    parser.add_argument("--window", type=float, default=60.0, help="seconds of the first and last windows")
    args = parser.parse_args(argv)
    traffic = load_traffic(data_dir(args.data), args.products, args.mix, args.seed)
    window = min(args.window, args.duration / 3)
    print(f"{len(traffic.products)} traffic products: {traffic.describe()}", flush=True)

    with services(args) as stack:
        async def soak():
            async with Driver(traffic, stack.address, args.timeout, args.top_k) as driver:
                await driver.warm_up(args.warmup, concurrency=CAPACITY_CONCURRENCY)
                capacity = None
                if not args.rate:
                    print(f"capacity: closed loop at concurrency {CAPACITY_CONCURRENCY} for "
                          f"{args.capacity_seconds:g} s", flush=True)
                    measured, _ = await driver.run(CAPACITY_CONCURRENCY, None, args.capacity_seconds,
                                                   progress_every=None)
                    capacity = measured.throughput
                rate = args.rate or args.load * capacity
                print((f"capacity {capacity:.1f}/s; " if capacity else "")
                      + f"soak: open loop at {rate:.1f}/s for {args.duration:g} s", flush=True)
                samples: list[dict] = []
                started = time.monotonic()
                sampler = asyncio.create_task(_sample_every(stack, 10.0, started, samples))
                try:
                    result, degraded = await driver.run(None, rate, args.duration, progress_every=30.0)
                finally:
                    sampler.cancel()
                samples.append(_sample(stack, started))
                return capacity, rate, result, degraded, samples

        capacity, rate, result, degraded, samples = asyncio.run(soak())

    rss_start, rss_end = samples[0]["rss"], samples[-1]["rss"]
    first, last = result.window(0, window), result.window(args.duration - window, args.duration)
    p99_first, p99_last = first.percentile(99), last.percentile(99)
    ratio = p99_last / p99_first
    growth = {module: (rss_end[module] - start) / start for module, start in rss_start.items()
              if start and rss_end.get(module)}
    failed_calls = sum(result.errors.values())
    checks = {
        "errors": (failed_calls == 0 and degraded == 0,
                   f"{failed_calls} failed calls ({dict(result.errors) or 'none'}), {degraded} degraded answers, "
                   f"of {result.sent} sent"),
        "p99": (ratio <= P99_RATIO_LIMIT,
                f"last {window:g} s {p99_last * 1000:.1f} ms / first {window:g} s {p99_first * 1000:.1f} ms "
                f"= {ratio:.2f} (limit {P99_RATIO_LIMIT})"),
        "memory": (bool(growth) and len(growth) == len(rss_start) and max(growth.values()) < RSS_GROWTH_LIMIT,
                   ", ".join(f"{module} {value:+.1%}" for module, value in growth.items())
                   + f" (limit {RSS_GROWTH_LIMIT:+.0%})" if growth else "no service pids to read"),
    }
    print()
    print("\n".join(run_table([(f"soak {rate:.1f}/s", result, degraded)])))
    minutes = [result.window(start, start + 60).percentile(99) * 1000 for start in range(0, int(args.duration), 60)]
    cpu = cpu_per_minute(samples)
    print("p99 per minute (ms): " + ", ".join(f"{value:.0f}" for value in minutes))
    print("CPUs used per minute, stack and load / others: " + ", ".join(f"{ours:.1f}/{others:.1f}"
                                                                     for ours, others in cpu))
    print()
    print("\n".join(format_rss(rss_start, rss_end)))
    print()
    for name, (ok, detail) in checks.items():
        print(f"{verdict(ok)}  {name:<7} {detail}")
    passed = all(ok for ok, _ in checks.values())
    print(f"soak: {verdict(passed)}")
    chart = latency_over_time([(f"{rate:.1f}/s", result)], RESULTS / "soak-latency-time.png",
                              f"soak at {rate:.1f}/s ({args.load:.0%} of {capacity:.1f}/s)" if capacity
                              else f"soak at {rate:.1f}/s")
    path = write_json("soak.json", {
        **machine(), "command": "python -m bench.soak " + " ".join(argv if argv is not None else sys.argv[1:]),
        "traffic": traffic.describe(), "capacity_per_s": capacity, "rate_per_s": rate,
        "result": {**result.summary(), "degraded": degraded},
        "p99_first_ms": p99_first * 1000, "p99_last_ms": p99_last * 1000, "p99_per_minute_ms": minutes,
        "cpus_per_minute_ours_others": cpu, "samples": samples,
        "checks": {name: {"pass": ok, "detail": detail} for name, (ok, detail) in checks.items()},
        "pass": passed})
    print(f"\nwrote {path} and {chart}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
