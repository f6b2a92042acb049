"""The text bundle as the service runs it: preprocessed products in, embedding and scores out.

The runtime follows `--runtime` (`common.runtime`). For the text model the fast runtime is NumPy
(`text_service.numpy_model`, from the files the bundle carries next to its SavedModel): its
TF-IDF and sparse first layer cost a fraction of TensorFlow's fixed per-call time, and it needs
neither TensorFlow nor ONNX Runtime. `auto` takes it when the bundle has its files, `onnx` (the
fast runtime) insists on it, `tensorflow` runs the SavedModel.
"""

from __future__ import annotations

from dataclasses import dataclass

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
                     cleaned="une table tres jolie! +dimensions : 60 x 33 cm"),
    PreprocessedText(text="livr", language="fr", cleaned="livre"),
    PreprocessedText(text="", language=UNKNOWN_LANGUAGE, cleaned=""),
]


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


class TextModel:
    """A loaded text bundle: its runner (NumPy or SavedModel) and labels, warmed up at load."""

    def __init__(self, bundle: BundleInfo, runtime: RuntimeConfig = RuntimeConfig()):
        self.bundle = bundle
        self.labels = bundle.labels
        self.runner = load_text_runner(bundle, runtime)
        self.predict(_WARMUP)

    def predict(self, items: list[PreprocessedText]) -> list[TextPrediction]:
        """One prediction per product; the signature reads both views (`text`, `cleaned`)."""
        outputs = self.runner(text=np.array([item.text for item in items], dtype=object),
                              cleaned=np.array([item.cleaned for item in items], dtype=object))
        return [TextPrediction(e, p) for e, p in zip(outputs["embedding"], outputs["probabilities"])]
