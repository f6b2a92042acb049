"""`make bench-image`: the image path in process and through gRPC, with batching on and off.

In one run, on real images from DATA/traffic/images:
  (a) in process: preprocessing (the service's decode threads) + model, at each batch size; the best
  (b) image_service through gRPC, one image per call, at concurrency 1, 8 and 32, batching on
  (c) the same at concurrency 32 with batching off (max batch size 1)
and p50/p95/p99 latency for each. Serving efficiency = (b at 32) / (a); batching gain =
(b at 32) / (c). Results go to stdout and bench/results/image.json.

`--compare-runtimes tensorflow,onnx` (`make bench-runtimes`) instead compares the inference
runtimes on the same images in one interleaved run (`bench/runtimes.py`), and the decode step's
share of the image path; results in bench/results/runtimes.json.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import grpc

from bench.in_process import batch_throughput
from bench.load import closed_loop
from common.model_bundle import read_bundle
from common.runtime import RuntimeConfig
from image_service.preprocessing import prepare_image
from rakuten.v1 import image_pb2, image_pb2_grpc
from ops.service_process import ServiceProcess
from training.data import PROJECT_ROOT, data_dir

RESULTS = PROJECT_ROOT / "bench" / "results"


def load_images(root: Path, count: int) -> list[bytes]:
    paths = sorted((root / "traffic" / "images").glob("*.jpg"))[:count]
    if not paths:
        raise FileNotFoundError(f"no images under {root / 'traffic' / 'images'}")
    return [p.read_bytes() for p in paths]


def in_process(models: Path, images: list[bytes], batch_sizes: list[int], decode_threads: int,
               seconds: float, runtime: str = "auto") -> dict[int, float]:
    """Images per second of decode (thread pool) + model at each batch size, the service's code path."""
    from image_service.model import ImageModel

    model = ImageModel(read_bundle(models, "image"), RuntimeConfig(runtime))
    with concurrent.futures.ThreadPoolExecutor(decode_threads) as pool:
        def prepare(data: bytes):
            return prepare_image(data, size=model.input_shape[0])

        return batch_throughput("in process", lambda batch: model.predict(list(pool.map(prepare, batch))),
                                images, batch_sizes, seconds)


async def through_grpc(address: str, images: list[bytes], concurrency: int, seconds: float) -> dict:
    async with grpc.aio.insecure_channel(address, options=[("grpc.max_send_message_length", 32 << 20)]) as channel:
        stub = image_pb2_grpc.ImageEncoderStub(channel)

        async def call(i: int):
            request = image_pb2.EncodeImageRequest(images=[image_pb2.ImageInput(data=images[i % len(images)])],
                                                   top_k=1, omit_embedding=True)
            return await stub.Encode(request, timeout=60)

        await closed_loop(call, concurrency, min(seconds, 3.0))  # warm-up: connections, traces, batch shapes
        return (await closed_loop(call, concurrency, seconds)).summary()


def serve(models: Path, logs: Path, batch_size: int, delay_ms: float, runtime: str = "auto") -> ServiceProcess:
    return ServiceProcess("image_service", ["--models-dir", str(models), "--model-poll-seconds", "0",
                                            "--runtime", runtime,
                                            "--max-batch-size", str(batch_size), "--max-batch-delay-ms", str(delay_ms),
                                            "--max-queue-size", "4096", "--log-level", "WARNING"], logs).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_image", description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="data folder (default: $RAKUTEN_DATA or ../shared/rakuten)")
    parser.add_argument("--models", type=Path, default=PROJECT_ROOT / "models")
    parser.add_argument("--images", type=int, default=256, help="distinct traffic images to cycle through")
    parser.add_argument("--seconds", type=float, default=15.0, help="duration of each measurement")
    parser.add_argument("--batch-sizes", default="1,8,16,32,64")
    parser.add_argument("--max-batch-size", type=int, default=32, help="image_service setting with batching on")
    parser.add_argument("--max-batch-delay-ms", type=float, default=5.0)
    parser.add_argument("--decode-threads", type=int, default=2)
    parser.add_argument("--runtime", default="auto", help="image_service --runtime for (a), (b) and (c)")
    parser.add_argument("--compare-runtimes", help="comma-separated runtimes to compare instead (tensorflow,onnx)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of --compare-runtimes")
    args = parser.parse_args(argv)
    models = args.models.resolve()
    images = load_images(data_dir(args.data), args.images)
    if args.compare_runtimes:
        return compare_runtimes(models, images, args)
    logs = RESULTS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    print(f"{len(images)} traffic images, {args.seconds:.0f} s per measurement, {os.cpu_count()} CPUs", flush=True)

    print("(a) in process: decode + model", flush=True)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    raw = in_process(models, images, sizes, args.decode_threads, args.seconds, args.runtime)
    best_size = max(raw, key=raw.get)

    runs = {}
    print(f"(b) image_service, batching on (max batch {args.max_batch_size}, max delay {args.max_batch_delay_ms} ms)",
          flush=True)
    service = serve(models, logs, args.max_batch_size, args.max_batch_delay_ms, args.runtime)
    try:
        for concurrency in (1, 8, 32):
            runs[f"batching on, concurrency {concurrency}"] = asyncio.run(
                through_grpc(service.address, images, concurrency, args.seconds))
            print(f"  {runs[f'batching on, concurrency {concurrency}']}", flush=True)
    finally:
        service.stop()
    print("(c) image_service, batching off (max batch 1)", flush=True)
    service = serve(models, logs, 1, 0.0, args.runtime)
    try:
        runs["batching off, concurrency 32"] = asyncio.run(through_grpc(service.address, images, 32, args.seconds))
        print(f"  {runs['batching off, concurrency 32']}", flush=True)
    finally:
        service.stop()

    on32 = runs["batching on, concurrency 32"]["throughput_per_s"]
    off32 = runs["batching off, concurrency 32"]["throughput_per_s"]
    efficiency, gain = on32 / raw[best_size], on32 / off32
    print(f"\n{'run':<30} {'images/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} errors")
    print(f"{'in process, batch ' + str(best_size) + ' (best)':<30} {raw[best_size]:>9.1f}")
    for name, run in runs.items():
        print(f"{name:<30} {run['throughput_per_s']:>9.1f} {run['p50_ms']:>8.1f} {run['p95_ms']:>8.1f} "
              f"{run['p99_ms']:>8.1f} {run['errors'] or 0}")
    print(f"\nserving efficiency (gRPC at 32 / in process): {efficiency:.2f}   (target >= 0.85)")
    print(f"batching gain (batching on / off at 32):      {gain:.2f}   (target >= 2)")

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "image.json").write_text(json.dumps({
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.platform(),
        "cpus": os.cpu_count(), "images": len(images), "seconds": args.seconds,
        "in_process_images_per_s": raw, "best_batch_size": best_size, "grpc": runs,
        "serving_efficiency": efficiency, "batching_gain": gain}, indent=2) + "\n")
    return 0


def compare_runtimes(models: Path, images: list[bytes], args) -> int:
    from bench.runtimes import compare

    runtimes = [name.strip() for name in args.compare_runtimes.split(",") if name.strip()]
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    print(f"{len(images)} traffic images; runtimes {runtimes}, batches {sizes}, {args.rounds} interleaved rounds "
          f"of {args.seconds:.0f} s each; {os.cpu_count()} CPUs", flush=True)
    figures = compare(models, images, runtimes, sizes, args.rounds, args.seconds)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "runtimes.json").write_text(json.dumps({
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.platform(),
        "cpus": os.cpu_count(), "rounds": args.rounds, "seconds": args.seconds, **figures}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
