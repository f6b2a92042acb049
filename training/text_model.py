"""The text classifier, the study's text architecture (a baseline), their training and the export.

The served model reads the output of `text_service.preprocessing.preprocess` as a string tensor and
vectorises it itself, so its SavedModel is self-contained and serving cannot drift from training:

    text -> word 1..n-gram counts -> sublinear TF-IDF -> L2 ┐
        (-> char n-gram counts    -> sublinear TF-IDF -> L2 ┘ concat, optional)
         -> Dense "embedding" (relu) -> dropout -> Dense "probabilities" (softmax)

The "embedding" layer's output is the text embedding the fusion model consumes. Vectorisation is
deterministic, so training computes the TF-IDF features once, keeps them sparse, and fits only
the dense head (the same layer objects wired to a sparse feature input): a sparse product is far
cheaper than re-splitting every text and multiplying a mostly-zero dense matrix each step.

The first Dense kernel (vocabulary x embedding) is nearly the whole bundle, so the vocabulary and
the embedding size are what trade accuracy for bundle weight; the defaults were measured on the
real data (18k word 1-2-grams x 128 keeps the bundle under 10 MB).

Training holds out a stratified part of the rows it is given as the early-stopping set that drives
EarlyStopping and ReduceLROnPlateau; callers pass training rows only, never the reporting split.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops
from sklearn.model_selection import train_test_split

from common.model_bundle import BundleInfo, write_bundle

MODEL_NAME = "text"
INPUT_NAME = "text"
EMBEDDING_LAYER = "embedding"
PROBABILITIES_LAYER = "probabilities"
SERVING_SIGNATURE = "serving_default"
_FEATURE_BATCH = 256


@dataclass(frozen=True)
class FitConfig:
    """How a classifier is fitted: optimiser, callbacks on the early-stopping set, seed."""

    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    batch_size: int = 64
    max_epochs: int = 60
    early_stopping_patience: int = 4
    reduce_lr_patience: int = 2
    reduce_lr_factor: float = 0.3
    early_stopping_fraction: float = 0.1
    seed: int = 0
    verbose: int = 0


@dataclass(frozen=True)
class TextModelConfig:
    """The served model's features and head; defaults are the ones chosen on the real data."""

    word_vocabulary: int = 18_000
    word_ngrams: int = 2
    char_vocabulary: int = 0  # 0: no character branch (it did not pay for its weight here)
    char_ngrams: tuple[int, ...] = (2, 3, 4, 5)
    embedding_dim: int = 128
    dropout: float = 0.5
    fit: FitConfig = FitConfig()


@dataclass(frozen=True)
class StudyBaselineConfig:
    """The study's architecture: word indices -> Embedding -> average -> dense + dropout."""

    vocabulary: int = 20_000
    sequence_length: int = 200
    token_embedding_dim: int = 128
    hidden_units: int = 128
    dropout: float = 0.5
    fit: FitConfig = FitConfig(learning_rate=3e-3)  # 1e-3 stopped at F1 0.60 vs 0.64 here


@dataclass
class TrainedModel:
    """A fitted Keras model with its history and the row counts it was fitted on."""

    model: keras.Model
    history: dict[str, list[float]]
    rows_train: int
    rows_early_stopping: int


@keras.saving.register_keras_serializable(package="rakuten_text")
class SublinearTfIdf(layers.Layer):
    """(1 + log tf) * idf for terms present, 0 elsewhere: scikit-learn's `sublinear_tf` weighting.

    Keras' own "tf_idf" mode multiplies raw counts, which lets one repeated word dominate a long
    description; damping counts is worth about a point of F1 on this data.
    """

    def __init__(self, vocabulary_size: int, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.idf = self.add_weight(shape=(vocabulary_size,), initializer="ones",
                                   trainable=False, name="idf")

    def set_document_frequencies(self, document_frequency: np.ndarray, documents: int) -> None:
        """Smoothed idf as scikit-learn computes it: log((1 + n) / (1 + df)) + 1."""
        self.idf.assign(np.log((1.0 + documents) / (1.0 + document_frequency)) + 1.0)

    def call(self, counts):
        weighted = (1.0 + ops.log(ops.maximum(counts, 1.0))) * self.idf
        return ops.where(counts > 0, weighted, ops.zeros_like(weighted))

    def get_config(self):
        return {**super().get_config(), "vocabulary_size": self.vocabulary_size}


def early_stopping_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (fit, early-stopping) row indices; the held-out part has every class at least once."""
    labels = np.asarray(labels)
    classes = len(np.unique(labels))
    held_out = max(classes, int(round(fraction * len(labels))))
    if held_out >= len(labels) - classes:
        raise ValueError(f"{len(labels)} rows are too few to hold out an early-stopping set "
                         f"covering {classes} classes")
    fit_rows, early_rows = train_test_split(np.arange(len(labels)), test_size=held_out,
                                            stratify=labels, random_state=seed)
    return np.sort(fit_rows), np.sort(early_rows)


def _tfidf_branch(texts: np.ndarray, name: str, split: str, max_tokens: int,
                  ngrams: int | tuple[int, ...]) -> tuple[layers.TextVectorization, SublinearTfIdf]:
    """A count vectoriser adapted on `texts` and its sublinear TF-IDF weighting fitted on them."""
    vectorizer = layers.TextVectorization(max_tokens=max_tokens, standardize=None, split=split,
                                          ngrams=ngrams, output_mode="count", name=f"{name}_counts")
    vectorizer.adapt(tf.data.Dataset.from_tensor_slices(texts).batch(_FEATURE_BATCH))
    weighting = SublinearTfIdf(vectorizer.vocabulary_size(), name=f"{name}_tfidf")
    document_frequency = np.zeros(vectorizer.vocabulary_size())
    for start in range(0, len(texts), _FEATURE_BATCH):
        counts = vectorizer(tf.constant(texts[start:start + _FEATURE_BATCH]))
        document_frequency += tf.reduce_sum(tf.cast(counts > 0, tf.float32), axis=0).numpy()
    weighting.set_document_frequencies(document_frequency, len(texts))
    return vectorizer, weighting


def build_text_model(texts: Sequence[str], num_classes: int,
                     config: TextModelConfig = TextModelConfig()) -> tuple[keras.Model, keras.Model]:
    """(served model, head): the head maps TF-IDF features to probabilities with the same layers.

    Vocabularies and idf weights are fitted on `texts`, which should be the rows the model is
    fitted on (no early-stopping or validation rows).
    """
    texts = np.asarray(texts, dtype=object)
    branches = [_tfidf_branch(texts, "word", "whitespace", config.word_vocabulary, config.word_ngrams)]
    if config.char_vocabulary:
        branches.append(_tfidf_branch(texts, "char", "character", config.char_vocabulary,
                                      config.char_ngrams))

    text_input = keras.Input(shape=(), dtype="string", name=INPUT_NAME)
    normalized = [layers.UnitNormalization(name=f"{weighting.name}_l2")(weighting(vectorizer(text_input)))
                  for vectorizer, weighting in branches]
    features = normalized[0] if len(normalized) == 1 else layers.Concatenate(name="features")(normalized)

    head_layers = [
        layers.Dense(config.embedding_dim, activation="relu", name=EMBEDDING_LAYER),
        layers.Dropout(config.dropout, name="embedding_dropout"),
        layers.Dense(num_classes, activation="softmax", name=PROBABILITIES_LAYER),
    ]

    def head(x):
        for layer in head_layers:
            x = layer(x)
        return x

    model = keras.Model(text_input, head(features), name="text_classifier")
    feature_input = keras.Input(shape=(features.shape[-1],), sparse=True, name="features_input")
    return model, keras.Model(feature_input, head(feature_input), name="text_head")


def build_study_baseline(texts: Sequence[str], num_classes: int,
                         config: StudyBaselineConfig = StudyBaselineConfig()) -> keras.Model:
    """The study's text network, as a baseline: TextVectorization, Embedding, dense + dropout."""
    vectorizer = layers.TextVectorization(max_tokens=config.vocabulary, standardize=None,
                                          output_mode="int", output_sequence_length=config.sequence_length,
                                          name="tokens")
    vectorizer.adapt(tf.data.Dataset.from_tensor_slices(np.asarray(texts, dtype=object)).batch(_FEATURE_BATCH))
    text_input = keras.Input(shape=(), dtype="string", name=INPUT_NAME)
    # Padding is averaged in (no mask): a masked average of an empty text is 0/0 = NaN.
    x = layers.Embedding(vectorizer.vocabulary_size(), config.token_embedding_dim,
                         name="token_embedding")(vectorizer(text_input))
    x = layers.GlobalAveragePooling1D(name="average")(x)
    x = layers.Dense(config.hidden_units, activation="relu", name="hidden")(x)
    x = layers.Dropout(config.dropout, name="hidden_dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name=PROBABILITIES_LAYER)(x)
    return keras.Model(text_input, outputs, name="study_text_baseline")


def _dataset(inputs: tf.Tensor | tf.SparseTensor, labels: np.ndarray, num_classes: int,
             fit: FitConfig, shuffle: bool) -> tf.data.Dataset:
    data = tf.data.Dataset.from_tensor_slices((inputs, tf.one_hot(labels, num_classes)))
    if shuffle:
        data = data.shuffle(len(labels), seed=fit.seed, reshuffle_each_iteration=True)
    return data.batch(fit.batch_size).prefetch(tf.data.AUTOTUNE)


def _fit(model: keras.Model, train: tf.data.Dataset, early_stopping: tf.data.Dataset,
         fit: FitConfig) -> dict[str, list[float]]:
    """AdamW with label smoothing; early stopping and LR decay watch the early-stopping loss."""
    model.compile(
        optimizer=keras.optimizers.AdamW(fit.learning_rate, weight_decay=fit.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=fit.label_smoothing),
        metrics=["accuracy"],
    )
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=fit.early_stopping_patience,
                                      restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=fit.reduce_lr_factor,
                                          patience=fit.reduce_lr_patience, min_lr=1e-6),
    ]
    history = model.fit(train, validation_data=early_stopping, epochs=fit.max_epochs,
                        callbacks=callbacks, verbose=fit.verbose, shuffle=False)
    return {key: [float(v) for v in values] for key, values in history.history.items()}


def _sparse_features(featurizer: keras.Model, texts: np.ndarray) -> tf.SparseTensor:
    """TF-IDF rows of `texts` as one sparse matrix (they are >99% zeros)."""
    batches = [tf.sparse.from_dense(featurizer(tf.constant(texts[start:start + _FEATURE_BATCH])))
               for start in range(0, len(texts), _FEATURE_BATCH)]
    return tf.sparse.concat(axis=0, sp_inputs=batches)


def _validate(texts: Sequence[str], labels: Sequence[int], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    texts = np.asarray(texts, dtype=object)
    labels = np.asarray(labels, dtype=np.int64)
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts for {len(labels)} labels")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"label indices must lie in [0, {num_classes})")
    return texts, labels


def train_text_model(texts: Sequence[str], labels: Sequence[int], num_classes: int,
                     config: TextModelConfig = TextModelConfig()) -> TrainedModel:
    """Fit the served text model on preprocessed `texts` and class indices `labels` (training rows)."""
    texts, labels = _validate(texts, labels, num_classes)
    fit = config.fit
    keras.utils.set_random_seed(fit.seed)
    fit_rows, early_rows = early_stopping_split(labels, fit.early_stopping_fraction, fit.seed)
    model, head = build_text_model(texts[fit_rows], num_classes, config)
    featurizer = keras.Model(model.input, model.get_layer(EMBEDDING_LAYER).input)
    history = _fit(
        head,
        _dataset(_sparse_features(featurizer, texts[fit_rows]), labels[fit_rows], num_classes, fit, True),
        _dataset(_sparse_features(featurizer, texts[early_rows]), labels[early_rows], num_classes, fit, False),
        fit,
    )
    return TrainedModel(model, history, len(fit_rows), len(early_rows))


def train_study_baseline(texts: Sequence[str], labels: Sequence[int], num_classes: int,
                         config: StudyBaselineConfig = StudyBaselineConfig()) -> TrainedModel:
    """Fit the study's architecture with the same early-stopping protocol as the served model."""
    texts, labels = _validate(texts, labels, num_classes)
    fit = config.fit
    keras.utils.set_random_seed(fit.seed)
    fit_rows, early_rows = early_stopping_split(labels, fit.early_stopping_fraction, fit.seed)
    model = build_study_baseline(texts[fit_rows], num_classes, config)
    history = _fit(
        model,
        _dataset(tf.constant(texts[fit_rows]), labels[fit_rows], num_classes, fit, True),
        _dataset(tf.constant(texts[early_rows]), labels[early_rows], num_classes, fit, False),
        fit,
    )
    return TrainedModel(model, history, len(fit_rows), len(early_rows))


def predict_probabilities(model: keras.Model, texts: Sequence[str]) -> np.ndarray:
    """Class probabilities [n, classes] from a Keras model taking preprocessed texts."""
    data = tf.data.Dataset.from_tensor_slices(np.asarray(texts, dtype=object)).batch(_FEATURE_BATCH)
    return model.predict(data, verbose=0)


def predict_embeddings(model: keras.Model, texts: Sequence[str]) -> np.ndarray:
    """The "embedding" layer's output [n, D] for preprocessed texts: what fusion is trained on."""
    embedder = keras.Model(model.input, model.get_layer(EMBEDDING_LAYER).output)
    data = tf.data.Dataset.from_tensor_slices(np.asarray(texts, dtype=object)).batch(_FEATURE_BATCH)
    return embedder.predict(data, verbose=0)


def export_text_bundle(
    model: keras.Model,
    models_root: str | Path,
    labels: Sequence[tuple[int, str]],
    training_data: dict[str, Any],
    metrics: dict[str, Any],
    hyperparameters: dict[str, Any],
    name: str = MODEL_NAME,
    version: int | None = None,
) -> BundleInfo:
    """Write `models_root/name/<version>/`: SavedModel with `serving_default` and metadata.json.

    The signature takes `text` (string [None], preprocessed) and returns `embedding` (float32
    [None, D], the "embedding" layer) and `probabilities` (float32 [None, classes], index i is
    the i-th of `labels`, given in ascending code order).
    """
    embedding_dim = int(model.get_layer(EMBEDDING_LAYER).output.shape[-1])
    num_classes = int(model.output.shape[-1])
    if num_classes != len(labels):
        raise ValueError(f"the model has {num_classes} classes for {len(labels)} labels")
    serving_model = keras.Model(model.input, {"embedding": model.get_layer(EMBEDDING_LAYER).output,
                                              "probabilities": model.output})

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_NAME)])
    def serve(text):
        outputs = serving_model(text, training=False)
        return {key: tf.cast(value, tf.float32) for key, value in outputs.items()}

    def export(folder: Path) -> None:
        # tf.saved_model.save rather than keras.export.ExportArchive: in Keras 3.15 the archive
        # writes every variable twice, which doubles the bundle. The signature is the same.
        module = tf.Module()
        module.model = serving_model  # tracks the variables and the vocabulary lookup tables
        tf.saved_model.save(module, str(folder), signatures={SERVING_SIGNATURE: serve})

    metadata = {
        "labels": [{"code": int(code), "name": str(label)} for code, label in labels],
        "inputs": {INPUT_NAME: {"dtype": "string", "shape": [-1],
                                "description": "output of text_service.preprocessing.preprocess"}},
        "outputs": {"embedding": {"dtype": "float32", "shape": [-1, embedding_dim]},
                    "probabilities": {"dtype": "float32", "shape": [-1, num_classes]}},
        "embedding_dim": embedding_dim,
        "training_data": training_data,
        "metrics": metrics,
        "framework": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "hyperparameters": hyperparameters,
    }
    return write_bundle(models_root, name, export, metadata, version=version)


def config_dict(config: TextModelConfig | StudyBaselineConfig) -> dict[str, Any]:
    """A config as plain JSON-ready data, for metadata.json."""
    return dataclasses.asdict(config)
