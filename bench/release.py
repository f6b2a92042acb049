"""`make bench BASELINE=<git ref>`: this checkout against an earlier release, in one run.

    python -m bench.release --baseline-ref d21dc2d          # a worktree of that commit under run/
    python -m bench.release --baseline /path/to/checkout    # any checkout with its models/

Both releases run side by side on the same machine and the same traffic, taking turns in short
slots (A B B A A B ...), so that a neighbour's load falls on both alike and the ratios hold on a
noisy, shared machine:

  (1) in process, each release's own code path at batch 8 (and 32): the text path (preprocess +
      text model), the image path (decode + image model) and the fusion model, products per
      second. Each release runs in a process of its own (`bench.in_process.Pipelines`, which both
      have), driven over stdin/stdout.
  (2) through each release's gateway (four services each, on free ports): the traffic mix at
      concurrency 32 (capacity), and a text-only product at concurrency 1 (the lone-call latency).
  (3) memory: each service's proportional set size (PSS, psutil) after the load.
  (4) answers: every `split == val` product of the data folder through both gateways
      (ClassifyBatch): how often the top class is the same, and each release's weighted F1, so
      that a speed change that changed answers shows.

It prints the ratios the release is judged on, with their targets, and writes
bench/results/release.json (`make soak` reads this release's capacity from it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.load import LoadResult
from bench.loadtest import RESULTS, Driver, machine, write_json
from gateway.client import ClassifierClient, Product
from bench.stack import SERVICES, ServiceStack
from bench.traffic import Traffic, load_traffic, parse_mix
from training.data import PROJECT_ROOT, data_dir, load_products
from training.reports import f1_scores

TARGETS = {
    "capacity": 3.0,            # answers/s at concurrency 32, this / baseline
    "efficiency": 0.9,          # gateway at 32 / in process, this release
    "text_p50_ms": 5.0,         # a text-only product at concurrency 1 through the gateway
    "text_path": 6.0,           # in process, products/s at batch 8, this / baseline
    "image_path": 3.0,
    "pss_gib": 1.2,             # the four services together, after warm-up and load
    "same_top_class": 0.995,    # share of val products answered with the baseline's top class
}

# Run in each release's own process and checkout: only what both releases have
# (bench.in_process.Pipelines, bench.traffic.load_traffic). Answers one JSON line per request line.
_PROBE = r"""
import json, sys, time
from pathlib import Path
from bench.in_process import Pipelines
from bench.traffic import load_traffic
from gateway.pipeline import has_text
data, models, count, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
traffic = load_traffic(Path(data), count, None, seed)
pipelines = Pipelines(Path(models))
texts = [(p.designation, p.description) for p in traffic.products if has_text(p)]
images = [p.image for p in traffic.products if p.image]
pairs = [(t.embedding, i.embedding) for t, i in zip(pipelines.run_text(texts[:64]), pipelines.run_image(images[:64]))]
paths = {"text": (pipelines.run_text, texts), "image": (pipelines.run_image, images),
         "fusion": (pipelines.run_fusion, pairs)}
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    run, items = paths[request["path"]]
    size, offset, done = request["batch"], 0, 0
    run([items[i % len(items)] for i in range(size)])
    started = time.perf_counter()
    while time.perf_counter() - started < request["seconds"]:
        run([items[(offset + i) % len(items)] for i in range(size)])
        offset, done = offset + size, done + size
    print(json.dumps({"items_per_s": done / (time.perf_counter() - started)}), flush=True)
"""


@dataclass(frozen=True)
class Release:
    name: str
    root: Path

    @property
    def models(self) -> Path:
        return self.root / "models"


def baseline_worktree(ref: str) -> Path:
    """A detached git worktree of `ref` under run/ (made once), with its gRPC code generated."""
    sha = subprocess.run(["git", "rev-parse", "--short", ref], cwd=PROJECT_ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()
    root = PROJECT_ROOT / "run" / f"baseline-{sha}"
    if not root.is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(root), sha], cwd=PROJECT_ROOT, check=True)
    if not (root / "rakuten" / "v1" / ".generated").exists():
        protos = sorted(str(p.relative_to(root)) for p in (root / "protos" / "rakuten" / "v1").glob("*.proto"))
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-Iprotos", "--python_out=.",
                        "--grpc_python_out=.", "--pyi_out=.", *protos], cwd=root, check=True)
        for marker in ("rakuten/__init__.py", "rakuten/v1/__init__.py", "rakuten/v1/.generated"):
            (root / marker).touch()
    return root


class Probe:
    """One release's models in a process of its own, timing a path at a batch size on request."""

    def __init__(self, release: Release, data: Path, products: int, seed: int):
        env = {**os.environ, "PYTHONPATH": str(release.root), "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.release = release
        self.process = subprocess.Popen(
            [sys.executable, "-c", _PROBE, str(data), str(release.models), str(products), str(seed)],
            cwd=release.root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def _answer(self) -> dict:
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.release.name}: the in-process probe exited ({self.process.wait()})")
            if line.startswith("{"):
                return json.loads(line)

    def wait_ready(self) -> None:
        self._answer()

    def measure(self, path: str, batch: int, seconds: float) -> float:
        self.process.stdin.write(json.dumps({"path": path, "batch": batch, "seconds": seconds}) + "\n")
        self.process.stdin.flush()
        return self._answer()["items_per_s"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(30)


def alternate(names: tuple[str, str], slots: int):
    """A B, B A, A B, ...: who goes first alternates so that drift in the load falls on both."""
    for slot in range(slots):
        yield names if slot % 2 == 0 else names[::-1]


def in_process(releases: list[Release], data: Path, args) -> dict[str, dict[str, dict[int, float]]]:
    """items/s per release, path and batch size, the median of the slots."""
    probes = {release.name: Probe(release, data, args.products, args.seed) for release in releases}
    try:
        for probe in probes.values():
            probe.wait_ready()
        results: dict[str, dict[str, dict[int, float]]] = {name: {} for name in probes}
        for path in ("text", "image", "fusion"):
            for batch in args.batch_sizes:
                samples: dict[str, list[float]] = {name: [] for name in probes}
                for order in alternate(tuple(probes), args.probe_slots):
                    for name in order:
                        samples[name].append(probes[name].measure(path, batch, args.probe_seconds))
                for name, values in samples.items():
                    results[name].setdefault(path, {})[batch] = sorted(values)[len(values) // 2]
                print(f"  in process {path:<6} batch {batch:>3}: "
                      + "  ".join(f"{name} {results[name][path][batch]:9.1f}/s" for name in probes), flush=True)
    finally:
        for probe in probes.values():
            probe.close()
    return results


def merged(results: list[LoadResult]) -> LoadResult:
    """The slots of one release at one level as one run."""
    return LoadResult(results[0].concurrency, sum(r.seconds for r in results), None,
                      [record for result in results for record in result.records])


async def through_gateway(stacks: dict[str, ServiceStack], runs: list[tuple[str, Traffic, int]], args
                          ) -> dict[str, dict[str, LoadResult]]:
    """For each (label, traffic, concurrency): both releases in alternating slots."""
    results: dict[str, dict[str, LoadResult]] = {name: {} for name in stacks}
    for label, traffic, level in runs:
        drivers = {name: Driver(traffic, stack.address, args.timeout, 3) for name, stack in stacks.items()}
        for driver in drivers.values():
            await driver.__aenter__()
        try:
            for driver in drivers.values():
                await driver.warm_up(args.warmup, concurrency=level)
            slots: dict[str, list[LoadResult]] = {name: [] for name in stacks}
            for order in alternate(tuple(stacks), args.slots):
                for name in order:
                    result, _ = await drivers[name].run(level, None, args.slot_seconds, progress_every=None)
                    slots[name].append(result)
            for name in stacks:
                run = results[name][label] = merged(slots[name])
                print(f"  gateway {label:<22} {name}: {run.throughput:7.1f}/s  p50 {run.percentile(50) * 1000:7.1f} ms"
                      f"  p99 {run.percentile(99) * 1000:7.1f} ms  errors {sum(run.errors.values())}"
                      f"  slots {[round(r.throughput) for r in slots[name]]}", flush=True)
        finally:
            for driver in drivers.values():
                await driver.__aexit__(None, None, None)
    return results


def val_products(data: Path) -> tuple[list[Product], list[int]]:
    """Every split == val product as it is in the data (text, image or both) and its label."""
    frame = load_products(data)
    frame = frame[frame["split"] == "val"].reset_index(drop=True)
    products = [Product(row.designation if row.has_text else "", row.description if row.has_text else "",
                        Path(row.image_path).read_bytes() if row.has_image else b"", id=str(row.index))
                for row in frame.itertuples()]
    return products, [int(code) for code in frame["prdtypecode"]]


def top_classes(address: str, products: list[Product], batch: int = 16) -> list[int]:
    """The top class of each product through a gateway, in order."""
    with ClassifierClient(address, timeout=120) as client:
        return [answer.categories[0].code for i in range(0, len(products), batch)
                for answer in client.classify_batch(products[i:i + batch], top_k=1)]


def mix_products_per_s(paths: dict[str, dict[int, float]], traffic: Traffic) -> float:
    """In-process products/s on the traffic's mix, each model at its best measured batch size,
    taking turns (as `make bench` defines serving efficiency)."""
    counts = {"text": traffic.count("text") + traffic.count("text+image"),
              "image": traffic.count("image") + traffic.count("text+image"),
              "fusion": traffic.count("text+image")}
    seconds = sum(counts[path] / max(paths[path].values()) for path in counts if counts[path])
    return len(traffic.products) / seconds


def check(label: str, value: float, target: float, higher_is_better: bool = True, unit: str = "") -> str:
    ok = value >= target if higher_is_better else value <= target
    sign = ">=" if higher_is_better else "<="
    return f"{label:<58} {value:8.2f}{unit}   target {sign} {target:g}{unit}  {'PASS' if ok else 'MISS'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.release", description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--baseline", type=Path, help="a checkout of the earlier release (with its models/)")
    where.add_argument("--baseline-ref", help="a git ref of the earlier release: a worktree of it is made under run/")
    parser.add_argument("--data", help="data folder (default: $RAKUTEN_DATA or ../shared/rakuten)")
    parser.add_argument("--products", type=int, default=1000, help="distinct traffic products drawn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline of each call, seconds")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of unrecorded load per release and run")
    parser.add_argument("--slots", type=int, default=6, help="gateway slots per release and run")
    parser.add_argument("--slot-seconds", type=float, default=5.0)
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[8, 32])
    parser.add_argument("--probe-slots", type=int, default=3, help="in-process slots per release, path and batch")
    parser.add_argument("--probe-seconds", type=float, default=2.0)
    parser.add_argument("--service-arg", action="append", default=[], metavar="MODULE:FLAG",
                        help="a flag for one service of THIS release's stack, e.g. image_service:--runtime=onnx")
    args = parser.parse_args(argv)
    data = data_dir(args.data)
    baseline = Release("baseline", (args.baseline or baseline_worktree(args.baseline_ref)).resolve())
    this = Release("this", PROJECT_ROOT)
    releases = [baseline, this]
    mix = load_traffic(data, args.products, None, args.seed)
    text_only = load_traffic(data, 200, parse_mix("text=1"), args.seed)
    print(f"baseline: {baseline.root}\nthis:     {this.root}\ntraffic: {mix.describe()}", flush=True)

    print("(1) in process, alternating slots", flush=True)
    paths = in_process(releases, data, args)

    print("(2) through the gateway, alternating slots; starting both stacks", flush=True)
    backend_args: dict[str, list[str]] = {}
    gateway_args: list[str] = []
    for item in args.service_arg:
        module, _, flag = item.partition(":")
        (gateway_args if module == "gateway" else backend_args.setdefault(module, [])).append(flag)
    logs = RESULTS / "logs"
    stacks: dict[str, ServiceStack] = {}
    try:
        stacks["baseline"] = ServiceStack.start(baseline.models, logs, root=baseline.root)
        stacks["this"] = ServiceStack.start(this.models, logs, backend_args, gateway_args)
        gateway = asyncio.run(through_gateway(stacks, [("mix, concurrency 32", mix, 32),
                                                       ("text only, concurrency 1", text_only, 1)], args))
        time.sleep(1.0)
        pss = {name: stack.pss() for name, stack in stacks.items()}
        print("(4) every split == val product through both gateways", flush=True)
        val, truth = val_products(data)
        answers = {name: top_classes(stack.address, val) for name, stack in stacks.items()}
    finally:
        for stack in stacks.values():
            stack.stop()

    capacity = {name: gateway[name]["mix, concurrency 32"].throughput for name in stacks}
    in_process_mix = {name: mix_products_per_s(paths[name], mix) for name in paths}
    efficiency = capacity["this"] / in_process_mix["this"]
    text_p50_ms = gateway["this"]["text only, concurrency 1"].percentile(50) * 1000
    pss_total = {name: sum(v or 0 for v in values.values()) for name, values in pss.items()}
    ratio = {path: paths["this"][path][8] / paths["baseline"][path][8] for path in ("text", "image", "fusion")}
    same = sum(a == b for a, b in zip(answers["baseline"], answers["this"])) / len(val)
    f1 = {name: f1_scores(truth, answers[name], sorted(set(truth))) for name in answers}

    print()
    print(f"{'memory (PSS, MiB)':<18}" + "".join(f"{module:>16}" for module in SERVICES) + f"{'total':>10}")
    for name in stacks:
        print(f"{name:<18}" + "".join(f"{(pss[name].get(m) or 0) / 2**20:>16.0f}" for m in SERVICES)
              + f"{pss_total[name] / 2**20:>10.0f}")
    print()
    print(f"in process at batch 8 (products/s): text {paths['baseline']['text'][8]:.1f} -> {paths['this']['text'][8]:.1f}, "
          f"image {paths['baseline']['image'][8]:.1f} -> {paths['this']['image'][8]:.1f}, "
          f"fusion {paths['baseline']['fusion'][8]:.0f} -> {paths['this']['fusion'][8]:.0f}")
    print(f"in process, the traffic mix (best batch, taking turns): baseline {in_process_mix['baseline']:.1f}/s, "
          f"this {in_process_mix['this']:.1f}/s")
    print(f"gateway at concurrency 32, the mix: baseline {capacity['baseline']:.1f}/s, this {capacity['this']:.1f}/s")
    print(f"{len(val)} val products through the gateways: weighted F1 baseline {f1['baseline'].weighted:.4f}, "
          f"this {f1['this'].weighted:.4f} ({(f1['this'].weighted - f1['baseline'].weighted) * 100:+.2f} points)")
    print()
    lines = [
        check("capacity at concurrency 32, this / baseline", capacity["this"] / capacity["baseline"], TARGETS["capacity"]),
        check("serving efficiency, gateway / in process (this)", efficiency, TARGETS["efficiency"]),
        check("text-only product at concurrency 1, p50 (this)", text_p50_ms, TARGETS["text_p50_ms"], False, " ms"),
        check("in process text path at batch 8, this / baseline", ratio["text"], TARGETS["text_path"]),
        check("in process image path at batch 8, this / baseline", ratio["image"], TARGETS["image_path"]),
        check("memory of the four services, PSS (this)", pss_total["this"] / 2**30, TARGETS["pss_gib"], False, " GiB"),
        check("val products with the baseline's top class", same, TARGETS["same_top_class"]),
    ]
    print("\n".join(lines))
    path = write_json("release.json", {
        **machine(), "command": "python -m bench.release " + " ".join(argv if argv is not None else sys.argv[1:]),
        "baseline": str(baseline.root), "traffic": mix.describe(), "in_process_items_per_s": paths,
        "in_process_mix_products_per_s": in_process_mix,
        "gateway": {name: {label: run.summary() for label, run in runs.items()} for name, runs in gateway.items()},
        "capacity_per_s": capacity["this"], "baseline_capacity_per_s": capacity["baseline"],
        "serving_efficiency": efficiency, "text_only_p50_ms": text_p50_ms, "pss_bytes": pss,
        "val_same_top_class": same, "val_weighted_f1": {name: scores.weighted for name, scores in f1.items()},
        "checks": lines})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
