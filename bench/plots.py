"""PNG charts of load runs: latency over time, and latency against concurrency."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bench.load import OK, LoadResult, Record  # noqa: E402

PERCENTILES = (50, 95, 99)


def latency_over_time(runs: Sequence[tuple[str, LoadResult]], path: Path, title: str) -> Path:
    """Every answer's latency at the time it was sent (runs one after the other), errors marked,
    and p50/p99 per time slice."""
    figure, axis = plt.subplots(figsize=(11, 5))
    offset = 0.0
    for label, result in runs:
        ok = [r for r in result.records if r.code == OK]
        failed = [r for r in result.records if r.code != OK]
        axis.scatter([offset + r.started for r in ok], [r.latency * 1000 for r in ok], s=3, alpha=0.25,
                     label=f"{label} ({len(ok)} answers)")
        if failed:
            axis.scatter([offset + r.started for r in failed], [r.latency * 1000 for r in failed], s=12,
                         marker="x", color="red", label=f"{label}: {len(failed)} errors")
        step = max(1.0, result.seconds / 60)
        edges = np.arange(0.0, result.seconds + step, step)
        for q, style in ((50, "-"), (99, "--")):
            values = [np.percentile(latencies, q) * 1000 if (latencies := [r.latency for r in ok if a <= r.started < b])
                      else np.nan for a, b in zip(edges[:-1], edges[1:])]
            axis.plot(offset + edges[:-1] + step / 2, values, style, color="black", linewidth=1,
                      label=f"p{q} per {step:.0f} s" if offset == 0 else None)
        offset += result.seconds
    axis.set(xlabel="seconds since start", ylabel="latency (ms)", yscale="log", title=title)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8, markerscale=3, loc="upper left")
    return _save(figure, path)


def concurrency_levels(records: Sequence[Record]) -> dict[int, list[float]]:
    """Latencies of answers by concurrency: closed-loop levels as they are, an open loop's
    observed calls in flight rounded up to a power of two."""
    levels: dict[int, list[float]] = {}
    for record in records:
        if record.code == OK:
            level = 1 << max(0, int(record.concurrency - 1).bit_length())
            levels.setdefault(level, []).append(record.latency)
    return dict(sorted(levels.items()))


def latency_vs_concurrency(results: Sequence[LoadResult], path: Path, title: str) -> Path:
    """p50/p95/p99 latency and throughput at each concurrency."""
    closed = all(result.concurrency for result in results)
    if closed:
        levels = {r.concurrency: r.latencies for r in results if r.latencies}
        throughput = {r.concurrency: r.throughput for r in results}
    else:
        levels = concurrency_levels([record for result in results for record in result.records])
        throughput = {}
    figure, axis = plt.subplots(figsize=(8, 5))
    xs = list(levels)
    for q in PERCENTILES:
        axis.plot(xs, [np.percentile(levels[x], q) * 1000 for x in xs], "o-", label=f"p{q}")
    axis.set(xscale="log", yscale="log", ylabel="latency (ms)", title=title,
             xlabel="concurrent calls" if closed else "calls in flight when sent (rounded up to a power of 2)")
    axis.set_xticks(xs, [str(x) for x in xs])
    axis.grid(True, which="both", alpha=0.3)
    if throughput:
        other = axis.twinx()
        other.plot(xs, [throughput[x] for x in xs], "s:", color="grey", label="throughput")
        other.set_ylabel("answers per second")
        other.legend(loc="lower right", fontsize=8)
    axis.legend(loc="upper left", fontsize=8)
    return _save(figure, path)


def _save(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
