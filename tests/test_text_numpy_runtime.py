"""The text model's NumPy runtime against its SavedModel: same outputs (max abs difference <= 1e-4)
on product texts and odd strings, the bundle files export writes, runtime selection, and a text
service on the NumPy runtime that never imports TensorFlow."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from common.model_bundle import bundle_size_bytes, read_bundle  # noqa: E402
from common.runtime import ONNX, TENSORFLOW, RuntimeConfig, RuntimeUnavailable  # noqa: E402
from common.settings import PROJECT_ROOT  # noqa: E402
from tests.synthetic_products import LABELS, products  # noqa: E402
from text_service.model import EncoderUnavailable, TextModel, text_runtime  # noqa: E402
from text_service.numpy_model import NUMPY, VECTORIZER_FILE, NumpyTextModel, numpy_record  # noqa: E402
from text_service.preprocessing import preprocess  # noqa: E402
from training.fitting import FitConfig  # noqa: E402
from training.text_model import E5_DIM, TextModelConfig, export_text_bundle, train_text_model  # noqa: E402
from training.text_runtime_files import write_numpy_runtime  # noqa: E402

TOLERANCE = 1e-4
# Small vocabularies, so that product texts hold out-of-vocabulary words and n-grams.
# With the wide path, the e5 tower and float16 kernels: every part the runtime computes.
SMALL = TextModelConfig(word_vocabulary=120, char_vocabulary=400, embedding_dim=16, e5=True,
                        fit=FitConfig(max_epochs=6, learning_rate=1e-2))

ODD_STRINGS = [
    "", " ", "\t\n\r\x0b\x0c", "a", "é", "ab", "  double  spaces  ", "trailing space ",
    "non\u00a0breaking\u2003em space\u3000ideographic", "file\x1cseparators\x1d\x1e\x1f", "line\u2028sep\x85nel",
    "漢字 テスト 한국어", "emoji 🎉🎉 👍🏽 family 👨‍👩‍👧", "combining e\u0301 vs é", "ﬁ ligature Ǆ ß ẞ",
    "zero\u200bwidth\ufeffbom", "nul\x00inside", "60x33 cm 5kg 3,5mm 1/2\" 220v 12.5l 2x", "\ufffd replacement",
    "repeat " * 500, "x" * 5000, "pompe piscine filtration " * 300,
]


def sample_products(count: int, seed: int):
    texts, _ = products(count, seed)
    return [preprocess(designation, description) for designation, description in texts]


def unit_vectors(count: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, E5_DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    texts, labels = products(240, 0)
    prepared = [preprocess(designation, description) for designation, description in texts]
    trained = train_text_model(prepared, labels, len(LABELS), SMALL, e5=unit_vectors(240, 0))
    return export_text_bundle(trained.model, tmp_path_factory.mktemp("models"),
                              [(label.code, label.name) for label in LABELS],
                              training_data={"synthetic": True}, metrics={}, hyperparameters={})


@pytest.fixture(scope="module")
def signature(bundle):
    return tf.saved_model.load(str(bundle.path)).signatures["serving_default"]


@pytest.fixture(scope="module")
def runtime(bundle):
    return NumpyTextModel.load(bundle.path, numpy_record(bundle.metadata))


def max_difference(signature, runtime, text, cleaned) -> float:
    """On a model with the e5 tower, with random e5 vectors (the zero vector is checked at export)."""
    e5 = {"e5": unit_vectors(len(text), len(text))} if runtime.has_e5 else {}
    expected = signature(text=tf.constant(text, dtype=tf.string), cleaned=tf.constant(cleaned, dtype=tf.string),
                         **{name: tf.constant(value) for name, value in e5.items()})
    got = runtime(text=np.array(text, dtype=object), cleaned=np.array(cleaned, dtype=object), **e5)
    for name in ("embedding", "probabilities"):
        assert got[name].dtype == np.float32 and got[name].shape == tuple(expected[name].shape)
    return max(float(np.max(np.abs(got[name] - expected[name].numpy()))) for name in ("embedding", "probabilities"))


def test_export_writes_the_runtime_files_checked_against_the_saved_model(bundle):
    section = numpy_record(bundle.metadata)
    assert set(bundle.metadata["runtimes"]) == {TENSORFLOW, NUMPY}
    assert section["vectorizer"] == VECTORIZER_FILE and (bundle.path / VECTORIZER_FILE).is_file()
    assert section["max_abs_difference"] <= TOLERANCE
    assert (bundle.path / section["weights"]["file"]).is_file()
    tensors = section["weights"]["tensors"]
    assert set(tensors) == {"word_idf", "char_idf", "hidden_kernel", "hidden_bias", "deep_kernel", "deep_bias",
                            "wide_kernel", "e5_hidden_kernel", "e5_wide_kernel"}
    assert tensors["hidden_kernel"]["dtype"] == tensors["wide_kernel"]["dtype"] == "float16"
    assert bundle.metadata["encoders"] == ["tfidf", "tfidf+e5"]
    assert bundle.metadata["inputs"]["e5"] == {"dtype": "float32", "shape": [-1, E5_DIM],
                                               "description": bundle.metadata["inputs"]["e5"]["description"]}
    # the weights are read from the SavedModel's variables, not stored a second time
    assert bundle_size_bytes(bundle.path) < bundle_size_bytes(bundle.path / "variables") * 1.2 + 2_000_000
    spec = json.loads((bundle.path / VECTORIZER_FILE).read_text(encoding="utf-8"))
    assert spec["word"]["ngrams"] == [1, 2] and spec["char"]["ngrams"] == [2, 3, 4, 5]
    assert spec["word"]["vocabulary"][0] == spec["char"]["vocabulary"][0] == "[UNK]"


def test_same_outputs_as_the_saved_model_on_products(signature, runtime):
    prepared = sample_products(64, seed=7)
    long_text = preprocess("Lot de cartes Pokémon rares", "<p>" + "Carte holographique rare, état neuf. " * 200 + "</p>")
    prepared.append(long_text)
    text, cleaned = [p.text for p in prepared], [p.cleaned for p in prepared]
    assert max_difference(signature, runtime, text, cleaned) <= TOLERANCE  # one batch
    for index in (0, 5, len(prepared) - 1):  # batch 1
        assert max_difference(signature, runtime, text[index:index + 1], cleaned[index:index + 1]) <= TOLERANCE


def test_same_outputs_on_odd_strings(signature, runtime):
    """TF Serving clients may send any string in either input, not only what preprocess makes."""
    assert max_difference(signature, runtime, ODD_STRINGS, ODD_STRINGS) <= TOLERANCE
    assert max_difference(signature, runtime, ODD_STRINGS, list(reversed(ODD_STRINGS))) <= TOLERANCE


def test_bytes_inputs_as_tf_serving_sends_them(runtime):
    prepared = sample_products(4, seed=3)
    e5 = unit_vectors(4, 1)
    as_str = runtime(text=[p.text for p in prepared], cleaned=[p.cleaned for p in prepared], e5=e5)
    as_bytes = runtime(text=np.array([p.text.encode() for p in prepared], dtype=object),
                       cleaned=np.array([p.cleaned.encode() for p in prepared], dtype=object), e5=e5)
    for name in as_str:
        np.testing.assert_array_equal(as_str[name], as_bytes[name])
    with pytest.raises(ValueError, match="missing"):
        runtime(text=["carte"])


_PIECES = st.sampled_from(["carte", "pokémon", "piscine", "pompe", "roman", "tome", "60x33", "cm", "3,5mm", "é",
                           "漢字", "🎉", "a", "", "x" * 30])
_SEPARATORS = st.sampled_from([" ", "  ", "\t", "\n", "\u00a0", "\u2003", "-", "", "\x1c"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.tuples(_PIECES, _SEPARATORS), max_size=12), min_size=1, max_size=6),
       st.randoms(use_true_random=False))
def test_same_outputs_on_generated_texts(signature, runtime, rows, random):
    texts = ["".join(piece + separator for piece, separator in row) for row in rows]
    cleaned = random.sample(texts, len(texts))
    assert max_difference(signature, runtime, texts, cleaned) <= TOLERANCE


def test_export_refuses_files_that_disagree_with_the_saved_model(bundle, tmp_path):
    copy = tmp_path / "1"
    shutil.copytree(bundle.path, copy)
    with pytest.raises(ValueError, match="differs from the SavedModel"):
        write_numpy_runtime(copy, (1, 2), (2, 3))  # the model reads 2- to 5-grams


def test_committed_bundle_carries_the_runtime_and_matches_its_saved_model():
    committed = read_bundle(PROJECT_ROOT / "models", "text")
    runtime = NumpyTextModel.load(committed.path, numpy_record(committed.metadata))
    signature = tf.saved_model.load(str(committed.path)).signatures["serving_default"]
    prepared = sample_products(32, seed=11)
    assert max_difference(signature, runtime, [p.text for p in prepared], [p.cleaned for p in prepared]) <= TOLERANCE
    assert max_difference(signature, runtime, ODD_STRINGS, ODD_STRINGS) <= TOLERANCE


def test_runtime_selection(bundle):
    without_files = dataclasses.replace(bundle, metadata={**bundle.metadata, "runtimes": {
        TENSORFLOW: bundle.metadata["runtimes"][TENSORFLOW]}})
    assert text_runtime(bundle, RuntimeConfig("auto")) == NUMPY
    assert text_runtime(bundle, RuntimeConfig(ONNX)) == NUMPY
    assert text_runtime(bundle, RuntimeConfig(TENSORFLOW)) == TENSORFLOW
    assert text_runtime(without_files, RuntimeConfig("auto")) == TENSORFLOW
    with pytest.raises(RuntimeUnavailable, match="text-runtime-files"):
        text_runtime(without_files, RuntimeConfig(ONNX))
    assert TextModel(bundle, RuntimeConfig(TENSORFLOW)).runner.runtime == TENSORFLOW
    fast, reference = TextModel(bundle), TextModel(bundle, RuntimeConfig(TENSORFLOW))
    prepared = sample_products(8, seed=5)
    for got, expected in zip(fast.predict(prepared), reference.predict(prepared)):
        np.testing.assert_allclose(got.probabilities, expected.probabilities, atol=TOLERANCE)
        np.testing.assert_allclose(got.embedding, expected.embedding, atol=TOLERANCE)


_NO_TENSORFLOW = """
import asyncio, sys
from text_service.server import TextService, TextServiceSettings
service = TextService(TextServiceSettings(models_dir=sys.argv[1], runtime=sys.argv[2]))
asyncio.run(service.repository.load_latest())
bundle, model = service.repository.current()
from text_service.preprocessing import preprocess
assert len(model.predict([preprocess("Pompe pour piscine", "filtration 60x33 cm")])) == 1
print(model.runner.runtime, sorted(name for name in sys.modules if name.split(".")[0] in ("tensorflow", "keras")))
"""


@pytest.mark.parametrize("choice", ["auto", ONNX])
def test_text_service_on_numpy_never_imports_tensorflow(bundle, choice):
    result = subprocess.run([sys.executable, "-c", _NO_TENSORFLOW, str(bundle.path.parent.parent), choice],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [NUMPY, "[]"], result.stdout



def test_other_ngram_widths_match_too(tmp_path):
    """Word 1-3-grams and character 3-grams only: the widths come from the model, not defaults."""
    texts, labels = products(120, 4)
    prepared = [preprocess(designation, description) for designation, description in texts]
    config = TextModelConfig(word_vocabulary=200, word_ngrams=3, char_vocabulary=150, char_ngrams=(3,),
                             embedding_dim=8, wide=False, kernel_dtype="float32",
                             fit=FitConfig(max_epochs=2, learning_rate=1e-2))
    model = train_text_model(prepared, labels, len(LABELS), config).model
    other = export_text_bundle(model, tmp_path, [(label.code, label.name) for label in LABELS],
                               training_data={}, metrics={}, hyperparameters={})
    runtime = NumpyTextModel.load(other.path, numpy_record(other.metadata))
    assert runtime.word_ngrams == (1, 2, 3) and runtime.char_ngrams == (3,)
    signature = tf.saved_model.load(str(other.path)).signatures["serving_default"]
    probe = sample_products(16, seed=9)
    assert max_difference(signature, runtime, [p.text for p in probe], [p.cleaned for p in probe]) <= TOLERANCE
    assert max_difference(signature, runtime, ODD_STRINGS, ODD_STRINGS) <= TOLERANCE
    assert not runtime.has_e5 and other.metadata["encoders"] == ["tfidf"]
    with pytest.raises(EncoderUnavailable, match="no e5 tower"):
        TextModel(other, encoder="tfidf+e5")


def test_synthetic_text_bundle_carries_the_numpy_runtime(synthetic_models):
    """The bundles other tests serve go through the same export: their text service runs NumPy."""
    text = read_bundle(synthetic_models, "text")
    assert numpy_record(text.metadata) is not None and (text.path / VECTORIZER_FILE).is_file()
    assert TextModel(text).runner.runtime == NUMPY


class TitleVectors:
    """Stands in for E5Encoder (whose weights a test cannot load): a fixed unit vector per title."""

    calls: list[list[str]] = []

    def __init__(self, **kwargs):
        pass

    def encode(self, texts):
        TitleVectors.calls.append(list(texts))
        return np.stack([unit_vectors(1, sum(map(ord, text)))[0] for text in texts])


def test_text_encoder_setting_feeds_the_title_embeddings_or_zeros(bundle, runtime, monkeypatch):
    import text_service.e5_encoder

    monkeypatch.setattr(text_service.e5_encoder, "E5Encoder", TitleVectors)
    prepared = sample_products(6, seed=13)
    text, cleaned = [p.text for p in prepared], [p.cleaned for p in prepared]
    with_e5 = TextModel(bundle, encoder="tfidf+e5").predict(prepared)
    assert TitleVectors.calls[-1] == [p.title for p in prepared] and prepared[0].title
    expected = runtime(text=text, cleaned=cleaned, e5=TitleVectors().encode([p.title for p in prepared]))
    for name in ("embedding", "probabilities"):
        np.testing.assert_allclose(np.stack([getattr(p, name) for p in with_e5]), expected[name], atol=1e-6)
    without = TextModel(bundle).predict(prepared)  # TEXT_ENCODER=tfidf: the e5 input is zeros
    expected = runtime(text=text, cleaned=cleaned, e5=np.zeros((6, E5_DIM), np.float32))
    for name in ("embedding", "probabilities"):
        np.testing.assert_allclose(np.stack([getattr(p, name) for p in without]), expected[name], atol=1e-6)
    assert not np.allclose(np.stack([p.embedding for p in with_e5]), expected["embedding"], atol=1e-3)
