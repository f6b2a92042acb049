"""The study's fusion head, and late fusion as the simpler rival it is measured against.

Fusion head: the frozen text and image embeddings concatenated, BatchNormalization, a dense
layer with dropout, and the 27-way softmax (the study's two dense layers). Late fusion: a
weighted average of the text and image models' class probabilities, the weight chosen on
training rows.

With only 486 honest training pairs, a head fitted from random weights cannot learn what the
encoders learned from thousands of products (it scored 13 points below text alone). So
`product_of_experts_head` sets the same architecture's weights from the encoders themselves: the
hidden layer passes the (normalised, then restored) embeddings through, and the output layer
holds the text model's and the image head's own output layers side by side, so the head's logits
are the sum of the two models' logits: their product of experts. `output_layer` reads an
encoder's output layer back from the outputs it serves (embeddings and probabilities), exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
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


@dataclass(frozen=True)
class OutputLayer:
    """An encoder's final Dense: probabilities = softmax(embedding @ kernel + bias)."""

    kernel: np.ndarray  # [D, classes]
    bias: np.ndarray    # [classes]

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        return embeddings @ self.kernel + self.bias


def output_layer(embeddings: np.ndarray, probabilities: np.ndarray, tolerance: float = 1e-3) -> OutputLayer:
    """The softmax layer that maps these embeddings to these probabilities, read back exactly.

    log p = e W + b - logsumexp is linear in e once each row is centred over the classes, so a
    least-squares fit on enough rows (more than D) recovers W and b up to a per-class constant
    that softmax ignores. Raises if the fit is not exact (the outputs are not a softmax of a
    linear function of the embeddings, or probabilities underflowed to 0).
    """
    embeddings = np.asarray(embeddings, np.float64)
    if len(embeddings) <= embeddings.shape[1]:
        raise ValueError(f"{len(embeddings)} rows cannot determine a {embeddings.shape[1]}-input layer")
    with np.errstate(divide="ignore"):
        log_probabilities = np.log(np.asarray(probabilities, np.float64))
    if not np.isfinite(log_probabilities).all():
        raise ValueError("some probabilities are 0: the logits cannot be read back")
    centred = log_probabilities - log_probabilities.mean(axis=1, keepdims=True)
    design = np.hstack([embeddings, np.ones((len(embeddings), 1))])
    solution, *_ = np.linalg.lstsq(design, centred, rcond=None)
    error = float(np.abs(design @ solution - centred).max())
    if error > tolerance:
        raise ValueError(f"the probabilities are not a softmax of the embeddings (error {error:.2g})")
    return OutputLayer(solution[:-1].astype(np.float32), solution[-1].astype(np.float32))


def product_of_experts_head(text: OutputLayer, image: OutputLayer, text_embeddings: np.ndarray,
                            image_embeddings: np.ndarray, config: FusionConfig = FusionConfig(),
                            image_weight: float = 1.0) -> keras.Model:
    """The study's head set to softmax(text logits + image_weight x image logits).

    The BatchNormalization statistics are those of the given (training) embeddings; the hidden
    layer undoes the normalisation and its ReLU passes each embedding value through: one unit per
    value that is a ReLU output (>= 0 on every training row), two for a value that can be negative
    (the text model's wide-path scores), relu(x) and relu(-x), whose output weights are W and -W,
    since relu(x) - relu(-x) = x. Dropout is inactive at inference.
    """
    features = np.hstack([text_embeddings, image_embeddings]).astype(np.float64)
    width = features.shape[1]
    signed = np.flatnonzero(features.min(axis=0) < 0)
    model = build_fusion_model(text_embeddings.shape[1], image_embeddings.shape[1], len(text.bias),
                               replace(config, hidden_units=width + len(signed)))
    mean, variance = features.mean(axis=0), features.var(axis=0)
    normalization = model.get_layer("batch_normalization")
    normalization.set_weights([np.ones(width), np.zeros(width), mean, variance])
    scale = np.sqrt(variance + normalization.epsilon)
    hidden_kernel = np.zeros((width, width + len(signed)))
    hidden_kernel[:, :width] = np.diag(scale)
    hidden_kernel[signed, width + np.arange(len(signed))] = -scale[signed]
    hidden_bias = np.concatenate([mean, -mean[signed]])
    model.get_layer("hidden").set_weights([hidden_kernel.astype(np.float32), hidden_bias.astype(np.float32)])
    kernel = np.vstack([text.kernel, image_weight * image.kernel])
    model.get_layer("probabilities").set_weights([
        np.vstack([kernel, -kernel[signed]]).astype(np.float32),
        (text.bias + image_weight * image.bias).astype(np.float32)])
    return model


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
    return round(float(max(scores)[1]), 4)


def export_fusion_bundle(model: keras.Model, models_root: str | Path, labels: Sequence[Any],
                         metadata: dict[str, Any], version: int | None = None) -> BundleInfo:
    """`text_embedding` [None, Dt] and `image_embedding` [None, Di] in, `probabilities` out."""
    text_dim = int(model.input[TEXT_INPUT].shape[-1])
    image_dim = int(model.input[IMAGE_INPUT].shape[-1])
    inputs = [tf.TensorSpec([None, text_dim], tf.float32, name=TEXT_INPUT),
              tf.TensorSpec([None, image_dim], tf.float32, name=IMAGE_INPUT)]
    descriptions = {TEXT_INPUT: "penultimate layer of the text model",
                    IMAGE_INPUT: "penultimate layer of the image model"}
    return export_bundle(model, models_root, MODEL_NAME, inputs, labels, metadata, descriptions, version,
                         with_onnx=True)
