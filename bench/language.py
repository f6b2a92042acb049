"""`make bench-language`: what each language detector costs and how often it is right.

On catalogue texts of DATA (title + description after the HTML step, as `preprocess` sees them,
`--sample` of them drawn with a fixed seed), per detector of `text_service.language`:
  - p50 / p99 / mean milliseconds of `detect_language` per product, and p50 of the whole
    `preprocess` with that detector (in a pass of its own), as CPU time of the thread (the cost,
    robust to a shared machine) and wall time; detectors taking turns by blocks of 50 products, so
    a neighbour's load falls on all alike;
  - agreement with langdetect (the study's detector) on texts of 200+ characters, where langdetect
    is reliable;
  - accuracy on the labelled product titles of `tests/language_titles.py` (written for the tests).
Results go to stdout and bench/results/language.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from datetime import datetime, timezone

from tests.language_titles import TITLES
from text_service.language import DETECTORS, detect_language, load_detector
from text_service.preprocessing import merge_fields, preprocess, strip_html
from training.data import PROJECT_ROOT, data_dir, load_products

RESULTS = PROJECT_ROOT / "bench" / "results"
REFERENCE = "langdetect"
LONG_TEXT = 200  # characters from which langdetect is taken as right
BLOCK = 50       # products a detector handles in a row before the other takes its turn


def catalogue_products(root, sample: int, seed: int = 0) -> list[tuple[str, str]]:
    """(designation, description) of products with text; `sample` of them (0: all)."""
    products = load_products(root)
    products = products[products["has_text"].astype(bool)]
    pairs = list(zip(products["designation"], products["description"]))
    return pairs if not sample or sample >= len(pairs) else random.Random(seed).sample(pairs, sample)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(call, *args) -> tuple[object, float, float]:
    """(result, wall ms, CPU ms of this thread): on a shared machine the CPU time is the cost, the
    wall time adds whatever the neighbours took."""
    wall, cpu = time.perf_counter(), time.thread_time()
    result = call(*args)
    return result, (time.perf_counter() - wall) * 1000, (time.thread_time() - cpu) * 1000


def interleaved(items: list[tuple], detectors: list[str], call, block: int = BLOCK) -> tuple[dict, dict, dict]:
    """call(*item, detector) for every item and detector: answers, wall ms and CPU ms per detector.
    The detectors take turns by blocks of `block` items (the order alternating block by block), so
    a neighbour's load falls on all alike while each runs with its own tables in the CPU caches,
    as in a service that runs one detector (turns product by product made py3langid about 3x slower)."""
    answers, wall, cpu = ({name: [None] * len(items) for name in detectors} for _ in range(3))
    for turn, first in enumerate(range(0, len(items), block)):
        for name in detectors if turn % 2 == 0 else detectors[::-1]:
            for i in range(first, min(first + block, len(items))):
                answers[name][i], wall[name][i], cpu[name][i] = timed(call, *items[i], name)
    return answers, wall, cpu


def measure(products: list[tuple[str, str]], detectors: list[str]) -> dict:
    for name in detectors:
        load_detector(name)  # model loading is a start-up cost, not a per-product one
    texts = [(strip_html(merge_fields(d, s)),) for d, s in products]
    answers, wall, cpu = interleaved(texts, detectors, detect_language)
    _, preprocess_wall, preprocess_cpu = interleaved(products, detectors, preprocess)  # a pass of its own
    long = [i for i, (text,) in enumerate(texts) if len(text) >= LONG_TEXT]
    report = {}
    for name in detectors:
        agreement = (sum(answers[name][i] == answers[REFERENCE][i] for i in long) / len(long)
                     if REFERENCE in answers and long else None)
        report[name] = {
            "detect_cpu_p50_ms": statistics.median(cpu[name]),
            "detect_cpu_p99_ms": percentile(cpu[name], 0.99),
            "detect_cpu_mean_ms": statistics.fmean(cpu[name]),
            "detect_wall_p50_ms": statistics.median(wall[name]),
            "detect_wall_p99_ms": percentile(wall[name], 0.99),
            "preprocess_cpu_p50_ms": statistics.median(preprocess_cpu[name]),
            "preprocess_wall_p50_ms": statistics.median(preprocess_wall[name]),
            "agreement_with_langdetect_200_plus": agreement,
            "title_accuracy": sum(detect_language(t, name) == code for t, code in TITLES) / len(TITLES),
        }
    return {"products": len(texts), "long_texts": len(long), "titles": len(TITLES), "detectors": report}


def print_report(result: dict) -> None:
    print(f"{result['products']} catalogue texts ({result['long_texts']} of {LONG_TEXT}+ characters), "
          f"{result['titles']} labelled titles; ms per product, CPU time (wall time)")
    print(f"{'detector':11s} {'p50 ms':>15s} {'p99 ms':>17s} {'mean ms':>8s} {'preprocess p50':>17s} "
          f"{'agree 200+':>11s} {'titles':>7s}")
    for name, r in result["detectors"].items():
        agreement = r["agreement_with_langdetect_200_plus"]
        print(f"{name:11s} {r['detect_cpu_p50_ms']:6.3f} ({r['detect_wall_p50_ms']:6.3f}) "
              f"{r['detect_cpu_p99_ms']:7.3f} ({r['detect_wall_p99_ms']:7.3f}) {r['detect_cpu_mean_ms']:8.3f} "
              f"{r['preprocess_cpu_p50_ms']:7.3f} ({r['preprocess_wall_p50_ms']:7.3f}) "
              f"{'-' if agreement is None else f'{agreement:.1%}':>11s} {r['title_accuracy']:7.1%}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="data folder (default: $RAKUTEN_DATA or ../shared/rakuten)")
    parser.add_argument("--sample", type=int, default=2000, help="products drawn (seed 0); 0: all")
    parser.add_argument("--detectors", nargs="+", default=list(DETECTORS), choices=DETECTORS)
    args = parser.parse_args(argv)
    detectors = args.detectors if REFERENCE in args.detectors else [*args.detectors, REFERENCE]
    result = measure(catalogue_products(data_dir(args.data), args.sample), detectors)
    result["measured_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    print_report(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "language.json").write_text(json.dumps(result, indent=2))
    print(f"results in {RESULTS / 'language.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
