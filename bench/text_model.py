"""`make bench-text`: the text model per call, TensorFlow's SavedModel vs the NumPy runtime.

On real product texts (DATA/traffic, preprocessed once up front: this measures the model alone),
both runtimes of the same bundle are loaded in this process and measured in alternating slots
(`--rounds` rounds of every batch size on each runtime), so a neighbour's load falls on both
alike. Per batch size: ms per call and products/s, the median over rounds, and the speed-up.
It also checks that both give the same outputs on those texts (max abs difference).
Results go to stdout and bench/results/text_model.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bench.traffic import load_traffic
from common.model_bundle import read_bundle
from common.runtime import TENSORFLOW, RuntimeConfig
from gateway.pipeline import has_text
from text_service.model import TextModel
from text_service.numpy_model import NUMPY
from text_service.preprocessing import PreprocessedText, preprocess
from training.data import PROJECT_ROOT, data_dir

RESULTS = PROJECT_ROOT / "bench" / "results"


def call_times(model: TextModel, items: list[PreprocessedText], size: int, seconds: float, offset: int) -> list[float]:
    """Seconds of each `model.predict` call on batches of `size` consecutive items, for about `seconds`."""
    times = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or len(times) < 3:
        batch = [items[(offset + i) % len(items)] for i in range(size)]
        offset += size
        t0 = time.perf_counter()
        model.predict(batch)
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.text_model", description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="data folder (default: $RAKUTEN_DATA or ../shared/rakuten)")
    parser.add_argument("--models", type=Path, default=PROJECT_ROOT / "models")
    parser.add_argument("--products", type=int, default=1000, help="traffic products drawn (those with text are used)")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of one slot")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of every slot")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.batch_sizes.split(",")]

    products = [p for p in load_traffic(data_dir(args.data), args.products).products if has_text(p)]
    items = [preprocess(p.designation, p.description) for p in products]
    bundle = read_bundle(args.models, "text")
    models = {TENSORFLOW: TextModel(bundle, RuntimeConfig(TENSORFLOW)), NUMPY: TextModel(bundle, RuntimeConfig("auto"))}
    if models[NUMPY].runner.runtime != NUMPY:
        raise SystemExit(f"{bundle.path} carries no NumPy runtime files: run make text-runtime-files")
    outputs = {name: model.runner(text=np.array([i.text for i in items], dtype=object),
                                  cleaned=np.array([i.cleaned for i in items], dtype=object))
               for name, model in models.items()}
    difference = max(float(np.max(np.abs(outputs[NUMPY][key] - outputs[TENSORFLOW][key])))
                     for key in ("embedding", "probabilities"))
    agree = float(np.mean(outputs[NUMPY]["probabilities"].argmax(1) == outputs[TENSORFLOW]["probabilities"].argmax(1)))
    print(f"{len(items)} product texts (text view {np.mean([len(i.text) for i in items]):.0f} chars, "
          f"cleaned {np.mean([len(i.cleaned) for i in items]):.0f} chars on average), bundle {bundle.path}")
    print(f"max |NumPy - TensorFlow| over embedding and probabilities: {difference:.2g}; same top class: {agree:.1%}")

    samples: dict[str, dict[int, list[list[float]]]] = {name: {size: [] for size in sizes} for name in models}
    offset = 0
    for _ in range(args.rounds):
        for size in sizes:
            for name, model in models.items():
                samples[name][size].append(call_times(model, items, size, args.seconds, offset))
            offset += 97
    print(f"\n{args.rounds} alternating rounds of {args.seconds:.0f} s slots (measured under load); ms per call: "
          f"mean (products/s follow from it) and p50; speed-up of the means; rounds' median")
    print(f"{'batch':>5} {'TF mean':>8} {'TF p50':>7} {'NumPy mean':>11} {'NumPy p50':>10} {'TF products/s':>14} "
          f"{'NumPy products/s':>17} {'speed-up':>9}")
    table = []
    for size in sizes:
        stats = {name: (statistics.median(1000 * statistics.mean(times) for times in samples[name][size]),
                        statistics.median(1000 * statistics.median(times) for times in samples[name][size]))
                 for name in models}
        (tf_mean, tf_p50), (np_mean, np_p50) = stats[TENSORFLOW], stats[NUMPY]
        row = {"batch": size, "tensorflow_ms_per_call": round(tf_mean, 3), "tensorflow_p50_ms": round(tf_p50, 3),
               "numpy_ms_per_call": round(np_mean, 3), "numpy_p50_ms": round(np_p50, 3),
               "tensorflow_products_per_s": round(1000 * size / tf_mean, 1),
               "numpy_products_per_s": round(1000 * size / np_mean, 1), "speed_up": round(tf_mean / np_mean, 2)}
        table.append(row)
        print(f"{size:>5} {tf_mean:>8.2f} {tf_p50:>7.2f} {np_mean:>11.3f} {np_p50:>10.3f} "
              f"{row['tensorflow_products_per_s']:>14.1f} {row['numpy_products_per_s']:>17.1f} {row['speed_up']:>8.1f}x")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "text_model.json").write_text(json.dumps({
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.platform(),
        "bundle": str(bundle.path), "products": len(items), "max_abs_difference": difference,
        "same_top_class": agree, "rounds": args.rounds, "seconds": args.seconds, "table": table}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
