"""text_service as a process, with a small text model trained on synthetic products: health,
reflection, Encode, TF Serving's Predict and GetModelMetadata, metrics, bad input, hot reload;
each on the text model's fast runtime (`--runtime onnx`: NumPy) and on TensorFlow."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from rakuten.v1 import text_pb2, text_pb2_grpc
from ops.service_process import ServiceProcess
from tests.synthetic_products import LABELS, products
from text_service.language import detect_language
from text_service.preprocessing import preprocess
from training.fitting import FitConfig
from training.text_model import TextModelConfig, export_text_bundle, train_text_model

HIDDEN_UNITS = 16
EMBEDDING_DIM = HIDDEN_UNITS + len(LABELS)  # the hidden units and the wide path's logits
SMALL = TextModelConfig(word_vocabulary=300, char_vocabulary=300, char_ngrams=(3,), embedding_dim=HIDDEN_UNITS,
                        fit=FitConfig(max_epochs=15, learning_rate=1e-2))


def train_and_export(models_root, seed: int = 0):
    texts, labels = products(240, seed)
    prepared = [preprocess(designation, description) for designation, description in texts]
    trained = train_text_model(prepared, labels, len(LABELS), SMALL)
    return export_text_bundle(trained.model, models_root, [(label.code, label.name) for label in LABELS],
                              training_data={"synthetic": True}, metrics={}, hyperparameters={})


@pytest.fixture(scope="module", params=["onnx", "tensorflow"])
def runtime(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def models_root(runtime, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    train_and_export(root)
    return root


@pytest.fixture(scope="module")
def service(models_root, runtime, tmp_path_factory):
    process = ServiceProcess("text_service", ["--models-dir", str(models_root), "--model-poll-seconds", "0.5",
                                              "--max-items-per-request", "16", "--runtime", runtime],
                             tmp_path_factory.mktemp("logs")).start()
    yield process
    assert process.stop() == 0, process.log()


def encode(service, texts, top_k=0, timeout=10):
    stub = text_pb2_grpc.TextEncoderStub(service.channel)
    request = text_pb2.EncodeTextRequest(top_k=top_k, texts=[
        text_pb2.TextInput(designation=d, description=s) for d, s in texts])
    return stub.Encode(request, timeout=timeout)


def test_health_and_reflection(service):
    for name in ("", "rakuten.v1.TextEncoder", "tensorflow.serving.PredictionService"):
        assert service.health(name) == health_pb2.HealthCheckResponse.SERVING
    services = ProtoReflectionDescriptorDatabase(service.channel).get_services()
    assert {"rakuten.v1.TextEncoder", "tensorflow.serving.PredictionService", "grpc.health.v1.Health"} <= set(services)


def test_the_model_runs_on_the_runtime_asked_for(service, runtime):
    expected = "numpy" if runtime == "onnx" else "tensorflow"  # the text model's fast runtime is NumPy
    assert f'model_runtime_info{{device="cpu",model="text",runtime="{expected}"}} 1.0' in service.metrics()
    encode(service, [("Carte Pokémon rare", "holographique")])
    # on NumPy, TensorFlow is loaded only when a TF Serving client calls (test_tf_serving_predict...)
    assert ("libtensorflow" in Path(f"/proc/{service.process.pid}/maps").read_text()) == (runtime == "tensorflow")


def test_encode_runs_the_pipeline_and_the_model(service):
    response = encode(service, [("Une table très jolie!", "+Dimensions : 60 x 33 cm"),
                                ("Pompe de filtration pour piscine", "<b>skimmer</b> et bâche"),
                                ("Roman policier, édition de poche", "")], top_k=2)
    first, pool, book = response.results
    assert first.normalized_text == "tabl tres jol dimens cm" and first.language == "fr"
    assert pool.top_k[0].code == 2583 and pool.top_k[0].name == "Autour de la piscine"
    assert book.top_k[0].code == 2705
    for result in response.results:
        assert len(result.embedding) == EMBEDDING_DIM and len(result.top_k) == 2
        assert result.top_k[0].score >= result.top_k[1].score
    assert response.model.name == "text" and response.model.version >= 1
    assert [t.stage for t in response.timings] == ["preprocess", "model", "total"]


def test_the_language_detector_setting_reaches_the_service(service, models_root, tmp_path):
    """The default (py3langid) answers "fr" for a short French title langdetect calls Italian;
    LANGUAGE_DETECTOR=langdetect (the environment form of --language-detector) brings it back."""
    title = [("Album photo 200 pochettes", "")]
    assert encode(service, title).results[0].language == "fr"
    reference = ServiceProcess("text_service", ["--models-dir", str(models_root), "--model-poll-seconds", "0"],
                               tmp_path, env={"LANGUAGE_DETECTOR": "langdetect"}).start()
    try:
        result = encode(reference, title).results[0]
        assert result.language == detect_language(title[0][0], "langdetect") != "fr"
        assert result.normalized_text == encode(service, title).results[0].normalized_text
    finally:
        assert reference.stop() == 0, reference.log()


def test_omit_embedding(service):
    stub = text_pb2_grpc.TextEncoderStub(service.channel)
    request = text_pb2.EncodeTextRequest(texts=[text_pb2.TextInput(designation="Carte Pokémon rare")],
                                         omit_embedding=True)
    result = stub.Encode(request, timeout=10).results[0]
    assert not result.embedding and result.top_k[0].code == 1160


def test_tf_serving_predict_and_metadata(service):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(service.channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "text"
    prepared = preprocess("Bâche pour piscine", "")
    request.inputs["text"].CopyFrom(tf.make_tensor_proto([prepared.text]))
    request.inputs["cleaned"].CopyFrom(tf.make_tensor_proto([prepared.cleaned]))
    response = stub.Predict(request, timeout=60)  # on NumPy, the first TF Serving call loads TensorFlow
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    assert probabilities.shape == (1, len(LABELS)) and int(probabilities.argmax()) == 1
    assert tf.make_ndarray(response.outputs["embedding"]).shape == (1, EMBEDDING_DIM)

    request.output_filter.append("probabilities")
    assert set(stub.Predict(request, timeout=10).outputs) == {"probabilities"}

    metadata = stub.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=request.model_spec, metadata_field=["signature_def"]), timeout=10)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    metadata.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    assert set(signature.inputs) == {"text", "cleaned"} and set(signature.outputs) == {"embedding", "probabilities"}

    for change, code in [(lambda r: setattr(r.model_spec, "name", "image"), grpc.StatusCode.NOT_FOUND),
                         (lambda r: r.inputs["text"].CopyFrom(tf.make_tensor_proto([1.0])),
                          grpc.StatusCode.INVALID_ARGUMENT),
                         (lambda r: r.inputs.__delitem__("cleaned"), grpc.StatusCode.INVALID_ARGUMENT),
                         (lambda r: r.model_spec.version.__setattr__("value", 99), grpc.StatusCode.NOT_FOUND)]:
        bad = predict_pb2.PredictRequest()
        bad.CopyFrom(request)
        change(bad)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(bad, timeout=10)
        assert caught.value.code() == code


def test_metrics(service):
    encode(service, [("Carte rare", "")])
    body = service.metrics()
    assert 'grpc_server_handled_total{grpc_code="OK",grpc_method="Encode",grpc_service="rakuten.v1.TextEncoder"}' in body
    assert 'model_batch_size_count{model="text"}' in body
    assert 'grpc_server_in_flight_requests{grpc_method="Encode",grpc_service="rakuten.v1.TextEncoder"}' in body


@pytest.mark.parametrize("texts, top_k, code, message", [
    ([("", "")], 0, grpc.StatusCode.INVALID_ARGUMENT, "texts[0]: designation and description are both empty"),
    ([("ok", ""), ("  ", "\n")], 0, grpc.StatusCode.INVALID_ARGUMENT, "texts[1]: designation and description"),
    ([("ok", "x" * 1_048_576)], 0, grpc.StatusCode.RESOURCE_EXHAUSTED,
     "texts[0].description: 1048576 characters, the limit is 50000"),
    ([("y" * 1001, "")], 0, grpc.StatusCode.RESOURCE_EXHAUSTED, "texts[0].designation: 1001 characters"),
    ([("Carte\x00rare", "")], 0, grpc.StatusCode.INVALID_ARGUMENT,
     "texts[0].designation: control character U+0000 at position 5"),
    ([("ok", "bip\x1b[31m")], 0, grpc.StatusCode.INVALID_ARGUMENT, "texts[0].description: control character U+001B"),
    ([], 0, grpc.StatusCode.INVALID_ARGUMENT, "texts: empty batch"),
    ([("ok", "")] * 17, 0, grpc.StatusCode.RESOURCE_EXHAUSTED, "texts: 17 items, the limit is 16 per call"),
    ([("ok", "")], 4, grpc.StatusCode.INVALID_ARGUMENT, "top_k: must be between 1 and 3"),
    ([("ok", "")], -2, grpc.StatusCode.INVALID_ARGUMENT, "top_k"),
])
def test_bad_input_is_refused_and_the_service_keeps_serving(service, texts, top_k, code, message):
    with pytest.raises(grpc.RpcError) as caught:
        encode(service, texts, top_k)
    assert caught.value.code() == code
    assert message in caught.value.details()
    assert encode(service, [("Carte Pokémon", "")]).results[0].top_k


def test_tabs_and_newlines_are_fine(service):
    assert encode(service, [("Pompe\tpiscine", "ligne 1\r\nligne 2")]).results


def test_a_new_version_is_picked_up_without_restart(service, models_root):
    assert encode(service, [("Carte", "")]).model.version == 1
    train_and_export(models_root, seed=1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if encode(service, [("Carte", "")]).model.version == 2:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"version 2 not served after 60 s:\n{service.log()}")
    assert 'model_version_info{model="text",version="2"} 1.0' in service.metrics()


def test_c1_controls_of_real_catalogue_text_are_accepted(service):
    # Windows-1252 punctuation read as Latin-1 (U+0096: an en dash) occurs in real descriptions
    result = encode(service, [("Lampe de chevet", "hauteur 30 cm \x96 abat-jour en lin")]).results[0]
    assert result.top_k and "\x96" not in result.normalized_text
