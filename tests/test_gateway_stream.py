"""ClassifyStream against the fake backends of test_gateway_pipeline: the window holds under a fast
writer and a slow reader, products are grouped, each product gets its answer or its own error,
deadlines and degradation work as in ClassifyBatch."""

import threading
import time

import grpc
import pytest
from prometheus_client import REGISTRY

from gateway import metrics
from rakuten.v1 import classifier_pb2, common_pb2
from tests.test_gateway_pipeline import gateway_overrides, system  # noqa: F401 (fixtures)

WINDOW = 4


class Peak:
    """Stands in for the held-products gauge: its value and the highest it reached."""

    def __init__(self):
        self.value = self.peak = 0
        self._lock = threading.Lock()

    def inc(self, amount=1):
        with self._lock:
            self.value += amount
            self.peak = max(self.peak, self.value)


def request(id, top_k=1, **product):
    return classifier_pb2.ClassifyRequest(product=classifier_pb2.Product(id=id, **product), top_k=top_k)


def stream(system, requests, timeout=20):
    return list(system.stub.ClassifyStream(iter(requests), timeout=timeout))


def by_id(answers):
    ids = [a.id for a in answers]
    assert len(ids) == len(set(ids)), "an id answered twice"
    return {a.id: a for a in answers}


@pytest.mark.parametrize("gateway_overrides", [{"stream_window": WINDOW}])
def test_a_fast_writer_is_held_to_the_window_and_every_product_answered(system, monkeypatch):
    """The gateway reads slower than the client writes (its backends take 20 ms a call): it never
    holds more than the window, and HTTP/2 flow control holds the writer back."""
    held = Peak()
    monkeypatch.setattr(metrics, "STREAM_HELD", held)
    system.behaviours["text"].delay_s = system.behaviours["image"].delay_s = 0.02
    total = 100
    sent = 0
    leads = []  # products the writer had sent beyond the answers read, at each answer

    def products():
        nonlocal sent
        for i in range(total):
            sent += 1
            yield request(f"p{i}", designation="Piscine", image=b"j" * 200_000)

    answers = []
    for answer in system.stub.ClassifyStream(products(), timeout=60):
        answers.append(answer)
        leads.append(sent - len(answers))
    assert set(by_id(answers)) == {f"p{i}" for i in range(total)}
    assert all(a.HasField("classification") and not a.classification.degraded for a in answers)
    assert held.peak == WINDOW, f"the gateway held up to {held.peak} products, the window is {WINDOW}"
    assert held.value == 0
    print(f"the writer ran at most {max(leads)} products ahead of the answers")
    assert max(leads) < total // 2, leads


@pytest.mark.parametrize("gateway_overrides", [{"stream_group_delay_ms": 50}])
def test_products_that_arrive_together_share_a_pipeline_call(system):
    answers = stream(system, [request(f"p{i}", designation="Piscine") for i in range(32)])
    assert len(by_id(answers)) == 32
    assert system.behaviours["text"].calls <= 8, f"{system.behaviours['text'].calls} text calls for 32 products"


def test_a_bad_product_gets_its_own_error_and_the_stream_goes_on(system):
    answers = by_id(stream(system, [
        request("ok1", designation="Piscine"),
        request("control", designation="a\x07"),
        request("empty"),
        request("refused", designation="invalid"),  # the text stage refuses it
        request("not-an-image", designation="Piscine", image=b"not an image"),
        request("top-k", top_k=99, designation="Piscine"),
        request("ok2", designation="Piscine", image=b"jpeg"),
    ]))
    invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    expected = {
        "control": "product.designation: control character U+0007",
        "empty": "product: designation, description and image are all empty",
        "refused": "product.designation: rejected by the model",
        "not-an-image": "product.image: not a JPEG",
        "top-k": "top_k: must be between 1 and 3",
    }
    for id, message in expected.items():
        assert answers[id].HasField("error"), id
        assert answers[id].error.code == invalid and message in answers[id].error.message, answers[id].error
    assert answers["ok1"].classification.top_k[0].code == 2583
    assert answers["ok2"].classification.top_k[0].code == 10 and not answers["ok2"].classification.degraded


@pytest.mark.parametrize("gateway_overrides", [{"default_deadline_seconds": 1.5}])
def test_each_group_keeps_the_deadline_and_the_stream_goes_on(system):
    system.behaviours["text"].delay_s = 10
    started = time.monotonic()
    answers = by_id(stream(system, [request("text", designation="Piscine"),
                                    request("both", designation="Piscine", image=b"jpeg")]))
    assert time.monotonic() - started < 5
    assert answers["text"].error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert "product: no modality could answer" in answers["text"].error.message
    both = answers["both"].classification
    assert both.degraded and "DEADLINE_EXCEEDED" in both.degraded_reason
    assert list(both.modalities) == [common_pb2.MODALITY_IMAGE]


def test_the_streams_own_deadline_is_kept_when_sooner(system):
    system.behaviours["text"].delay_s = 10
    started = time.monotonic()
    answers = stream(system, [request("text", designation="Piscine")], timeout=1.5)
    assert time.monotonic() - started < 1.5
    assert answers[0].id == "text" and answers[0].error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


def test_a_stage_down_degrades_stream_answers(system):
    system.stop("image")
    answers = by_id(stream(system, [request("both", designation="Piscine", image=b"jpeg"),
                                    request("image-only", image=b"jpeg"),
                                    request("text-only", designation="Piscine")]))
    both = answers["both"].classification
    assert both.degraded and "image unavailable" in both.degraded_reason
    assert list(both.modalities) == [common_pb2.MODALITY_TEXT]
    assert answers["image-only"].error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "image unavailable" in answers["image-only"].error.message
    assert not answers["text-only"].classification.degraded


def test_stream_items_are_counted(system):
    def counts():
        return [REGISTRY.get_sample_value("gateway_stream_items_total", {"code": code}) or 0
                for code in ("OK", "INVALID_ARGUMENT")]

    before = counts()
    stream(system, [request("a", designation="Piscine"), request("b")])
    assert [after - was for after, was in zip(counts(), before)] == [1, 1]


def test_an_empty_stream_ends_with_no_answers(system):
    assert stream(system, []) == []
