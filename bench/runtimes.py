"""The image network on each inference runtime, in one run, interleaved: the ratio holds under load.

`make bench-runtimes` (or `python -m bench.bench_image --compare-runtimes`): the image bundle
loaded as image_service loads it on every runtime asked for (`--runtime` values), then rounds
of (runtime x batch size) on the same prepared images, one after the other, so a busy machine
slows every runtime alike. Reported per runtime and batch: images/s (wall clock) and images per
CPU-second of this process (less sensitive to other processes' load). The decode step
(`prepare_image`: JPEG decode, crop, resize) is timed on the same traffic images, per image, so
its share of the image path on the fastest runtime is known.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from common.model_bundle import read_bundle
from common.runtime import RuntimeConfig
from image_service.preprocessing import prepare_image


def load_models(models: Path, runtimes: Sequence[str], threads: int = 0) -> dict:
    from image_service.model import ImageModel

    bundle = read_bundle(models, "image")
    return {name: ImageModel(bundle, RuntimeConfig(name, threads)) for name in runtimes}


def interleaved(models: dict, prepared: list[np.ndarray], batch_sizes: Sequence[int], rounds: int,
                seconds: float) -> dict[str, dict[int, dict[str, float]]]:
    """{runtime: {batch: {images_per_s, images_per_cpu_s}}}, rounds interleaved across runtimes."""
    totals = {name: {size: [0, 0.0, 0.0] for size in batch_sizes} for name in models}
    for size in batch_sizes:
        batch = [prepared[i % len(prepared)] for i in range(size)]
        for model in models.values():
            model.predict(batch)  # a new shape: warm-up before timing
    for _ in range(rounds):
        for size in batch_sizes:
            batch = [prepared[i % len(prepared)] for i in range(size)]
            for name, model in models.items():
                wall, cpu = time.perf_counter(), time.process_time()
                done = 0
                while time.perf_counter() - wall < seconds:
                    model.predict(batch)
                    done += size
                entry = totals[name][size]
                entry[0] += done
                entry[1] += time.perf_counter() - wall
                entry[2] += time.process_time() - cpu
    return {name: {size: {"images_per_s": n / wall, "images_per_cpu_s": n / cpu}
                   for size, (n, wall, cpu) in sizes.items()} for name, sizes in totals.items()}


def decode_ms(images: list[bytes], size: int, repeats: int = 5) -> float:
    """CPU milliseconds per image of `prepare_image` (one thread), the best of `repeats` passes."""
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        for data in images:
            prepare_image(data, size=size)
        best = min(best, (time.process_time() - started) / len(images) * 1000)
    return best


def compare(models_root: Path, images: list[bytes], runtimes: Sequence[str], batch_sizes: Sequence[int],
            rounds: int, seconds: float, threads: int = 0) -> dict:
    """Run the comparison and print its table; returns the figures for the results file."""
    models = load_models(models_root, runtimes, threads)
    for name, model in models.items():
        print(f"  {name}: {model.runner.runtime} on {getattr(model.runner, 'device', 'cpu')}"
              f", {RuntimeConfig(name, threads).intra_threads} intra-op threads", flush=True)
    size = next(iter(models.values())).input_shape[0]  # the bundle's backbone input size
    prepared = [prepare_image(data, size=size) for data in images[:64]]
    figures = interleaved(models, prepared, batch_sizes, rounds, seconds)
    decode = decode_ms(images[:64], size)
    print(f"\n{'runtime':<12} {'batch':>5} {'images/s':>9} {'images/CPU-s':>13}")
    for name, sizes in figures.items():
        for size, entry in sizes.items():
            print(f"{name:<12} {size:>5} {entry['images_per_s']:>9.1f} {entry['images_per_cpu_s']:>13.1f}")
    base = runtimes[0]
    for name in runtimes[1:]:
        ratios = ", ".join(f"batch {size}: {figures[name][size]['images_per_s'] / figures[base][size]['images_per_s']:.2f}x"
                           for size in batch_sizes)
        print(f"{name} / {base} (images/s): {ratios}")
    # CPU time, not wall time: what a busy machine's other processes take is not counted.
    fastest = max((entry["images_per_cpu_s"], name, size) for name, sizes in figures.items()
                  for size, entry in sizes.items())
    model_ms = 1000 / fastest[0]
    share = decode / (decode + model_ms)
    print(f"decode + crop + resize: {decode:.1f} CPU-ms per image; model on {fastest[1]} at batch "
          f"{fastest[2]}: {model_ms:.1f} CPU-ms per image; decode is {share:.0%} of the image path's CPU")
    return {"runtimes": figures, "decode_ms_per_image": decode, "model_ms_per_image": model_ms,
            "decode_share": share}
