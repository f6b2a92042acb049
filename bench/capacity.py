"""`make bench`: end-to-end capacity through the gateway against the models in process, in one run.

On the same traffic products (`bench/traffic.py`), in this order:
  (1) the stack starts (its own, free ports; or --address) and is warmed up
  (2) in process (`bench/in_process.py`): each model's items/s at each batch size, and each
      product's time alone at batch 1
  (3) through the gateway, closed loop at concurrency 1, 8, 32 and 64
Serving efficiency = gateway answers/s at 32 / in-process products/s on the same mix (each model
at its best batch size, taking turns); target >= 0.8. Latency overhead = gateway p50 at
concurrency 1 - in-process median single-product time; target <= 10 ms. Results go to stdout,
bench/results/capacity.json and bench/results/capacity-latency-concurrency.png; the soak reads
the capacity from the JSON when it is not measured again.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys

from bench.in_process import Pipelines, median_ms, mix_throughput
from bench.load import LoadResult
from bench.loadtest import RESULTS, Driver, add_stack_arguments, machine, run_label, run_table, services, write_json
from bench.plots import latency_vs_concurrency
from bench.stack import format_rss
from bench.traffic import load_traffic
from training.data import data_dir

EFFICIENCY_TARGET = 0.8
OVERHEAD_TARGET_MS = 10.0


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__.splitlines()[0])
    add_stack_arguments(parser)
    parser.add_argument("--levels", default="1,8,32,64", help="gateway concurrency levels")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each gateway level")
    parser.add_argument("--batch-sizes", default="1,8,16,32,64", help="in-process batch sizes")
    parser.add_argument("--batch-seconds", type=float, default=4.0, help="duration of each in-process batch size")
    parser.add_argument("--single-products", type=int, default=100, help="products timed alone in process")
    args = parser.parse_args(argv)
    traffic = load_traffic(data_dir(args.data), args.products, args.mix, args.seed)
    levels = [int(level) for level in args.levels.split(",")]
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    print(f"{len(traffic.products)} traffic products: {traffic.describe()}", flush=True)

    with services(args) as stack:
        rss_start = stack.rss()
        asyncio.run(_warm_up(traffic, stack.address, args))
        print("(2) in process: each model at each batch size", flush=True)
        pipelines = Pipelines(args.models.resolve())
        raw = pipelines.throughput(traffic.products, sizes, args.batch_seconds)
        single = pipelines.single_product_seconds(traffic.products, args.single_products)
        pipelines.close()
        del pipelines
        gc.collect()
        best_size = {name: max(values, key=values.get) for name, values in raw.items()}
        best = {name: raw[name][best_size[name]] for name in raw}
        in_process = mix_throughput(traffic.products, best)
        print(f"(3) through the gateway {stack.address}: concurrency {args.levels}, {args.seconds:g} s each",
              flush=True)
        runs = asyncio.run(_levels(traffic, stack.address, levels, args))
        rss_end = stack.rss()

    results = {result.concurrency: result for _, result, _ in runs}
    reference = results.get(32) or results[max(results)]
    efficiency = reference.throughput / in_process
    single_ms = median_ms(single)
    overhead_ms = results[min(results)].percentile(50) * 1000 - single_ms
    print()
    print("in process, best batch size per model (items/s):")
    for name in raw:
        print(f"  {name:<7} batch {best_size[name]:>3}: {best[name]:8.1f}   "
              + "  ".join(f"{size}: {value:.1f}" for size, value in raw[name].items()))
    print(f"  the traffic's mix, models taking turns: {in_process:.1f} products/s; "
          f"one product alone: median {single_ms:.1f} ms")
    print()
    print("\n".join(run_table(runs)))
    print()
    print("\n".join(format_rss(rss_start, rss_end)))
    print()
    print(f"serving efficiency (gateway at {reference.concurrency} / in process): "
          f"{reference.throughput:.1f} / {in_process:.1f} = {efficiency:.2f}   "
          f"target >= {EFFICIENCY_TARGET}  {verdict(efficiency >= EFFICIENCY_TARGET)}")
    print(f"latency overhead (gateway p50 at concurrency {min(results)} - in process alone): "
          f"{results[min(results)].percentile(50) * 1000:.1f} - {single_ms:.1f} = {overhead_ms:+.1f} ms   "
          f"target <= {OVERHEAD_TARGET_MS:g} ms  {verdict(overhead_ms <= OVERHEAD_TARGET_MS)}")
    chart = latency_vs_concurrency([result for _, result, _ in runs], RESULTS / "capacity-latency-concurrency.png",
                                   f"gateway latency and throughput ({traffic.describe()})")
    path = write_json("capacity.json", {
        **machine(), "command": "python -m bench.capacity " + " ".join(argv if argv is not None else sys.argv[1:]),
        "traffic": traffic.describe(), "in_process_items_per_s": raw, "best_batch_size": best_size,
        "in_process_products_per_s": in_process, "single_product_median_ms": single_ms,
        "gateway": [{**result.summary(), "degraded": degraded} for _, result, degraded in runs],
        "capacity_per_s": max(result.throughput for result in results.values()),
        "serving_efficiency": efficiency, "latency_overhead_ms": overhead_ms,
        "rss_start": rss_start, "rss_end": rss_end})
    print(f"\nwrote {path} and {chart}")
    return 0


async def _warm_up(traffic, address: str, args) -> None:
    print(f"(1) warming up the stack for {args.warmup:g} s", flush=True)
    async with Driver(traffic, address, args.timeout, args.top_k) as driver:
        await driver.warm_up(args.warmup, concurrency=32)


async def _levels(traffic, address: str, levels: list[int], args) -> list[tuple[str, LoadResult, int]]:
    async with Driver(traffic, address, args.timeout, args.top_k) as driver:
        await driver.warm_up(min(args.warmup, 2.0))
        runs = []
        for level in levels:
            result, degraded = await driver.run(level, None, args.seconds, progress_every=10.0)
            runs.append((run_label(result), result, degraded))
        return runs


if __name__ == "__main__":
    sys.exit(main())
