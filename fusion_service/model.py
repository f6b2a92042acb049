"""The fusion bundle as the service runs it: (text embedding, image embedding) pairs in, scores out."""

from __future__ import annotations

import numpy as np

from common.model_bundle import BundleInfo
from common.runtime import RuntimeConfig

TEXT_INPUT = "text_embedding"
IMAGE_INPUT = "image_embedding"


class FusionModel:
    """A loaded fusion bundle; knows the embedding sizes it expects, warmed up at load."""

    def __init__(self, bundle: BundleInfo, runtime: RuntimeConfig = RuntimeConfig()):
        self.bundle = bundle
        self.labels = bundle.labels
        self.runner = runtime.load_bundle(bundle)
        self.text_dim = int(self.runner.input_specs[TEXT_INPUT].shape[-1])
        self.image_dim = int(self.runner.input_specs[IMAGE_INPUT].shape[-1])
        self.predict([(np.zeros(self.text_dim, np.float32), np.zeros(self.image_dim, np.float32))])

    def predict(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        outputs = self.runner(**{TEXT_INPUT: np.stack([t for t, _ in pairs]),
                                 IMAGE_INPUT: np.stack([i for _, i in pairs])})
        return list(outputs["probabilities"])
