"""What the fusion head learns from and is judged on: the served text and image bundles' outputs.

Both encoders are run exactly as the services run them (the text bundle through
`text_service.model.TextModel` on `preprocess` output; the image bundle through
`image_service.model.ImageModel`'s head on the frozen backbone's features of `prepare_path`
images, with the bundle's test-time views), so the
embeddings the fusion head is trained on are the ones it will be fed in production.

`EncodedProducts` holds, per labelled product of one split, whichever of the two encodings it
has: the fusion training set (real pairs plus class-conditional pairs) and the evaluation rows
(real pairs only) are both cut from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.model_bundle import BundleInfo, read_bundle
from common.scores import Calibration
from fusion_service.model import FusionModel
from image_service.model import ImageModel
from text_service.model import TextModel
from text_service.preprocessing import PreprocessedText, e5_title
from training.data import PROJECT_ROOT, Category, fingerprint, load_categories
from training.image_model import (
    EMBEDDING_OUTPUT,
    PROBABILITIES_OUTPUT,
    TTA_NONE,
    FeatureCache,
    bundle_backbone,
    combine_tta,
    image_products,
    tta_views,
)
from training.train_text import load_text_products

CACHE_DIR = PROJECT_ROOT / ".cache"
_TEXT_BATCH = 256


@dataclass(frozen=True)
class Encoded:
    """One modality's outputs for some products: `index` (catalog row) and label aligned."""

    index: np.ndarray          # [n] catalog index of each product
    labels: np.ndarray         # [n] class index (position of the code in the categories)
    embeddings: np.ndarray     # [n, D]
    probabilities: np.ndarray  # [n, classes]

    def take(self, rows: np.ndarray) -> "Encoded":
        return Encoded(self.index[rows], self.labels[rows], self.embeddings[rows], self.probabilities[rows])

    def rows_of(self, index: np.ndarray) -> np.ndarray:
        """Positions of the given catalog indices (all must be present)."""
        position = pd.Series(np.arange(len(self.index)), index=self.index)
        return position.loc[index].to_numpy()


@dataclass(frozen=True)
class EncodedProducts:
    """Text and image encodings of the labelled products of one split."""

    text: Encoded
    image: Encoded

    def paired_index(self) -> np.ndarray:
        """Catalog indices of the products that have both a text and an image, ascending."""
        return np.intersect1d(self.text.index, self.image.index)

    def pairs(self) -> tuple[Encoded, Encoded]:
        """(text, image) encodings of the real pairs, row-aligned."""
        index = self.paired_index()
        return self.text.take(self.text.rows_of(index)), self.image.take(self.image.rows_of(index))


@dataclass(frozen=True)
class FusionInputs:
    """Both splits encoded by the given bundles, with the class order every model uses."""

    train: EncodedProducts
    val: EncodedProducts
    categories: list[Category]
    text_bundle: BundleInfo
    image_bundle: BundleInfo

    @property
    def codes(self) -> list[int]:
        return [c.code for c in self.categories]

    @property
    def text_calibration(self) -> Calibration:
        return Calibration.of(self.text_bundle.metadata)

    @property
    def image_calibration(self) -> Calibration:
        return Calibration.of(self.image_bundle.metadata)


def _check_labels(bundle: BundleInfo, codes: list[int]) -> None:
    bundle_codes = [label.code for label in bundle.labels]
    if bundle_codes != codes:
        raise SystemExit(f"bundle {bundle.path} labels {bundle_codes} differ from the data's categories")


def encode_texts(model: TextModel, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, probabilities) of preprocessed rows (`text`, `language`, `cleaned` columns, and
    `designation`, the title the e5 tower reads, when present)."""
    titles = rows["designation"] if "designation" in rows else [""] * len(rows)
    prepared = [PreprocessedText(text=t, language=lang, cleaned=c, title=e5_title(d))
                for t, lang, c, d in zip(rows["text"], rows["language"], rows["cleaned"], titles)]
    outputs = [p for start in range(0, len(prepared), _TEXT_BATCH)
               for p in model.predict(prepared[start:start + _TEXT_BATCH])]
    if not outputs:
        return (np.zeros((0, int(model.bundle.metadata["embedding_dim"])), np.float32),
                np.zeros((0, len(model.labels)), np.float32))
    return (np.stack([o.embedding for o in outputs]).astype(np.float32),
            np.stack([o.probabilities for o in outputs]).astype(np.float32))


def fused_probabilities(model: FusionModel, text: Encoded, image: Encoded) -> np.ndarray:
    """The fusion service's raw probabilities for row-aligned text and image encodings."""
    if not len(text.index):
        return np.zeros((0, len(model.labels)), np.float32)
    return np.stack(model.predict(list(zip(text.embeddings, image.embeddings))))


def load_fusion_inputs(root: Path, models: Path, text_version: int | None = None,
                       image_version: int | None = None, cache_dir: Path = CACHE_DIR) -> FusionInputs:
    """Encode every labelled product of `root` (train and val) with the text and image bundles."""
    categories = load_categories(root)
    codes = [c.code for c in categories]
    label_of = {code: i for i, code in enumerate(codes)}
    text_bundle = read_bundle(models, "text", text_version)
    image_bundle = read_bundle(models, "image", image_version)
    _check_labels(text_bundle, codes)
    _check_labels(image_bundle, codes)

    texts = load_text_products(root, cache_dir)
    text_model = TextModel(text_bundle)
    text_embeddings, text_probabilities = encode_texts(text_model, texts)

    images = image_products(root)
    cache = FeatureCache(fingerprint(root), dict(zip(images["index"], images["image_path"])), cache_dir,
                         backbone=bundle_backbone(image_bundle.metadata))
    tta = image_bundle.metadata.get("test_time_augmentation", TTA_NONE)
    features = combine_tta([cache.features(view, images["index"]) for view in tta_views(tta)], tta)
    image_outputs = ImageModel(image_bundle).predict_features(features)

    def split(frame: pd.DataFrame, embeddings: np.ndarray, probabilities: np.ndarray, name: str) -> Encoded:
        rows = np.flatnonzero(frame["split"].to_numpy() == name)
        return Encoded(frame["index"].to_numpy(dtype=np.int64)[rows],
                       frame["prdtypecode"].map(label_of).to_numpy(dtype=np.int64)[rows],
                       embeddings[rows], probabilities[rows])

    encoded = {name: EncodedProducts(
        text=split(texts, text_embeddings, text_probabilities, name),
        image=split(images, image_outputs[EMBEDDING_OUTPUT], image_outputs[PROBABILITIES_OUTPUT], name))
        for name in ("train", "val")}
    return FusionInputs(encoded["train"], encoded["val"], categories, text_bundle, image_bundle)
