"""Proves the local monitoring works: Prometheus scrapes the four services and the recording
rules evaluate on real traffic.

    python -m monitoring.check [--prometheus http://127.0.0.1:9090] [--gateway localhost:50051]
                               [--data ../shared/rakuten] [--products 300]

1. /api/v1/targets: the four jobs (gateway, text-service, image-service, fusion-service) are up;
2. classifications through the gateway, sent over several scrape intervals: real products from
   DATA/traffic in the catalogue's mix (`bench.traffic`) when the data folder has them, so that
   the class mix means something, otherwise two invented products (text and an image each, so
   every stage runs);
3. the recorded per-stage quantiles (job_stage:gateway_stage_seconds:p50/p95/p99) and per-service
   quantiles (job:grpc_server_handling_seconds:p50/p95/p99) hold numbers for every stage and
   service that the traffic went through;
4. the watch on the answers: every model service exports its bundle's class priors
   (model_class_prior), the answers are counted per predicted class, and the top-probability
   median, the review share and the class drift figure (gateway:class_mix_psi:1h) are numbers.

Prints one PASS or FAIL line (with details before it on failure); exit status 0 or 1.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
import urllib.parse
import urllib.request

import grpc
import numpy as np

from common.services import FUSION_SERVICE, GATEWAY, IMAGE_SERVICE, TEXT_SERVICE

JOBS = tuple(s.name for s in (GATEWAY, TEXT_SERVICE, IMAGE_SERVICE, FUSION_SERVICE))
STAGE_JOB = {"text": TEXT_SERVICE.name, "image": IMAGE_SERVICE.name, "fusion": FUSION_SERVICE.name}
QUANTILES = ("p50", "p95", "p99")


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise RuntimeError(f"{url}: {body}")
    return body["data"]


def target_health(prometheus: str) -> dict[str, list[str]]:
    """job -> health of each of its active targets ('up', 'down', 'unknown')."""
    health: dict[str, list[str]] = {}
    for target in _get(f"{prometheus}/api/v1/targets?state=active")["activeTargets"]:
        health.setdefault(target["labels"].get("job", "?"), []).append(target["health"])
    return health


def query(prometheus: str, expr: str) -> list[tuple[dict, float]]:
    data = _get(f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
    return [(item["metric"], float(item["value"][1])) for item in data["result"]]


def recorded(prometheus: str, metric: str, label: str) -> dict[str, float]:
    """label value -> recorded value, finite ones only (no traffic in the window gives NaN)."""
    return {m.get(label, ""): v for m, v in query(prometheus, metric) if math.isfinite(v)}


def answers_watch(prometheus: str) -> str | None:
    """A summary of the answer series, or None while one of them is missing."""
    def one(expr: str) -> float | None:
        values = [v for _, v in query(prometheus, expr) if math.isfinite(v)]
        return values[0] if values else None

    priors = {m.get("model") for m, _ in query(prometheus, "count by (model) (model_class_prior)")}
    codes = {m.get("code") for m, v in query(prometheus, "sum by (code) (gateway_answers_total)") if v > 0}
    psi = one("gateway:class_mix_psi:1h")
    answers = one("gateway:answers:increase1h")
    review = one('job:gateway_needs_review_answers:ratio_rate5m{job="gateway"}')
    top = one("histogram_quantile(0.5, sum by (le) (rate(gateway_top_probability_bucket[1m])))")
    if not ({"text", "image", "fusion"} <= priors and codes) or None in (psi, answers, review, top):
        return None
    return (f"answers watched: class priors of {', '.join(sorted(priors))}, classes served: {len(codes)}, "
            f"top probability p50 {top:.2f}, review share {100 * review:.0f}%, "
            f"class drift PSI {psi:.3f} over {answers:.0f} answers in the hour")


def example_products():
    """Two invented products with text and a small JPEG each (no data folder needed)."""
    from PIL import Image

    from gateway.client import Product

    def jpeg(seed: int) -> bytes:
        pixels = np.random.default_rng(seed).integers(0, 256, (96, 96, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG")
        return buffer.getvalue()

    return [Product("Piscine tubulaire ronde 300 x 76 cm", "Piscine hors-sol avec pompe de filtration", jpeg(1)),
            Product("Roman policier, édition de poche", "<p>Un tome illustré</p>", jpeg(2))]


def traffic_products(data: str | None, count: int) -> tuple[list, str]:
    """Real products from DATA/traffic, or the invented ones when the folder has none."""
    import os
    from pathlib import Path

    from bench.traffic import load_traffic

    root = Path(data or os.environ.get("RAKUTEN_DATA") or Path(__file__).resolve().parent.parent / "../shared/rakuten")
    try:
        traffic = load_traffic(root, count)
    except FileNotFoundError:
        return example_products(), "invented products"
    return traffic.products, f"real traffic products ({traffic.describe()})"


def run(prometheus: str, gateway: str, timeout: float, products: list | None = None,
        min_sent: int = 0) -> tuple[bool, str]:
    """`products` are sent in rounds of 20 (cycling) until the series hold and at least `min_sent`
    were sent; default: the two invented products."""
    from gateway.client import ClassifierClient

    deadline = time.monotonic() + timeout
    health: dict[str, list[str]] = {}
    while time.monotonic() < deadline:
        health = target_health(prometheus)
        if all(health.get(job) and set(health[job]) == {"up"} for job in JOBS):
            break
        time.sleep(1)
    else:
        return False, f"targets not all up after {timeout:.0f} s: {health}"
    up = f"{len(JOBS)}/{len(JOBS)} targets up ({', '.join(JOBS)})"

    stages_called: set[str] = set()
    sent = failed = 0
    stages: dict[str, dict[str, float]] = {}
    services: dict[str, dict[str, float]] = {}
    with ClassifierClient(gateway, timeout=10) as client:
        products = products or example_products()
        rounds = 0
        while time.monotonic() < deadline:
            start = (rounds * 20) % len(products)
            rounds += 1
            for product in (products + products)[start:start + min(20, len(products))]:
                try:
                    answer = client.classify(product)
                    stages_called |= set(answer.timings)
                    sent += 1
                except grpc.RpcError as error:
                    failed += 1
                    if failed > 20:
                        return False, f"{up}; classifications fail: {error.code().name}: {error.details()}"
            stages = {q: recorded(prometheus, f"job_stage:gateway_stage_seconds:{q}", "stage") for q in QUANTILES}
            services = {q: recorded(prometheus, f"job:grpc_server_handling_seconds:{q}", "job") for q in QUANTILES}
            wanted_jobs = {"gateway", *(STAGE_JOB[s] for s in stages_called if s in STAGE_JOB)}
            watched = answers_watch(prometheus)
            if (sent >= min_sent and stages_called and all(stages_called <= set(stages[q]) for q in QUANTILES)
                    and all(wanted_jobs <= set(services[q]) for q in QUANTILES) and watched):
                total = stages["p95"]["total"] * 1000
                return True, (f"{up}; {sent} classifications sent; recording rules evaluate: "
                              f"p50/p95/p99 for stages {', '.join(sorted(stages_called))} "
                              f"and services {', '.join(sorted(wanted_jobs))} (p95 total {total:.1f} ms); {watched}")
            time.sleep(1)
    if not stages_called:
        return False, f"{up}; no classification answered ({failed} failed)"
    watched = answers_watch(prometheus) or ("answer series incomplete (model_class_prior per model, gateway_answers_total "
                                            "by code, gateway_top_probability, review share, gateway:class_mix_psi:1h)")
    return False, (f"{up}; {sent} classifications sent, but after {timeout:.0f} s the recorded series are "
                   f"stages {stages} services {services} (expected stages {sorted(stages_called)}); {watched}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.check", description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090", help="Prometheus base URL")
    parser.add_argument("--gateway", default=GATEWAY.local_address, help="gateway host:port")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds for the whole check")
    parser.add_argument("--data", help="data folder whose traffic/ is sent (default: $RAKUTEN_DATA or ../shared/rakuten)")
    parser.add_argument("--products", type=int, default=300, help="real traffic products drawn (seeded)")
    args = parser.parse_args(argv)
    products, what = traffic_products(args.data, args.products)
    print(f"check-monitoring: sending {what}", flush=True)
    try:
        ok, message = run(args.prometheus.rstrip("/"), args.gateway, args.timeout, products,
                          min_sent=len(products))  # every real product once: a class mix worth reading
    except (OSError, RuntimeError) as error:
        ok, message = False, f"cannot query Prometheus at {args.prometheus}: {error}"
    print(f"check-monitoring: {'PASS' if ok else 'FAIL'}: {message}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
