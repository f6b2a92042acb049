"""fusion_service as a process: Fuse on embeddings of the model's sizes, and wrong sizes refused;
on each inference runtime (ONNX Runtime, TensorFlow)."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest

from common.model_bundle import Label
from common.runtime import ONNX_FILE
from rakuten.v1 import fusion_pb2, fusion_pb2_grpc
from tensorflow_serving.apis import get_model_metadata_pb2, prediction_service_pb2_grpc
from ops.service_process import ServiceProcess
from training.fitting import FitConfig
from training.fusion_model import FusionConfig, export_fusion_bundle, train_fusion_model

LABELS = [Label(10, "Livre occasion"), Label(2583, "Autour de la piscine")]
TEXT_DIM, IMAGE_DIM = 6, 4


@pytest.fixture(scope="module")
def fusion_models(tmp_path_factory):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    text = rng.normal(size=(200, TEXT_DIM)) + 2 * labels[:, None]
    image = rng.normal(size=(200, IMAGE_DIM))
    model, _ = train_fusion_model(text, image, labels, 2, FusionConfig(hidden_units=8), FitConfig(max_epochs=20))
    models = tmp_path_factory.mktemp("models")
    export_fusion_bundle(model, models, LABELS, {"metrics": {}})
    return models


@pytest.fixture(scope="module", params=["onnx", "tensorflow"])
def service(request, fusion_models, tmp_path_factory):
    process = ServiceProcess("fusion_service", ["--models-dir", str(fusion_models), "--max-items-per-request", "4",
                                                "--runtime", request.param],
                             tmp_path_factory.mktemp("logs")).start()
    process.runtime = request.param
    yield process
    assert process.stop() == 0, process.log()


def fuse(service, pairs, top_k=0):
    stub = fusion_pb2_grpc.FusionStub(service.channel)
    request = fusion_pb2.FuseRequest(top_k=top_k, inputs=[
        fusion_pb2.FusionInput(text_embedding=t, image_embedding=i) for t, i in pairs])
    return stub.Fuse(request, timeout=10)


def test_fuse_answers_in_order(service):
    response = fuse(service, [([2.0] * TEXT_DIM, [0.0] * IMAGE_DIM), ([-2.0] * TEXT_DIM, [0.0] * IMAGE_DIM)])
    assert [r.top_k[0].code for r in response.results] == [2583, 10]
    assert response.results[0].top_k[0].name == "Autour de la piscine"
    assert sum(s.score for s in response.results[0].top_k) == pytest.approx(1.0, abs=1e-5)
    assert (response.model.name, response.model.version) == ("fusion", 1)


@pytest.mark.parametrize("pairs, top_k, code, message", [
    ([], 0, grpc.StatusCode.INVALID_ARGUMENT, "inputs: empty batch"),
    ([([0.0] * TEXT_DIM, [0.0] * IMAGE_DIM)] * 5, 0, grpc.StatusCode.RESOURCE_EXHAUSTED, "inputs: 5 items"),
    ([([0.0] * TEXT_DIM, [0.0] * IMAGE_DIM), ([0.0] * 5, [0.0] * IMAGE_DIM)], 0, grpc.StatusCode.INVALID_ARGUMENT,
     "inputs[1].text_embedding: 5 values, the model expects 6"),
    ([([0.0] * TEXT_DIM, [])], 0, grpc.StatusCode.INVALID_ARGUMENT, "inputs[0].image_embedding: 0 values"),
    ([([float("nan")] * TEXT_DIM, [0.0] * IMAGE_DIM)], 0, grpc.StatusCode.INVALID_ARGUMENT,
     "inputs[0].text_embedding: holds NaN or infinite values"),
    ([([0.0] * TEXT_DIM, [0.0] * IMAGE_DIM)], 3, grpc.StatusCode.INVALID_ARGUMENT, "top_k: must be between 1 and 2"),
])
def test_bad_inputs(service, pairs, top_k, code, message):
    with pytest.raises(grpc.RpcError) as caught:
        fuse(service, pairs, top_k)
    assert caught.value.code() == code and message in caught.value.details()
    assert fuse(service, [([0.0] * TEXT_DIM, [0.0] * IMAGE_DIM)]).results


def test_the_chosen_runtime_serves(service):
    assert f'model_runtime_info{{device="cpu",model="fusion",runtime="{service.runtime}"}} 1.0' in service.metrics()


def loads_tensorflow(process: ServiceProcess) -> bool:
    """Whether TensorFlow's shared library is mapped into the process."""
    return "libtensorflow" in Path(f"/proc/{process.process.pid}/maps").read_text()


def test_onnx_service_loads_tensorflow_only_when_tf_serving_is_called(fusion_models, tmp_path):
    process = ServiceProcess("fusion_service", ["--models-dir", str(fusion_models), "--runtime", "onnx"],
                             tmp_path).start()
    try:
        fuse(process, [([2.0] * TEXT_DIM, [0.0] * IMAGE_DIM)])
        assert not loads_tensorflow(process)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(process.channel)
        metadata = stub.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec={"name": "fusion"}, metadata_field=["signature_def"]), timeout=180)  # loads TensorFlow
        assert metadata.model_spec.version.value == 1
        assert loads_tensorflow(process)
    finally:
        assert process.stop() == 0, process.log()


def test_an_unavailable_runtime_is_refused_at_start(fusion_models, tmp_path):
    without_onnx = tmp_path / "models"
    shutil.copytree(fusion_models, without_onnx)
    (without_onnx / "fusion" / "1" / ONNX_FILE).unlink()
    process = ServiceProcess("fusion_service", ["--models-dir", str(without_onnx), "--runtime", "onnx"], tmp_path)
    with pytest.raises(RuntimeError) as caught:
        process.start(timeout=60)
    assert "runtime 'onnx' asked for, but bundle" in str(caught.value)
    assert f"has no {ONNX_FILE}" in str(caught.value)
