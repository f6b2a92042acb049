"""The study's fusion head, and late fusion as the simpler rival it is measured against.

Fusion head: the frozen text and image embeddings concatenated, BatchNormalization, a dense
layer with dropout, and the 27-way softmax (the study's two dense layers). Late fusion: a
weighted average of the text and image models' class probabilities, the weight chosen on
training rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import layers
from sklearn.metrics import f1_score

from common.model_bundle import BundleInfo
from training.export import export_bundle
from training.fitting import FitConfig, dataset, early_stopping_split, fit_classifier

MODEL_NAME = "fusion"
TEXT_INPUT = "text_embedding"
IMAGE_INPUT = "image_embedding"


@dataclass(frozen=True)
class FusionConfig:
    hidden_units: int = 256
    input_dropout: float = 0.2
    dropout: float = 0.4
    text_noise: float = 0.0  # Gaussian noise on the text embedding while training (0: none)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_fusion_model(text_dim: int, image_dim: int, num_classes: int, config: FusionConfig) -> keras.Model:
    """{text_embedding, image_embedding} -> {"probabilities"}."""
    text = keras.Input((text_dim,), name=TEXT_INPUT)
    image = keras.Input((image_dim,), name=IMAGE_INPUT)
    text_part = layers.GaussianNoise(config.text_noise, name="text_noise")(text) if config.text_noise else text
    x = layers.Concatenate(name="concatenate")([text_part, image])
    x = layers.BatchNormalization(name="batch_normalization")(x)
    x = layers.Dropout(config.input_dropout, name="input_dropout")(x)
    x = layers.Dense(config.hidden_units, activation="relu", name="hidden")(x)
    x = layers.Dropout(config.dropout, name="dropout")(x)
    probabilities = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model({TEXT_INPUT: text, IMAGE_INPUT: image}, {"probabilities": probabilities}, name="fusion")


def train_fusion_model(text_embeddings: np.ndarray, image_embeddings: np.ndarray, labels: Sequence[int],
                       num_classes: int, config: FusionConfig = FusionConfig(),
                       fit: FitConfig = FitConfig()) -> tuple[keras.Model, dict[str, list[float]]]:
    """Fit on paired embeddings; an early-stopping share of these rows drives the callbacks."""
    labels = np.asarray(labels)
    keras.utils.set_random_seed(fit.seed)
    fit_rows, stop_rows = early_stopping_split(labels, fit.early_stopping_fraction, fit.seed)
    model = build_fusion_model(text_embeddings.shape[1], image_embeddings.shape[1], num_classes, config)
    classifier = keras.Model(model.inputs, model.output["probabilities"])

    def rows(index):
        inputs = {TEXT_INPUT: text_embeddings[index].astype(np.float32),
                  IMAGE_INPUT: image_embeddings[index].astype(np.float32)}
        return inputs, labels[index]

    history = fit_classifier(classifier, dataset(*rows(fit_rows), num_classes, fit, shuffle=True),
                             dataset(*rows(stop_rows), num_classes, fit, shuffle=False), fit)
    return model, history


def predict_fusion(model: keras.Model, text_embeddings: np.ndarray, image_embeddings: np.ndarray) -> np.ndarray:
    outputs = model.predict({TEXT_INPUT: text_embeddings.astype(np.float32),
                             IMAGE_INPUT: image_embeddings.astype(np.float32)}, batch_size=512, verbose=0)
    return outputs["probabilities"]


def late_fusion(text_probabilities: np.ndarray, image_probabilities: np.ndarray, text_weight: float) -> np.ndarray:
    """The same formula as the gateway's (gateway/fusion.py)."""
    return text_weight * text_probabilities + (1.0 - text_weight) * image_probabilities


def choose_late_fusion_weight(text_probabilities: np.ndarray, image_probabilities: np.ndarray,
                              labels: Sequence[int], grid: Sequence[float] = tuple(np.linspace(0, 1, 21))) -> float:
    """The text weight with the best weighted F1 on the given (training) rows; ties go to more text."""
    scores = [(f1_score(labels, late_fusion(text_probabilities, image_probabilities, w).argmax(1),
                        average="weighted"), w) for w in grid]
    return float(max(scores)[1])


def export_fusion_bundle(model: keras.Model, models_root: str | Path, labels: Sequence[Any],
                         metadata: dict[str, Any], version: int | None = None) -> BundleInfo:
    """`text_embedding` [None, Dt] and `image_embedding` [None, Di] in, `probabilities` out."""
    text_dim = int(model.input[TEXT_INPUT].shape[-1])
    image_dim = int(model.input[IMAGE_INPUT].shape[-1])
    inputs = [tf.TensorSpec([None, text_dim], tf.float32, name=TEXT_INPUT),
              tf.TensorSpec([None, image_dim], tf.float32, name=IMAGE_INPUT)]
    descriptions = {TEXT_INPUT: "penultimate layer of the text model",
                    IMAGE_INPUT: "penultimate layer of the image model"}
    return export_bundle(model, models_root, MODEL_NAME, inputs, labels, metadata, descriptions, version)
