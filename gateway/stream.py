"""ClassifyStream: a stream of products answered as they are ready, never more than a window held.

The gateway holds at most `window` products of a stream that it has read and not yet answered
(an answer counts once gRPC has taken it for sending). While the window is full it stops
reading the request stream, so HTTP/2 flow control slows a fast writer down: nothing is
buffered without bound and nothing is dropped. Products that arrive together (within
`group_delay_s` of the first, up to `group_size`) go through the pipeline as one batch, each
group under its own deadline: the gateway's default, or what is left of the stream's if sooner.
A product that fails gets its own error, with its id, and the stream goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import AsyncIterable, AsyncIterator, Callable

import grpc

from common.errors import ServiceError
from gateway import metrics
from gateway.pipeline import ClassificationPipeline
from rakuten.v1 import classifier_pb2

log = logging.getLogger(__name__)

# How a stream's messages name a product: its answer carries the id.
PRODUCT_NAME = "product"


@dataclass(frozen=True)
class StreamPolicy:
    window: int  # most products held (read, not yet answered) per stream
    group_size: int  # most products in one pipeline call
    group_delay_s: float  # how long a group waits for more products after its first
    item_deadline_s: float  # each group's deadline, when the stream's own is later (or unset)
    answer_reserve_s: float  # stages end this long before the deadline


def answer(product_id: str, result: classifier_pb2.Classification | ServiceError) -> classifier_pb2.ClassifyStreamResponse:
    if isinstance(result, ServiceError):
        return classifier_pb2.ClassifyStreamResponse(
            id=product_id, error=classifier_pb2.ItemError(code=result.code.value[0], message=result.message))
    return classifier_pb2.ClassifyStreamResponse(id=product_id, classification=result)


def outcome(response: classifier_pb2.ClassifyStreamResponse) -> str:
    """OK, or the status code name of the item's error (the metrics label)."""
    if not response.HasField("error"):
        return "OK"
    return next((code.name for code in grpc.StatusCode if code.value[0] == response.error.code), "UNKNOWN")


class ProductStream:
    """One ClassifyStream call: a reader, a grouper, a task per group, and the answers in between."""

    def __init__(self, pipeline: ClassificationPipeline, policy: StreamPolicy, resolve_top_k: Callable[[int], int],
                 stream_deadline: float | None):
        self.pipeline = pipeline
        self.policy = policy
        self.resolve_top_k = resolve_top_k
        self.stream_deadline = stream_deadline  # time.monotonic() when the caller's deadline ends
        self._slots = asyncio.Semaphore(policy.window)
        self._arrived: asyncio.Queue[classifier_pb2.ClassifyRequest | None] = asyncio.Queue()
        self._answers: asyncio.Queue = asyncio.Queue()  # responses; None at the end; an exception on a bug
        self._held = 0  # read and not yet answered

    async def answers(self, requests: AsyncIterable[classifier_pb2.ClassifyRequest]
                      ) -> AsyncIterator[classifier_pb2.ClassifyStreamResponse]:
        tasks = [asyncio.create_task(self._guard(self._read(requests))),
                 asyncio.create_task(self._guard(self._group()))]
        try:
            while (item := await self._answers.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                metrics.STREAM_ITEMS.labels(outcome(item)).inc()
                yield item  # resumed once gRPC has taken the answer: only then is the slot free
                self._hold(-1)
                self._slots.release()
        finally:
            for task in tasks:
                task.cancel()
            self._hold(-self._held)  # a stream cancelled or failed with products still held

    def _hold(self, change: int) -> None:
        self._held += change
        metrics.STREAM_HELD.inc(change)

    async def _guard(self, work) -> None:
        """A reader or grouper that fails ends the stream with its error rather than a hang."""
        try:
            await work
        except Exception as error:
            self._answers.put_nowait(error)

    async def _read(self, requests: AsyncIterable[classifier_pb2.ClassifyRequest]) -> None:
        """Read a product only when the window has room for it."""
        iterator = aiter(requests)
        while True:
            await self._slots.acquire()
            try:
                request = await anext(iterator)
            except StopAsyncIteration:
                self._slots.release()
                break
            self._hold(1)
            self._arrived.put_nowait(request)
        self._arrived.put_nowait(None)

    async def _group(self) -> None:
        """Products that arrive together become one pipeline call, classified concurrently with
        the groups before it."""
        loop = asyncio.get_running_loop()
        running: set[asyncio.Task] = set()
        try:
            await self._group_until_end(loop, running)
        finally:
            for task in running:
                task.cancel()
        self._answers.put_nowait(None)

    async def _group_until_end(self, loop, running: set[asyncio.Task]) -> None:
        ended = False
        while not ended:
            first = await self._arrived.get()
            if first is None:
                break
            group = [first]
            until = loop.time() + self.policy.group_delay_s
            while len(group) < self.policy.group_size:
                try:
                    request = self._arrived.get_nowait()
                except asyncio.QueueEmpty:
                    if loop.time() >= until:
                        break
                    try:
                        request = await asyncio.wait_for(self._arrived.get(), until - loop.time())
                    except TimeoutError:
                        break
                if request is None:
                    ended = True
                    break
                group.append(request)
            task = asyncio.create_task(self._classify(group))
            running.add(task)
            task.add_done_callback(running.discard)
        await asyncio.gather(*running)

    def _deadline(self) -> float:
        deadline = time.monotonic() + self.policy.item_deadline_s
        if self.stream_deadline is not None:
            deadline = min(deadline, self.stream_deadline)
        return deadline - self.policy.answer_reserve_s

    async def _classify(self, group: list[classifier_pb2.ClassifyRequest]) -> None:
        metrics.STREAM_GROUP_SIZE.observe(len(group))
        results: list[classifier_pb2.Classification | ServiceError | None] = [None] * len(group)
        top_ks, todo = [], []
        for index, request in enumerate(group):
            try:
                top_ks.append(self.resolve_top_k(request.top_k))
                todo.append(index)
            except ServiceError as error:
                results[index] = error
        try:
            if todo:
                answered = await self.pipeline.classify_each(
                    [group[i].product for i in todo], top_ks, self._deadline(), [PRODUCT_NAME] * len(todo))
                for index, result in zip(todo, answered):
                    results[index] = result
        except Exception as error:  # a bug: each product still gets an answer, INTERNAL
            log.exception("stream group failed")
            for index in todo:
                results[index] = ServiceError(f"internal error: {type(error).__name__}")
        for request, result in zip(group, results):
            self._answers.put_nowait(answer(request.product.id, result))
