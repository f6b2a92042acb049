"""The text bundle as the service runs it: preprocessed strings in, embedding and scores out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.model_bundle import BundleInfo
from common.saved_model import load_saved_model

# A warm-up text: the first call builds TF's graphs, so it must not be a client's.
_WARMUP_TEXTS = ["tabl tres jol dimens cm", "livr", ""]


@dataclass(frozen=True)
class TextPrediction:
    embedding: np.ndarray
    probabilities: np.ndarray


class TextModel:
    """A loaded text bundle: its SavedModel and labels, warmed up at load."""

    def __init__(self, bundle: BundleInfo):
        self.bundle = bundle
        self.labels = bundle.labels
        self.runner = load_saved_model(bundle.path)
        self.predict(_WARMUP_TEXTS)

    def predict(self, texts: list[str]) -> list[TextPrediction]:
        outputs = self.runner(text=np.array(texts, dtype=object))
        return [TextPrediction(e, p) for e, p in zip(outputs["embedding"], outputs["probabilities"])]
