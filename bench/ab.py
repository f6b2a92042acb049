"""Compare two service configurations on a shared, noisy machine: interleaved A/B.

    python -m bench.ab --b "*:--max-batch-delay-ms=0"
    python -m bench.ab --b "*:TF_NUM_INTRAOP_THREADS=1 *:TF_NUM_INTEROP_THREADS=1" --levels 1,32

Two stacks run at once (each its own four services on free ports, idle while the other is
measured); at each concurrency level they take turns in short slots, A B B A A B ..., so that
a neighbour's load falls on both alike. Prints throughput and p50/p99 latency of each, the
per-slot throughputs, and B's ratios to A. Flags are MODULE:FLAG (or MODULE:ENV=VALUE) as for
--service-arg.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import shlex
import sys

from bench.load import LoadResult
from bench.loadtest import Driver, add_stack_arguments, services
from bench.traffic import load_traffic
from training.data import data_dir


def merged(results: list[LoadResult]) -> LoadResult:
    """The slots of one configuration as one run."""
    return LoadResult(results[0].concurrency, sum(r.seconds for r in results), None,
                      [record for result in results for record in result.records])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.splitlines()[0])
    add_stack_arguments(parser)
    parser.add_argument("--a", default="", help="flags of configuration A, MODULE:FLAG separated by spaces")
    parser.add_argument("--b", default="", help="flags of configuration B")
    parser.add_argument("--levels", default="1,32", help="concurrency levels")
    parser.add_argument("--slots", type=int, default=6, help="slots per configuration and level")
    parser.add_argument("--slot-seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.address:
        parser.error("--address: A and B each need a stack of their own")
    traffic = load_traffic(data_dir(args.data), args.products, args.mix, args.seed)
    configs = {}
    for name, flags in (("A", args.a), ("B", args.b)):
        configs[name] = copy.copy(args)
        configs[name].service_arg = [*args.service_arg, *shlex.split(flags)]
    print(f"A: {args.a or '(defaults)'}\nB: {args.b or '(defaults)'}\n{traffic.describe()}", flush=True)

    with services(configs["A"]) as stack_a, services(configs["B"]) as stack_b:
        async def compare() -> None:
            async with Driver(traffic, stack_a.address, args.timeout, args.top_k) as a, \
                    Driver(traffic, stack_b.address, args.timeout, args.top_k) as b:
                drivers = {"A": a, "B": b}
                for driver in drivers.values():
                    await driver.warm_up(args.warmup, concurrency=32)
                for level in (int(level) for level in args.levels.split(",")):
                    slots: dict[str, list[LoadResult]] = {"A": [], "B": []}
                    for slot in range(args.slots):
                        for name in ("A", "B") if slot % 2 == 0 else ("B", "A"):
                            result, _ = await drivers[name].run(level, None, args.slot_seconds, progress_every=None)
                            slots[name].append(result)
                    runs = {name: merged(results) for name, results in slots.items()}
                    for name, run in runs.items():
                        print(f"concurrency {level:>3} {name}: {run.throughput:6.1f}/s  "
                              f"p50 {run.percentile(50) * 1000:7.1f} ms  p99 {run.percentile(99) * 1000:7.1f} ms  "
                              f"errors {sum(run.errors.values())}  slots {[round(r.throughput) for r in slots[name]]}",
                              flush=True)
                    a_run, b_run = runs["A"], runs["B"]
                    print(f"concurrency {level:>3} B/A: throughput {b_run.throughput / a_run.throughput:.2f}, "
                          f"p50 {b_run.percentile(50) / a_run.percentile(50):.2f}", flush=True)

        asyncio.run(compare())
    return 0


if __name__ == "__main__":
    sys.exit(main())
