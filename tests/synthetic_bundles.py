"""Text, image-head and fusion bundles trained briefly on synthetic products, consistent in labels
and embedding sizes: enough for real services to load and answer sensibly, built in seconds.

Used by every test that starts the whole stack (system, monitoring, web front, TLS, fuzzing).
The image and fusion bundles hold `model.onnx` as their training exports write it, so those
services run on ONNX Runtime (`--runtime auto`) there, as in production.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.synthetic_products import LABELS, products
from text_service.preprocessing import preprocess
from training.class_priors import class_priors
from training.fitting import FitConfig
from training.fusion_model import FusionConfig, export_fusion_bundle, train_fusion_model
from training.image_model import FEATURE_DIM, HeadConfig, export_image_bundle, train_image_head
from training.text_model import TextModelConfig, export_text_bundle, predict_embeddings, train_text_model


def build_synthetic_bundles(root: Path, embedding_dim: int = 16, rows: int = 240, epochs: int = 15) -> None:
    """Write models/{text,image,fusion}/1 under `root`.

    Text: the real two-view text model on invented product texts. Image: the real head on
    class-shifted random backbone features (the backbone itself is the pretrained one). Fusion:
    the real head on the two models' embeddings of the same rows.
    """
    texts, labels = products(rows)
    prepared = [preprocess(d, s) for d, s in texts]  # both views: the text model reads text and cleaned
    # The text embedding is the hidden units and the wide path's class scores side by side: as many
    # hidden units as make it `embedding_dim` values, the image embedding's size too.
    text = train_text_model(prepared, labels, len(LABELS), TextModelConfig(
        word_vocabulary=300, char_vocabulary=300, char_ngrams=(3,), embedding_dim=embedding_dim - len(LABELS),
        fit=FitConfig(max_epochs=epochs, learning_rate=1e-2)))
    label_pairs = [(label.code, label.name) for label in LABELS]
    codes = [label.code for label in LABELS]
    priors = class_priors(np.asarray(codes)[labels], codes)
    export_text_bundle(text.model, root, label_pairs, training_data={}, metrics={}, hyperparameters={},
                       class_priors=priors)

    rng = np.random.default_rng(0)
    features = rng.normal(size=(len(labels), FEATURE_DIM)).astype(np.float32) + np.asarray(labels)[:, None]
    head = train_image_head(features, np.asarray(labels), HeadConfig(embedding_dim=embedding_dim, ensemble=1),
                            num_classes=len(LABELS), epochs=3)
    export_image_bundle(root, head, LABELS, training_data={}, metrics={}, class_priors=priors)

    fusion, _ = train_fusion_model(predict_embeddings(text.model, prepared), head.outputs(features)["embedding"],
                                   labels, len(LABELS), FusionConfig(hidden_units=embedding_dim),
                                   FitConfig(max_epochs=max(2, epochs // 2)))
    export_fusion_bundle(fusion, root, LABELS, {"metrics": {}, "class_priors": priors})
