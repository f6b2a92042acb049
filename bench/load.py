"""Load: closed loop (N callers, each sending its next call as soon as the last answers) or open
loop (calls sent at a fixed rate whether or not earlier ones have answered).

Every call is recorded (when it was sent, its latency, its status code, the calls in flight), so
errors are counted by code, never dropped, and latency can be plotted over time. An open loop
measures latency from the time a call was due, not when the client got round to it, so a client
falling behind does not hide queueing (coordinated omission). Both loops are bounded in time and
end on their own; an optional progress line reports the run while it goes.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import grpc
import numpy as np

OK = "OK"


@dataclass(frozen=True)
class Record:
    started: float  # seconds from the start of the run (an open loop's due time)
    latency: float  # seconds to the answer or the error
    code: str  # "OK" or the gRPC status code name
    concurrency: int  # closed loop: its level; open loop: calls in flight when this one was sent


@dataclass
class LoadResult:
    concurrency: int  # closed loop level; 0 for an open loop
    seconds: float
    rate: float | None = None  # open loop: calls per second sent
    records: list[Record] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return len(self.records)

    @property
    def latencies(self) -> list[float]:
        return [r.latency for r in self.records if r.code == OK]

    @property
    def answered(self) -> int:
        return sum(r.code == OK for r in self.records)

    @property
    def errors(self) -> collections.Counter:
        return collections.Counter(r.code for r in self.records if r.code != OK)

    @property
    def throughput(self) -> float:
        return self.answered / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        latencies = self.latencies
        return float(np.percentile(latencies, q)) if latencies else float("nan")

    def window(self, start: float, end: float) -> "LoadResult":
        """The calls sent in [start, end) seconds of the run."""
        return LoadResult(self.concurrency, end - start, self.rate,
                          [r for r in self.records if start <= r.started < end])

    def summary(self) -> dict:
        return {"concurrency": self.concurrency, "rate": self.rate, "seconds": round(self.seconds, 2),
                "sent": self.sent, "answered": self.answered, "errors": dict(self.errors),
                "throughput_per_s": round(self.throughput, 2), "p50_ms": round(self.percentile(50) * 1000, 1),
                "p95_ms": round(self.percentile(95) * 1000, 1), "p99_ms": round(self.percentile(99) * 1000, 1)}


class _Run:
    """Bookkeeping shared by both loops: the records, calls in flight, the progress line."""

    def __init__(self, result: LoadResult, duration_s: float, progress_every: float | None):
        self.result = result
        self.duration_s = duration_s
        self.progress_every = progress_every
        self.in_flight = 0
        self.start = time.perf_counter()

    async def call(self, call: Callable[[int], Awaitable[object]], i: int, due: float, level: int | None = None):
        self.in_flight += 1
        concurrency = level if level is not None else self.in_flight
        try:
            await call(i)
            code = OK
        except grpc.aio.AioRpcError as error:
            code = error.code().name
        finally:
            self.in_flight -= 1
        self.result.records.append(Record(due - self.start, time.perf_counter() - due, code, concurrency))

    async def report(self) -> None:
        """Every `progress_every` s: elapsed, sent, answered, errors, in flight, rate and latency of the last period."""
        shown = 0
        while True:
            await asyncio.sleep(self.progress_every)
            elapsed = time.perf_counter() - self.start
            recent = self.result.records[shown:]
            shown += len(recent)
            ok = sorted(r.latency for r in recent if r.code == OK)
            p50, p99 = ((ok[len(ok) // 2] * 1000, ok[min(len(ok) - 1, int(len(ok) * 0.99))] * 1000)
                        if ok else (float("nan"), float("nan")))
            line = (f"[{elapsed:5.0f}/{self.duration_s:.0f} s] sent {self.result.sent + self.in_flight:>6} "
                    f"answered {self.result.answered:>6} errors {sum(self.result.errors.values()):>4} "
                    f"in flight {self.in_flight:>3}  {len(ok) / self.progress_every:6.1f}/s  "
                    f"p50 {p50:6.1f} ms  p99 {p99:6.1f} ms")
            end = "\r" if sys.stdout.isatty() else "\n"
            print(line, end=end, flush=True)

    async def around(self, work: Awaitable[None]) -> LoadResult:
        reporter = asyncio.create_task(self.report()) if self.progress_every else None
        try:
            await work
        finally:
            if reporter is not None:
                reporter.cancel()
                if sys.stdout.isatty():
                    print()
        self.result.seconds = time.perf_counter() - self.start
        self.result.records.sort(key=lambda r: r.started)
        return self.result


async def closed_loop(call: Callable[[int], Awaitable[object]], concurrency: int, duration_s: float,
                      max_calls: int | None = None, progress_every: float | None = None,
                      until: Callable[[], bool] | None = None) -> LoadResult:
    """Run `call(i)` from `concurrency` workers for `duration_s`, or `max_calls` calls, or until
    `until()` is true (a threading.Event's is_set: another thread ends the load)."""
    run = _Run(LoadResult(concurrency, 0.0), duration_s, progress_every)
    counter = iter(range(max_calls if max_calls is not None else 10**12))
    stop_at = run.start + duration_s

    async def worker():
        for i in counter:
            now = time.perf_counter()
            if now >= stop_at or (until is not None and until()):
                return
            await run.call(call, i, now, concurrency)

    return await run.around(asyncio.gather(*(worker() for _ in range(concurrency))))


async def open_loop(call: Callable[[int], Awaitable[object]], rate: float, duration_s: float,
                    progress_every: float | None = None) -> LoadResult:
    """Send `call(i)` at `rate` per second for `duration_s`, then wait for the last answers.

    The calls' own deadlines bound how long the wait can take.
    """
    if rate <= 0:
        raise ValueError("rate must be > 0")
    run = _Run(LoadResult(0, 0.0, rate), duration_s, progress_every)

    async def send():
        tasks: set[asyncio.Task] = set()
        for i in range(int(duration_s * rate)):
            due = run.start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(run.call(call, i, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)

    return await run.around(send())
