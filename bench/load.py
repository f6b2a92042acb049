"""Closed-loop load: N concurrent callers, each sending its next request as soon as the last answers.

Latency is measured per call on the client, errors are counted by status code (never dropped),
and the loop is bounded in time and count, so a load run always ends on its own.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import grpc
import numpy as np


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: collections.Counter = field(default_factory=collections.Counter)

    @property
    def answered(self) -> int:
        return len(self.latencies)

    @property
    def throughput(self) -> float:
        return self.answered / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    def summary(self) -> dict:
        return {"concurrency": self.concurrency, "seconds": round(self.seconds, 2), "answered": self.answered,
                "errors": dict(self.errors), "throughput_per_s": round(self.throughput, 2),
                "p50_ms": round(self.percentile(50) * 1000, 1), "p95_ms": round(self.percentile(95) * 1000, 1),
                "p99_ms": round(self.percentile(99) * 1000, 1)}


async def closed_loop(call: Callable[[int], Awaitable[object]], concurrency: int, duration_s: float,
                      max_calls: int | None = None) -> LoadResult:
    """Run `call(i)` from `concurrency` workers for `duration_s` (or `max_calls` calls)."""
    result = LoadResult(concurrency, 0.0)
    counter = iter(range(max_calls if max_calls is not None else 10**12))
    stop_at = time.perf_counter() + duration_s

    async def worker():
        for i in counter:
            if time.perf_counter() >= stop_at:
                return
            started = time.perf_counter()
            try:
                await call(i)
                result.latencies.append(time.perf_counter() - started)
            except grpc.aio.AioRpcError as error:
                result.errors[error.code().name] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result
