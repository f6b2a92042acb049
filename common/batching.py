"""Dynamic batching: items from concurrent calls share one model call.

An item waits at most `max_delay` for others to join, and a batch never exceeds
`max_batch_size` items. One worker makes one model call at a time in its own thread; while it
runs, new items queue and form the next batch, so under load batches fill up on their own. A
batch waits only for items known to be on their way: calls announce them (`expecting`) while
they prepare them (text pipeline, image decoding); with none announced, waiting could not fill
the batch, so it runs at once and a lone call pays no delay. A call with more items than
`max_batch_size` is split over several batches. A full queue refuses new items with
RESOURCE_EXHAUSTED (ErrorInfo reason QUEUE_FULL) instead of letting latency grow without bound.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Sequence, TypeVar

from common import metrics
from common.errors import NotReady, QueueFull

In = TypeVar("In")
Out = TypeVar("Out")

log = logging.getLogger(__name__)


@dataclass
class _Pending(Generic[In]):
    item: In
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class DynamicBatcher(Generic[In, Out]):
    """Collects items into batches for `run_batch(items) -> outputs` (one output per item)."""

    def __init__(
        self,
        name: str,
        run_batch: Callable[[list[In]], Sequence[Out]],
        max_batch_size: int = 32,
        max_delay_s: float = 0.005,
        max_queue_size: int = 1024,
    ):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue_size = max_queue_size
        self._run_batch = run_batch
        self._queue: collections.deque[_Pending[In]] = collections.deque()
        self._arrived = asyncio.Event()
        self._expected = 0  # items announced by calls still preparing them
        self._worker: asyncio.Task | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"batch-{name}")
        self._queue_depth = metrics.QUEUE_DEPTH.labels(name)
        self._batch_size = metrics.BATCH_SIZE.labels(name)
        self._queue_wait = metrics.QUEUE_WAIT.labels(name)
        self._inference = metrics.INFERENCE_LATENCY.labels(name)

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        """Stop the worker; items still queued fail with UNAVAILABLE rather than hang."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(NotReady(f"{self.name}: batcher stopped"))
        self._queue_depth.set(0)
        self._executor.shutdown(wait=False, cancel_futures=True)

    @contextlib.contextmanager
    def expecting(self, count: int):
        """Announce `count` items that the caller will submit once prepared: a batch being formed
        waits for them (up to max_delay) rather than leaving without them."""
        self._expected += count
        try:
            yield
        finally:
            self._expected -= count
            self._arrived.set()  # the worker re-checks whether anything is still on its way

    async def submit(self, items: Sequence[In]) -> list[Out]:
        """Queue the items and wait for their outputs, in order."""
        if self._worker is None:
            raise NotReady(f"{self.name}: batcher not started")
        if len(self._queue) + len(items) > self.max_queue_size:
            raise QueueFull(
                f"{self.name}: queue full ({len(self._queue)} waiting, limit {self.max_queue_size}); retry later"
            )
        loop = asyncio.get_running_loop()
        pendings = [_Pending(item, loop.create_future()) for item in items]
        self._queue.extend(pendings)
        self._queue_depth.set(len(self._queue))
        self._arrived.set()
        try:
            return list(await asyncio.gather(*(p.future for p in pendings)))
        finally:
            for p in pendings:  # a cancelled caller leaves no work behind
                if not p.future.done():
                    p.future.cancel()

    async def _work(self) -> None:
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            deadline = self._queue[0].enqueued + self.max_delay_s
            while len(self._queue) < self.max_batch_size and self._expected > 0:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = self._take_batch()
            if batch:
                await self._run(batch)

    def _take_batch(self) -> list[_Pending[In]]:
        batch: list[_Pending[In]] = []
        while self._queue and len(batch) < self.max_batch_size:
            pending = self._queue.popleft()
            if not pending.future.done():  # skip items whose caller went away
                batch.append(pending)
        self._queue_depth.set(len(self._queue))
        return batch

    async def _run(self, batch: list[_Pending[In]]) -> None:
        started = time.perf_counter()
        for pending in batch:
            self._queue_wait.observe(started - pending.enqueued)
        self._batch_size.observe(len(batch))
        loop = asyncio.get_running_loop()
        try:
            outputs = await loop.run_in_executor(self._executor, self._run_batch, [p.item for p in batch])
            if len(outputs) != len(batch):
                raise RuntimeError(f"{self.name}: model returned {len(outputs)} outputs for {len(batch)} items")
        except Exception as error:  # one failed call fails its own items, never the worker
            log.exception("batch failed", extra={"model": self.name, "batch_size": len(batch)})
            outputs = None
            failure: Any = error
        finally:
            self._inference.observe(time.perf_counter() - started)
        for index, pending in enumerate(batch):
            if pending.future.done():
                continue
            if outputs is None:
                pending.future.set_exception(failure)
            else:
                pending.future.set_result(outputs[index])
