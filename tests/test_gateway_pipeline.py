"""The gateway against fake backends it can break at will: fusion, degraded answers, retries,
deadlines and bad input. (tests/test_system.py runs it against the real services.)"""

import asyncio
import time

import grpc
import pytest

from common.errors import InvalidInput, QueueFull, TooLarge
from common.server import start_server
from gateway.server import Gateway, GatewaySettings
from rakuten.v1 import (classifier_pb2, classifier_pb2_grpc, common_pb2, fusion_pb2, fusion_pb2_grpc, image_pb2,
                        image_pb2_grpc, text_pb2, text_pb2_grpc)
from common.settings import ServiceSettings

CODES = [10, 2583, 2705]


def scores(best: int) -> list[common_pb2.ClassScore]:
    """A full distribution over CODES with `best` first."""
    return [common_pb2.ClassScore(code=c, name=f"name {c}", score=0.8 if c == best else 0.1) for c in CODES]


class Behaviour:
    """What a fake backend does next: answer, fail with a status, refuse with a full queue, or
    stall; `reword` rewrites the message of its refusals (their structured details stay)."""

    def __init__(self):
        self.fail: grpc.StatusCode | None = None
        self.fail_times = 10**9
        self.queue_full = False
        self.reword = None
        self.delay_s = 0.0
        self.calls = 0

    async def apply(self, context):
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail is not None and self.fail_times > 0:
            self.fail_times -= 1
            await context.abort(self.fail, "injected failure")
        if self.queue_full:
            self.refuse(QueueFull("queue full (8 waiting, limit 8); retry later"))

    def refuse(self, error):
        """Raise a refusal through the serving kit, as the real services do."""
        if self.reword is not None:
            error.message = self.reword(error.message)
        raise error


class FakeText(text_pb2_grpc.TextEncoderServicer):
    def __init__(self, behaviour):
        self.behaviour = behaviour

    async def Encode(self, request, context):
        await self.behaviour.apply(context)
        for i, t in enumerate(request.texts):
            if t.designation == "invalid":
                self.behaviour.refuse(InvalidInput.at(f"texts[{i}].designation", "rejected by the model"))
        return text_pb2.EncodeTextResponse(
            results=[text_pb2.TextEncoding(embedding=[1.0, 2.0], top_k=scores(2583), language="fr")
                     for _ in request.texts],
            model=common_pb2.ModelVersion(name="text", version=3), review_threshold=0.9)


class FakeImage(image_pb2_grpc.ImageEncoderServicer):
    def __init__(self, behaviour):
        self.behaviour = behaviour

    async def Encode(self, request, context):
        await self.behaviour.apply(context)
        for i, image in enumerate(request.images):
            if image.data == b"not an image":
                self.behaviour.refuse(InvalidInput.at(f"images[{i}].data", "not a JPEG, PNG, WebP or GIF image"))
            if image.data == b"too many pixels":
                self.behaviour.refuse(TooLarge.at(f"images[{i}].data", "25000000 pixels, the limit is 40000000"))
        return image_pb2.EncodeImageResponse(
            results=[image_pb2.ImageEncoding(embedding=[3.0], top_k=scores(2705)) for _ in request.images],
            model=common_pb2.ModelVersion(name="image", version=2), review_threshold=0.5)


class FakeFusion(fusion_pb2_grpc.FusionServicer):
    def __init__(self, behaviour):
        self.behaviour = behaviour

    async def Fuse(self, request, context):
        await self.behaviour.apply(context)
        return fusion_pb2.FuseResponse(
            results=[fusion_pb2.FusionOutput(top_k=scores(10)) for _ in request.inputs],
            model=common_pb2.ModelVersion(name="fusion", version=1), review_threshold=0.7)


class FakeBackend:
    def __init__(self, servicer, add):
        self.servicer, self.add = servicer, add
        self.service_names = ()

    def register(self, server):
        self.add(self.servicer, server)

    async def start(self):
        pass

    async def stop(self):
        pass


@pytest.fixture
def gateway_overrides():
    """Gateway settings a test module (or a test, by parametrizing this name) changes."""
    return {}


@pytest.fixture
def system(port_factory, gateway_overrides):
    """Runs the gateway and three fake backends in one event loop in a background thread."""
    import threading

    behaviours = {"text": Behaviour(), "image": Behaviour(), "fusion": Behaviour()}
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    backends = {
        "text": FakeBackend(FakeText(behaviours["text"]), text_pb2_grpc.add_TextEncoderServicer_to_server),
        "image": FakeBackend(FakeImage(behaviours["image"]), image_pb2_grpc.add_ImageEncoderServicer_to_server),
        "fusion": FakeBackend(FakeFusion(behaviours["fusion"]), fusion_pb2_grpc.add_FusionServicer_to_server),
    }
    servers = {}
    for name, backend in backends.items():
        settings = ServiceSettings(host="127.0.0.1", port=port_factory(), reflection=False, shutdown_grace_seconds=0)
        servers[name] = run(start_server(backend, settings, with_metrics=False))
    gateway_settings = GatewaySettings(
        host="127.0.0.1", port=port_factory(), shutdown_grace_seconds=0, n_classes=3, late_fusion_text_weight=0.6,
        late_fusion_review_threshold=0.6,
        text_address=f"127.0.0.1:{servers['text'].port}", image_address=f"127.0.0.1:{servers['image'].port}",
        fusion_address=f"127.0.0.1:{servers['fusion'].port}", retry_backoff_ms=20,
        answer_reserve_ms=300,  # room to answer on a busy test machine
        review_threshold=0.55,  # between late fusion's 0.52 and the fakes' 0.8
        **gateway_overrides)
    gateway = run(start_server(Gateway(gateway_settings), gateway_settings, with_metrics=False))
    channel = grpc.insecure_channel(f"127.0.0.1:{gateway.port}")

    class System:
        stub = classifier_pb2_grpc.ProductClassifierStub(channel)

        @staticmethod
        def stop(name):
            run(servers[name].server.stop(0))

    System.behaviours = behaviours
    yield System
    channel.close()
    for running in [gateway, *servers.values()]:
        run(running.server.stop(0))
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def classify(system, timeout=5, **product):
    request = classifier_pb2.ClassifyRequest(product=classifier_pb2.Product(**product), top_k=2)
    return system.stub.Classify(request, timeout=timeout).classification


TEXT, IMAGE = common_pb2.MODALITY_TEXT, common_pb2.MODALITY_IMAGE


def test_text_and_image_go_through_fusion(system):
    answer = classify(system, id="p1", designation="Piscine", image=b"jpeg")
    assert answer.id == "p1"
    assert [s.code for s in answer.top_k] == [10, 2583]
    assert list(answer.modalities) == [TEXT, IMAGE] and not answer.degraded
    assert answer.language == "fr"
    assert {(m.name, m.version) for m in answer.models} == {("text", 3), ("image", 2), ("fusion", 1)}
    assert [t.stage for t in answer.timings] == ["text", "image", "fusion", "total"]


def test_a_missing_image_is_a_text_answer_not_degraded(system):
    answer = classify(system, designation="Piscine")
    assert answer.top_k[0].code == 2583 and list(answer.modalities) == [TEXT] and not answer.degraded
    assert system.behaviours["image"].calls == 0 and system.behaviours["fusion"].calls == 0


def test_image_only_product(system):
    answer = classify(system, image=b"jpeg")
    assert answer.top_k[0].code == 2705 and list(answer.modalities) == [IMAGE] and answer.language == ""


def test_image_service_down_degrades_to_text(system):
    system.stop("image")
    answer = classify(system, designation="Piscine", image=b"jpeg")
    assert answer.degraded and "image unavailable" in answer.degraded_reason
    assert list(answer.modalities) == [TEXT] and answer.top_k[0].code == 2583


def test_text_service_failing_degrades_to_image(system):
    system.behaviours["text"].fail = grpc.StatusCode.INTERNAL
    answer = classify(system, designation="Piscine", image=b"jpeg")
    assert answer.degraded and "text unavailable" in answer.degraded_reason
    assert list(answer.modalities) == [IMAGE]


def test_fusion_down_falls_back_to_late_fusion(system):
    system.stop("fusion")
    answer = classify(system, designation="Piscine", image=b"jpeg")
    assert answer.degraded and "late fusion" in answer.degraded_reason
    assert list(answer.modalities) == [TEXT, IMAGE]
    # 0.6 * text (2583: 0.8) + 0.4 * image (2705: 0.8): 2583 first at 0.52, 2705 next at 0.38
    assert [s.code for s in answer.top_k] == [2583, 2705]
    assert answer.top_k[0].score == pytest.approx(0.52)


def served(metric, **labels):
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(metric, labels) or 0.0


def test_answers_are_counted_by_class_modalities_confidence_and_review(system):
    """The watch on the answers (docs/metrics.md): per predicted class and modalities, the top
    probability histogram, answers needing review (top probability under review_threshold), degraded."""
    before = {"fused": served("gateway_answers_total", modalities="text+image", code="10"),
              "text": served("gateway_answers_total", modalities="text", code="2583"),
              "sure": served("gateway_top_probability_bucket", modalities="text+image", le="0.9"),
              "count": served("gateway_top_probability_count", modalities="text+image"),
              "review": served("gateway_needs_review_answers_total", modalities="text+image"),
              "degraded": served("gateway_degraded_answers_total", reason="fusion_failed")}
    classify(system, designation="Piscine", image=b"jpeg")  # fusion: 10 at 0.8 (float32: just above 0.8)
    classify(system, designation="Piscine")  # text: 2583 at 0.8
    assert served("gateway_answers_total", modalities="text+image", code="10") == before["fused"] + 1
    assert served("gateway_answers_total", modalities="text", code="2583") == before["text"] + 1
    assert served("gateway_top_probability_bucket", modalities="text+image", le="0.9") == before["sure"] + 1
    assert served("gateway_needs_review_answers_total", modalities="text+image") == before["review"]
    # Every (modalities, class) series exists from the first answer on, so increase() counts the next.
    from prometheus_client import REGISTRY
    for modalities in ("text", "image", "text+image"):
        for code in CODES:
            assert REGISTRY.get_sample_value("gateway_answers_total", {"modalities": modalities, "code": str(code)}) \
                is not None
    system.stop("fusion")
    classify(system, designation="Piscine", image=b"jpeg")  # late fusion: 2583 at 0.52 < 0.55
    assert served("gateway_needs_review_answers_total", modalities="text+image") == before["review"] + 1
    assert served("gateway_answers_total", modalities="text+image", code="2583") >= 1
    assert served("gateway_top_probability_bucket", modalities="text+image", le="0.5") < \
        served("gateway_top_probability_bucket", modalities="text+image", le="0.6")
    assert served("gateway_top_probability_count", modalities="text+image") == before["count"] + 2
    assert served("gateway_degraded_answers_total", reason="fusion_failed") == before["degraded"] + 1


def test_needs_review_follows_the_threshold_of_the_model_that_produced_the_scores(system):
    def flagged() -> float:
        return sum(served("gateway_needs_review_answers_total", modalities=m) for m in ("text", "image", "text+image"))

    before = flagged()
    # Every top score is 0.8; thresholds: text 0.9, image 0.5, fusion 0.7, late fusion 0.6.
    assert classify(system, designation="Piscine").needs_review
    assert not classify(system, image=b"jpeg").needs_review
    assert not classify(system, designation="Piscine", image=b"jpeg").needs_review
    assert flagged() == before + 1
    system.stop("fusion")
    late = classify(system, designation="Piscine", image=b"jpeg")
    assert late.degraded and late.top_k[0].score == pytest.approx(0.52) and late.needs_review
    assert flagged() == before + 2


def test_a_full_image_queue_degrades_to_text(system):
    # RESOURCE_EXHAUSTED naming no item is the stage's load, not the caller's input: degrade
    system.behaviours["image"].fail = grpc.StatusCode.RESOURCE_EXHAUSTED
    answer = classify(system, designation="Piscine", image=b"jpeg")
    assert answer.degraded and "image unavailable" in answer.degraded_reason and list(answer.modalities) == [TEXT]


def test_a_full_queue_degrades_on_its_error_info_not_on_its_message(system):
    # ErrorInfo QUEUE_FULL, whatever the message, even one that reads like a refused item
    system.behaviours["image"].queue_full = True
    system.behaviours["image"].reword = lambda message: "images[0].data: 25000000 pixels, the limit is 40000000"
    answer = classify(system, designation="Piscine", image=b"jpeg")
    assert answer.degraded and "image unavailable" in answer.degraded_reason and list(answer.modalities) == [TEXT]
    assert "QUEUE_FULL" not in answer.degraded_reason and "RESOURCE_EXHAUSTED" in answer.degraded_reason


REWORDINGS = {
    "as sent": None,
    "reworded": lambda message: "Das Bild ist zu groß.",
    "naming another field": lambda message: "texts[7].description: the queue is full",
    "empty": lambda message: "",
}


@pytest.mark.parametrize("reword", REWORDINGS.values(), ids=REWORDINGS.keys())
def test_the_gateway_decides_on_a_stages_error_details_not_its_message(system, reword):
    system.behaviours["image"].reword = system.behaviours["text"].reword = reword
    with pytest.raises(grpc.RpcError) as caught:  # the caller's image: the call fails, naming it
        classify(system, designation="Piscine", image=b"too many pixels")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.details() == "products[0].image: 25000000 pixels, the limit is 40000000"
    with pytest.raises(grpc.RpcError) as caught:
        classify(system, designation="invalid")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "products[0].designation: rejected by the model"
    system.behaviours["image"].queue_full = True  # the stage's load: the answer degrades
    answer = classify(system, designation="Piscine", image=b"jpeg")
    assert answer.degraded and list(answer.modalities) == [TEXT]


def test_an_image_too_large_for_the_image_service_is_the_callers_error(system):
    with pytest.raises(grpc.RpcError) as caught:
        classify(system, designation="Piscine", image=b"too many pixels")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "products[0].image" in caught.value.details()


def test_both_encoders_down_is_unavailable_with_reasons(system):
    system.stop("text")
    system.stop("image")
    with pytest.raises(grpc.RpcError) as caught:
        classify(system, designation="Piscine", image=b"jpeg")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "products[0]: no modality could answer" in caught.value.details()
    assert "text unavailable" in caught.value.details() and "image unavailable" in caught.value.details()


def test_unavailable_is_retried_once(system):
    system.behaviours["image"].fail, system.behaviours["image"].fail_times = grpc.StatusCode.UNAVAILABLE, 1
    answer = classify(system, designation="Piscine", image=b"jpeg")
    assert not answer.degraded and system.behaviours["image"].calls == 2


def test_a_slow_backend_degrades_within_the_deadline(system):
    system.behaviours["image"].delay_s = 5
    started = time.monotonic()
    answer = classify(system, timeout=2.0, designation="Piscine", image=b"jpeg")
    assert time.monotonic() - started < 2.0
    assert answer.degraded and "DEADLINE_EXCEEDED" in answer.degraded_reason


def test_the_callers_deadline_holds_when_nothing_can_answer_in_time(system):
    system.behaviours["text"].delay_s = 5
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        classify(system, timeout=0.5, designation="Piscine")
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 5.0  # never hangs


def test_batch_keeps_order_and_mixes_modalities(system):
    request = classifier_pb2.ClassifyBatchRequest(products=[
        classifier_pb2.Product(id="a", image=b"jpeg"),
        classifier_pb2.Product(id="b", designation="Piscine"),
        classifier_pb2.Product(id="c", designation="Piscine", image=b"jpeg")], top_k=1)
    answers = system.stub.ClassifyBatch(request, timeout=5).classifications
    assert [a.id for a in answers] == ["a", "b", "c"]
    assert [a.top_k[0].code for a in answers] == [2705, 2583, 10]


@pytest.mark.parametrize("products, code, message", [
    ([], grpc.StatusCode.INVALID_ARGUMENT, "products: empty batch"),
    ([classifier_pb2.Product()], grpc.StatusCode.INVALID_ARGUMENT, "products[0]: designation, description and image are all empty"),
    ([classifier_pb2.Product(designation="ok"), classifier_pb2.Product(designation="a\x07")],
     grpc.StatusCode.INVALID_ARGUMENT, "products[1].designation: control character U+0007"),
    ([classifier_pb2.Product(description="x" * 60_000)], grpc.StatusCode.RESOURCE_EXHAUSTED,
     "products[0].description: 60000 characters"),
    ([classifier_pb2.Product(image=b"x" * (11 * 1024 * 1024))], grpc.StatusCode.RESOURCE_EXHAUSTED,
     "products[0].image: 11534336 bytes"),
    ([classifier_pb2.Product(designation="a")] * 65, grpc.StatusCode.RESOURCE_EXHAUSTED, "products: 65 products"),
    ([classifier_pb2.Product(designation="ok"), classifier_pb2.Product(designation="invalid")],
     grpc.StatusCode.INVALID_ARGUMENT, "products[1].designation: rejected by the model"),
    ([classifier_pb2.Product(designation="ok"), classifier_pb2.Product(image=b"jpeg"),
      classifier_pb2.Product(image=b"not an image")],
     grpc.StatusCode.INVALID_ARGUMENT, "products[2].image: not a JPEG"),
])
def test_bad_input_names_the_product_field(system, products, code, message):
    with pytest.raises(grpc.RpcError) as caught:
        system.stub.ClassifyBatch(classifier_pb2.ClassifyBatchRequest(products=products), timeout=5)
    assert caught.value.code() == code
    assert message in caught.value.details()
    assert classify(system, designation="still serving").top_k


@pytest.mark.parametrize("top_k", [-1, 4])
def test_top_k_out_of_range(system, top_k):
    request = classifier_pb2.ClassifyRequest(product=classifier_pb2.Product(designation="x"), top_k=top_k)
    with pytest.raises(grpc.RpcError) as caught:
        system.stub.Classify(request, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "top_k" in caught.value.details()
