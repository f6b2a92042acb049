"""The text bundle as the service runs it: preprocessed products in, embedding and scores out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.model_bundle import BundleInfo
from common.saved_model import load_saved_model
from text_service.language import UNKNOWN_LANGUAGE
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


class TextModel:
    """A loaded text bundle: its SavedModel and labels, warmed up at load."""

    def __init__(self, bundle: BundleInfo):
        self.bundle = bundle
        self.labels = bundle.labels
        self.runner = load_saved_model(bundle.path)
        self.predict(_WARMUP)

    def predict(self, items: list[PreprocessedText]) -> list[TextPrediction]:
        """One prediction per product; the signature reads both views (`text`, `cleaned`)."""
        outputs = self.runner(text=np.array([item.text for item in items], dtype=object),
                              cleaned=np.array([item.cleaned for item in items], dtype=object))
        return [TextPrediction(e, p) for e, p in zip(outputs["embedding"], outputs["probabilities"])]
