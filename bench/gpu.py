"""`make bench-gpu`: image_service's network in process at batch 1, 8, 32 and 128 on the node's runtime.

Meant for a GPU node (the GPU image: onnxruntime-gpu, CUDAExecutionProvider), and runs on a CPU
too: it loads the image bundle as image_service does with `--runtime` (default auto: ONNX Runtime,
CUDA when this onnxruntime build offers it), says which runtime, provider and device it used,
and reports images/s of the model call on prepared 224x224 images (decode is the CPU's work on
either node: `make bench-runtimes` times it). No data folder needed: the images are drawn.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from common.model_bundle import read_bundle
from common.runtime import RuntimeConfig
from training.data import PROJECT_ROOT

RESULTS = PROJECT_ROOT / "bench" / "results"


def drawn_images(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Product-photo-like prepared images: white background, a coloured block, some noise."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        image = np.full((size, size, 3), 255, np.int16)
        top, left = rng.integers(10, 120, 2)
        image[top:top + 90, left:left + 80] = rng.integers(0, 220, 3)
        images.append(np.clip(image + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8))
    return images


def describe(runner) -> str:
    providers = getattr(runner, "providers", None)
    where = f"providers {providers}" if providers else f"device {getattr(runner, 'device', 'cpu')}"
    return f"runtime {runner.runtime}, {where}"


def throughput(model, images: list[np.ndarray], batch: int, seconds: float) -> float:
    inputs = [images[i % len(images)] for i in range(batch)]
    model.predict(inputs)  # warm-up: kernels, CUDA graphs and memory for this shape
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or done == 0:
        model.predict(inputs)
        done += batch
    return done / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    from image_service.model import ImageModel

    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=PROJECT_ROOT / "models")
    parser.add_argument("--runtime", default="auto", choices=["auto", "onnx", "tensorflow"])
    parser.add_argument("--batch-sizes", default="1,8,32,128")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each measurement")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    model = ImageModel(read_bundle(args.models.resolve(), "image"), RuntimeConfig(args.runtime))
    load_s = time.perf_counter() - started
    used = describe(model.runner)
    print(f"image model loaded in {load_s:.1f} s: {used}", flush=True)
    images = drawn_images(64, model.input_shape[0])
    figures = {}
    for batch in (int(s) for s in args.batch_sizes.split(",")):
        figures[batch] = throughput(model, images, batch, args.seconds)
        print(f"  batch {batch:>4}: {figures[batch]:9.1f} images/s", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gpu.json").write_text(json.dumps({
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.platform(),
        "cpus": os.cpu_count(), "runtime": used, "load_seconds": load_s,
        "images_per_s": figures}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
