"""The text classifier, the study's text architecture (a baseline), their training and the export.

The served model reads both views that `text_service.preprocessing.preprocess` returns, as string
tensors, and vectorises them itself, so its SavedModel is self-contained and serving cannot drift
from training:

    text    -> word 1..n-gram counts              -> sublinear TF-IDF -> L2 ┐
    cleaned -> character n-grams within words     -> sublinear TF-IDF -> L2 ┴ concat
            -> Dense "embedding" (relu) -> dropout -> Dense "probabilities" (softmax)

`text` is the study's normalised text (stems, no stop words, letters only); `cleaned` is the same
product text lower case and accent-folded but with digits and punctuation kept, where model
numbers, sizes and units live. Character n-grams are taken inside each word padded with a space,
as scikit-learn's `char_wb` analyzer does (`CharNgramsWithinWords`).

The "embedding" layer's output is the text embedding the fusion model consumes. Vectorisation is
deterministic, so training computes the TF-IDF features once, keeps them sparse, and fits only
the dense head (the same layer objects wired to a sparse feature input): a sparse product is far
cheaper than re-splitting every text and multiplying a mostly-zero dense matrix each step.

The head may be an ensemble: `ensemble` members, each with `embedding_dim / ensemble` hidden units
and its own seed, are trained one after the other on the same features and merged into one layer
pair of the form above (`merge_members`): their hidden units side by side are the embedding, and
the output layer averages their logits, which is exactly a Dense on the concatenation.

The first Dense kernel (vocabulary x embedding) is nearly the whole bundle, so the vocabularies
and the embedding size are what trade accuracy for bundle weight.

Training holds out a stratified part of the rows it is given as the early-stopping set that drives
EarlyStopping and ReduceLROnPlateau (`training.fitting`); callers pass training rows only, never
the reporting split. Vocabularies and idf weights are fitted on the remaining rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from common.model_bundle import BundleInfo
from common.saved_model import SERVING_SIGNATURE
from text_service.preprocessing import PreprocessedText
from training.export import export_bundle
from training.fitting import FitConfig, dataset, early_stopping_split, fit_classifier
from training.text_runtime_files import write_numpy_runtime

MODEL_NAME = "text"
TEXT_INPUT = "text"        # preprocess(...).text: the study's normalised words
CLEANED_INPUT = "cleaned"  # preprocess(...).cleaned: the character n-gram view
INPUT_NAMES = (TEXT_INPUT, CLEANED_INPUT)
EMBEDDING_LAYER = "embedding"
PROBABILITIES_LAYER = "probabilities"
_FEATURE_BATCH = 256

#: What the model functions accept as input rows: `PreprocessedText` objects (what `preprocess`
#: returns), or a mapping / DataFrame with the columns `text` and `cleaned`. Models that read
#: `text` only (the study baseline) also accept a plain sequence of normalised strings.
TextInputs = Union[Sequence[PreprocessedText], Mapping[str, Sequence[str]], Sequence[str], Any]


@dataclass(frozen=True)
class TextModelConfig:
    """The served model's features and head; defaults are the ones chosen on the real data."""

    word_vocabulary: int = 20_000
    word_ngrams: int = 2
    char_vocabulary: int = 50_000
    char_ngrams: tuple[int, ...] = (2, 3, 4, 5)
    embedding_dim: int = 128
    ensemble: int = 1  # members merged into one head; each has embedding_dim / ensemble units
    dropout: float = 0.5
    fit: FitConfig = FitConfig(learning_rate=1e-3, batch_size=64, label_smoothing=0.0)

    def __post_init__(self):
        if self.word_vocabulary < 1 or self.char_vocabulary < 1:
            raise ValueError("both the word and the character vocabularies must be at least 1")
        if self.ensemble < 1 or self.embedding_dim % self.ensemble:
            raise ValueError(f"embedding_dim {self.embedding_dim} does not split evenly between "
                             f"{self.ensemble} ensemble members")


@dataclass(frozen=True)
class StudyBaselineConfig:
    """The study's architecture: word indices -> Embedding -> average -> dense + dropout."""

    vocabulary: int = 20_000
    sequence_length: int = 200
    token_embedding_dim: int = 128
    hidden_units: int = 128
    dropout: float = 0.5
    # 3e-3 rather than 1e-3: 1e-3 stopped at F1 0.60 vs 0.64 here
    fit: FitConfig = FitConfig(learning_rate=3e-3, label_smoothing=0.0)


@dataclass
class TrainedModel:
    """A fitted Keras model with its history and the row counts it was fitted on."""

    model: keras.Model
    history: dict[str, list[float]]  # the members' histories one after the other (see `member_epochs`)
    rows_train: int
    rows_early_stopping: int
    member_epochs: list[int] = dataclasses.field(default_factory=list)


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


@keras.saving.register_keras_serializable(package="rakuten_text")
class CharNgramsWithinWords:
    """A `TextVectorization` split: the character n-grams of each word padded with one space.

    scikit-learn's `char_wb` analyzer: "60x33 cm" gives " 6", "60", ..., "33 ", " 60", ... " cm ".
    N-grams never straddle two words, so the vocabulary is not spent on word pairs.
    """

    def __init__(self, ngrams: Sequence[int]):
        self.ngrams = tuple(int(n) for n in ngrams)

    def __call__(self, texts: tf.Tensor) -> tf.RaggedTensor:
        words = tf.strings.split(texts)                                       # [batch, (words)]
        chars = tf.strings.unicode_split(tf.strings.join([" ", words, " "]), "UTF-8")
        grams = [tf.strings.ngrams(chars, n, separator="") for n in self.ngrams]
        return tf.concat(grams, axis=-1).merge_dims(-2, -1)                   # [batch, (n-grams)]

    def get_config(self) -> dict[str, Any]:
        return {"ngrams": list(self.ngrams)}


def text_inputs(rows: TextInputs) -> dict[str, np.ndarray]:
    """{"text": ..., "cleaned": ...} as object arrays of str, from any accepted form of rows."""
    if isinstance(rows, Mapping) or hasattr(rows, "columns"):  # a dict or a pandas DataFrame
        return {name: np.asarray(list(rows[name]), dtype=object) for name in INPUT_NAMES if name in rows}
    rows = list(rows)
    if rows and all(isinstance(row, str) for row in rows):
        return {TEXT_INPUT: np.asarray(rows, dtype=object)}
    return {name: np.asarray([getattr(row, name) for row in rows], dtype=object) for name in INPUT_NAMES}


def _model_input_names(model: keras.Model) -> list[str]:
    return list(model.input) if isinstance(model.input, dict) else [model.input.name]


def _feed(model: keras.Model, arrays: dict[str, np.ndarray], start: int = 0,
          stop: int | None = None) -> dict[str, tf.Tensor] | tf.Tensor:
    """The rows [start, stop) of `arrays` in the form `model` takes (a dict or one tensor)."""
    names = _model_input_names(model)
    missing = [name for name in names if name not in arrays]
    if missing:
        raise ValueError(f"the model reads {names}; the rows have no {missing}")
    tensors = {name: tf.constant(arrays[name][start:stop], dtype=tf.string) for name in names}
    return tensors if isinstance(model.input, dict) else tensors[names[0]]


def _rows_count(arrays: dict[str, np.ndarray]) -> int:
    lengths = {len(values) for values in arrays.values()}
    if len(lengths) != 1:
        raise ValueError(f"inputs of different lengths: { {k: len(v) for k, v in arrays.items()} }")
    return lengths.pop()


def _tfidf_branch(texts: np.ndarray, name: str, split: Any, max_tokens: int,
                  ngrams: int | tuple[int, ...] | None) -> tuple[layers.TextVectorization, SublinearTfIdf]:
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


def _head_layers(embedding_dim: int, num_classes: int, dropout: float, seed: int | None = None) -> list[layers.Layer]:
    return [
        layers.Dense(embedding_dim, activation="relu", name=EMBEDDING_LAYER),
        layers.Dropout(dropout, seed=seed, name="embedding_dropout"),
        layers.Dense(num_classes, activation="softmax", name=PROBABILITIES_LAYER),
    ]


def _apply(head_layers: list[layers.Layer], x):
    for layer in head_layers:
        x = layer(x)
    return x


def build_text_model(rows: TextInputs, num_classes: int,
                     config: TextModelConfig = TextModelConfig()) -> tuple[keras.Model, keras.Model]:
    """(served model, featurizer): {"text", "cleaned"} -> probabilities, and -> TF-IDF features.

    Vocabularies and idf weights are fitted on `rows`, which should be the rows the model is
    fitted on (no early-stopping or validation rows). The head is freshly initialised.
    """
    arrays = text_inputs(rows)
    word = _tfidf_branch(arrays[TEXT_INPUT], "word", "whitespace", config.word_vocabulary, config.word_ngrams)
    char = _tfidf_branch(arrays[CLEANED_INPUT], "char", CharNgramsWithinWords(config.char_ngrams),
                         config.char_vocabulary, None)

    inputs = {name: keras.Input(shape=(), dtype="string", name=name) for name in INPUT_NAMES}
    normalized = [layers.UnitNormalization(name=f"{weighting.name}_l2")(weighting(vectorizer(inputs[name])))
                  for name, (vectorizer, weighting) in ((TEXT_INPUT, word), (CLEANED_INPUT, char))]
    features = layers.Concatenate(name="features")(normalized)
    head = _head_layers(config.embedding_dim, num_classes, config.dropout)
    model = keras.Model(inputs, _apply(head, features), name="text_classifier")
    return model, keras.Model(inputs, features, name="text_features")


def build_study_baseline(texts: TextInputs, num_classes: int,
                         config: StudyBaselineConfig = StudyBaselineConfig()) -> keras.Model:
    """The study's text network, as a baseline: TextVectorization, Embedding, dense + dropout.

    It reads the normalised `text` only, as the study did.
    """
    vectorizer = layers.TextVectorization(max_tokens=config.vocabulary, standardize=None,
                                          output_mode="int", output_sequence_length=config.sequence_length,
                                          name="tokens")
    vectorizer.adapt(tf.data.Dataset.from_tensor_slices(text_inputs(texts)[TEXT_INPUT]).batch(_FEATURE_BATCH))
    text_input = keras.Input(shape=(), dtype="string", name=TEXT_INPUT)
    # Padding is averaged in (no mask): a masked average of an empty text is 0/0 = NaN.
    x = layers.Embedding(vectorizer.vocabulary_size(), config.token_embedding_dim,
                         name="token_embedding")(vectorizer(text_input))
    x = layers.GlobalAveragePooling1D(name="average")(x)
    x = layers.Dense(config.hidden_units, activation="relu", name="hidden")(x)
    x = layers.Dropout(config.dropout, name="hidden_dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name=PROBABILITIES_LAYER)(x)
    return keras.Model(text_input, outputs, name="study_text_baseline")


def sparse_features(featurizer: keras.Model, rows: TextInputs) -> tf.SparseTensor:
    """TF-IDF rows as one sparse matrix (they are >99% zeros)."""
    arrays = text_inputs(rows)
    batches = [tf.sparse.from_dense(featurizer(_feed(featurizer, arrays, start, start + _FEATURE_BATCH)))
               for start in range(0, _rows_count(arrays), _FEATURE_BATCH)]
    return tf.sparse.concat(axis=0, sp_inputs=batches)


def merge_members(members: Sequence[list[layers.Layer]], head: list[layers.Layer]) -> None:
    """Set `head` (layers as `_head_layers` builds them, built) to the members' logit average.

    The members' hidden units side by side are the embedding; the output kernel is theirs stacked
    and divided by their number, so the softmax is that of their mean logits.
    """
    hidden = [member[0].get_weights() for member in members]
    output = [member[-1].get_weights() for member in members]
    head[0].set_weights([np.concatenate([k for k, _ in hidden], axis=1), np.concatenate([b for _, b in hidden])])
    head[-1].set_weights([np.concatenate([k for k, _ in output], axis=0) / len(members),
                          np.mean([b for _, b in output], axis=0)])


def _validate(rows: TextInputs, labels: Sequence[int], num_classes: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    arrays = text_inputs(rows)
    labels = np.asarray(labels, dtype=np.int64)
    if _rows_count(arrays) != len(labels):
        raise ValueError(f"{_rows_count(arrays)} rows for {len(labels)} labels")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"label indices must lie in [0, {num_classes})")
    return arrays, labels


def _subset(arrays: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {name: values[rows] for name, values in arrays.items()}


def train_text_model(rows: TextInputs, labels: Sequence[int], num_classes: int,
                     config: TextModelConfig = TextModelConfig(),
                     reserved: np.ndarray | None = None) -> TrainedModel:
    """Fit the served text model on preprocessed training rows and their class indices `labels`.

    `rows`: `PreprocessedText` objects, or a mapping / DataFrame with `text` and `cleaned`.
    `reserved`: a boolean mask of rows never fitted (kept in the early-stopping set), for the
    fusion head (`training.pairing.reserved_for_fusion`).
    """
    arrays, labels = _validate(rows, labels, num_classes)
    fit = config.fit
    keras.utils.set_random_seed(fit.seed)
    fit_rows, early_rows = early_stopping_split(labels, fit.early_stopping_fraction, fit.seed, reserved)
    model, featurizer = build_text_model(_subset(arrays, fit_rows), num_classes, config)
    train_features = sparse_features(featurizer, _subset(arrays, fit_rows))
    early_features = sparse_features(featurizer, _subset(arrays, early_rows))
    train_data = dataset(train_features, labels[fit_rows], num_classes, fit, shuffle=True, keep_sparse=True)
    early_data = dataset(early_features, labels[early_rows], num_classes, fit, shuffle=False, keep_sparse=True)

    feature_input = keras.Input(shape=(train_features.shape[-1],), sparse=True, name="features_input")
    members, history, member_epochs = [], {}, []
    for k in range(config.ensemble):
        seed = fit.seed + k
        keras.utils.set_random_seed(seed)
        member = _head_layers(config.embedding_dim // config.ensemble, num_classes, config.dropout, seed)
        member_history = fit_classifier(keras.Model(feature_input, _apply(member, feature_input),
                                                    name=f"text_head_{k}"),
                                        train_data, early_data, fit)
        members.append(member)
        member_epochs.append(len(member_history["loss"]))
        for key, values in member_history.items():
            history.setdefault(key, []).extend(values)
    merge_members(members, [model.get_layer(EMBEDDING_LAYER), model.get_layer(PROBABILITIES_LAYER)])
    return TrainedModel(model, history, len(fit_rows), len(early_rows), member_epochs)


def train_study_baseline(texts: TextInputs, labels: Sequence[int], num_classes: int,
                         config: StudyBaselineConfig = StudyBaselineConfig()) -> TrainedModel:
    """Fit the study's architecture with the same early-stopping protocol as the served model."""
    arrays, labels = _validate(texts, labels, num_classes)
    texts = arrays[TEXT_INPUT]
    fit = config.fit
    keras.utils.set_random_seed(fit.seed)
    fit_rows, early_rows = early_stopping_split(labels, fit.early_stopping_fraction, fit.seed)
    model = build_study_baseline(texts[fit_rows], num_classes, config)
    history = fit_classifier(
        model,
        dataset(tf.constant(texts[fit_rows]), labels[fit_rows], num_classes, fit, shuffle=True),
        dataset(tf.constant(texts[early_rows]), labels[early_rows], num_classes, fit, shuffle=False),
        fit,
    )
    return TrainedModel(model, history, len(fit_rows), len(early_rows), [len(history["loss"])])


def _predict(model: keras.Model, rows: TextInputs) -> np.ndarray:
    arrays = text_inputs(rows)
    batches = [model(_feed(model, arrays, start, start + _FEATURE_BATCH), training=False)
               for start in range(0, _rows_count(arrays), _FEATURE_BATCH)]
    return np.concatenate([np.asarray(batch) for batch in batches])


def predict_probabilities(model: keras.Model, rows: TextInputs) -> np.ndarray:
    """Class probabilities [n, classes] from a Keras text model (the served one or the study's)."""
    return _predict(model, rows)


def predict_embeddings(model: keras.Model, rows: TextInputs) -> np.ndarray:
    """The "embedding" layer's output [n, embedding_dim]: what the fusion model is fed."""
    return _predict(keras.Model(model.input, model.get_layer(EMBEDDING_LAYER).output), rows)


def export_text_bundle(
    model: keras.Model,
    models_root: str | Path,
    labels: Sequence[tuple[int, str]],
    training_data: dict[str, Any],
    metrics: dict[str, Any],
    hyperparameters: dict[str, Any],
    name: str = MODEL_NAME,
    version: int | None = None,
    class_priors: dict[str, float] | None = None,
) -> BundleInfo:
    """Write `models_root/name/<version>/`: SavedModel with `serving_default`, metadata.json, and
    the NumPy runtime's files (`training.text_runtime_files`, checked against the SavedModel).

    The signature takes `text` and `cleaned` (string [None] each, the two views of
    `preprocess`) and returns `embedding` (float32 [None, D], the "embedding" layer) and
    `probabilities` (float32 [None, classes], index i is the i-th of `labels`, given in
    ascending code order).
    """
    serving_model = keras.Model(model.input, {"embedding": model.get_layer(EMBEDDING_LAYER).output,
                                              "probabilities": model.output})
    inputs = [tf.TensorSpec([None], tf.string, name=name_) for name_ in INPUT_NAMES]
    descriptions = {TEXT_INPUT: "preprocess(designation, description).text (text_service.preprocessing)",
                    CLEANED_INPUT: "preprocess(designation, description).cleaned (text_service.preprocessing)"}
    metadata = {"training_data": training_data, "metrics": metrics, "hyperparameters": hyperparameters}
    if class_priors is not None:  # training.class_priors: the shares of the training labels
        metadata["class_priors"] = class_priors
    word_ngrams, char_ngrams = _vectorizer_ngrams(model)
    return export_bundle(serving_model, models_root, name, inputs, labels, metadata, descriptions, version,
                         write_runtimes=lambda folder: write_numpy_runtime(folder, word_ngrams, char_ngrams))


def _vectorizer_ngrams(model: keras.Model) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The n-gram widths of the word and character vectorisers, which the NumPy runtime repeats."""
    word_config = model.get_layer("word_counts").get_config()
    if word_config["split"] != "whitespace" or word_config["standardize"] is not None:
        raise ValueError("the word vectoriser must split on white space and not standardise")
    word = word_config["ngrams"]
    char = model.get_layer("char_counts")._split  # CharNgramsWithinWords; Keras keeps no public handle
    if not isinstance(char, CharNgramsWithinWords):
        raise ValueError(f"the character vectoriser splits with {char!r}, not CharNgramsWithinWords")
    return (tuple(range(1, word + 1)) if isinstance(word, int) else tuple(word)), char.ngrams


def config_dict(config: TextModelConfig | StudyBaselineConfig) -> dict[str, Any]:
    """A config as plain JSON-ready data, for metadata.json."""
    return dataclasses.asdict(config)
