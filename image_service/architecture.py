"""EfficientNet-Lite0's layout: the block table, sizes and padding arithmetic, without a framework.

Shared by the Keras port (`backbone.py`, training and the TensorFlow runtime) and the ONNX build
(`backbone_onnx.py`, the ONNX Runtime path), so both describe one network.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Stage:
    """One row of the official Lite block table ('r1_k3_s11_e1_i32_o16' and so on)."""

    repeats: int
    kernel_size: int
    stride: int
    expand_ratio: int
    output_filters: int


STAGES = (
    Stage(repeats=1, kernel_size=3, stride=1, expand_ratio=1, output_filters=16),
    Stage(repeats=2, kernel_size=3, stride=2, expand_ratio=6, output_filters=24),
    Stage(repeats=2, kernel_size=5, stride=2, expand_ratio=6, output_filters=40),
    Stage(repeats=3, kernel_size=3, stride=2, expand_ratio=6, output_filters=80),
    Stage(repeats=3, kernel_size=5, stride=1, expand_ratio=6, output_filters=112),
    Stage(repeats=4, kernel_size=5, stride=2, expand_ratio=6, output_filters=192),
    Stage(repeats=1, kernel_size=3, stride=1, expand_ratio=6, output_filters=320),
)


def same_padding(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """(before, after) so that the output is ceil(size / stride); odd totals put the extra after."""
    output = -(-size // stride)
    total = max((output - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2
