"""The dynamic batcher: batch limits, delay, splitting, back-pressure and failure isolation."""

import asyncio
import threading
import time

import pytest

from common.batching import DynamicBatcher
from common.errors import NotReady, TooLarge


class RecordingModel:
    """Doubles its inputs and records the batch sizes it was called with."""

    def __init__(self, delay_s: float = 0.0):
        self.batches: list[list[int]] = []
        self.delay_s = delay_s

    def __call__(self, items):
        self.batches.append(list(items))
        time.sleep(self.delay_s)
        return [2 * x for x in items]


def run(coro):
    return asyncio.run(coro)


def test_concurrent_calls_share_one_model_call():
    model = RecordingModel()

    async def scenario():
        batcher = DynamicBatcher("t", model, max_batch_size=16, max_delay_s=0.05)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit([i]) for i in range(10)))
        await batcher.stop()
        return results

    assert run(scenario()) == [[2 * i] for i in range(10)]
    assert [len(b) for b in model.batches] == [10]


def test_batches_never_exceed_max_size_and_large_calls_are_split_in_order():
    model = RecordingModel()

    async def scenario():
        batcher = DynamicBatcher("t", model, max_batch_size=4, max_delay_s=0.01)
        batcher.start()
        result = await batcher.submit(list(range(10)))
        await batcher.stop()
        return result

    assert run(scenario()) == [2 * i for i in range(10)]
    assert max(len(b) for b in model.batches) <= 4
    assert sum(model.batches, []) == list(range(10))


def test_a_lone_item_waits_about_max_delay_not_forever():
    model = RecordingModel()

    async def scenario():
        batcher = DynamicBatcher("t", model, max_batch_size=64, max_delay_s=0.02)
        batcher.start()
        started = time.perf_counter()
        await batcher.submit([1])
        waited = time.perf_counter() - started
        await batcher.stop()
        return waited

    assert run(scenario()) < 1.0  # generous: the point is it does not wait for a full batch


def test_a_batch_waits_only_for_items_announced_on_their_way():
    model = RecordingModel()

    async def scenario():
        batcher = DynamicBatcher("t", model, max_batch_size=16, max_delay_s=0.5)
        batcher.start()
        started = time.perf_counter()
        await batcher.submit([1])  # nothing else announced: no reason to wait
        lone = time.perf_counter() - started

        async def call_that_prepares_first():
            with batcher.expecting(1):
                await asyncio.sleep(0.05)  # decoding, say
            return await batcher.submit([3])

        preparing = asyncio.ensure_future(call_that_prepares_first())
        await asyncio.sleep(0)  # it has announced its item
        await asyncio.gather(batcher.submit([2]), preparing)
        await batcher.stop()
        return lone

    assert run(scenario()) < 0.25  # not the 0.5 s max delay
    assert model.batches == [[1], [2, 3]]  # the announced item joined the waiting one


def test_items_queue_while_the_model_is_busy_and_form_the_next_batch():
    model = RecordingModel(delay_s=0.05)

    async def scenario():
        batcher = DynamicBatcher("t", model, max_batch_size=32, max_delay_s=0.0)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit([0]))
        await asyncio.sleep(0.01)  # the first call is now running
        rest = await asyncio.gather(*(batcher.submit([i]) for i in range(1, 9)))
        await first
        await batcher.stop()
        return rest

    run(scenario())
    assert [len(b) for b in model.batches] == [1, 8]


def test_full_queue_is_refused_with_resource_exhausted():
    release = threading.Event()

    def blocked(items):
        release.wait(5)
        return items

    async def scenario():
        batcher = DynamicBatcher("t", blocked, max_batch_size=1, max_delay_s=0.0, max_queue_size=3)
        batcher.start()
        running = asyncio.ensure_future(batcher.submit([0]))
        await asyncio.sleep(0.01)
        waiting = asyncio.ensure_future(batcher.submit([1, 2, 3]))
        await asyncio.sleep(0.01)
        with pytest.raises(TooLarge, match="queue full"):
            await batcher.submit([4])
        release.set()
        results = (await running, await waiting)
        await batcher.stop()
        return results

    assert run(scenario()) == ([0], [1, 2, 3])


def test_a_failing_batch_fails_its_callers_and_the_batcher_keeps_working():
    calls = []

    def flaky(items):
        calls.append(items)
        if len(calls) == 1:
            raise ValueError("boom")
        return items

    async def scenario():
        batcher = DynamicBatcher("t", flaky, max_batch_size=8, max_delay_s=0.0)
        batcher.start()
        with pytest.raises(ValueError, match="boom"):
            await batcher.submit([1])
        result = await batcher.submit([2])
        await batcher.stop()
        return result

    assert run(scenario()) == [2]


def test_cancelled_callers_are_skipped():
    model = RecordingModel(delay_s=0.05)

    async def scenario():
        batcher = DynamicBatcher("t", model, max_batch_size=8, max_delay_s=0.0)
        batcher.start()
        busy = asyncio.ensure_future(batcher.submit([0]))
        await asyncio.sleep(0.01)
        gone = asyncio.ensure_future(batcher.submit([1]))
        await asyncio.sleep(0)
        gone.cancel()
        kept = await batcher.submit([2])
        await busy
        await batcher.stop()
        return kept

    assert run(scenario()) == [4]
    assert [1] not in model.batches and sum(model.batches, []) == [0, 2]


def test_submit_before_start_or_after_stop_is_unavailable():
    async def scenario():
        batcher = DynamicBatcher("t", RecordingModel())
        with pytest.raises(NotReady):
            await batcher.submit([1])
        batcher.start()
        await batcher.stop()
        with pytest.raises(NotReady):
            await batcher.submit([1])

    run(scenario())
