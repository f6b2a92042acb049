"""The text classifier, the study's text architecture (a baseline), their training and the export.

The served model reads both views that `text_service.preprocessing.preprocess` returns, as string
tensors, and vectorises them itself, so its SavedModel is self-contained and serving cannot drift
from training; with the e5 tower it also reads `e5`, the multilingual-e5-small embedding of the
product's title (`preprocess(...).title`, computed by the service):

    text    -> word 1..n-gram counts              -> sublinear TF-IDF -> L2 ┐
    cleaned -> character n-grams within words     -> sublinear TF-IDF -> L2 ┴ concat = features
    hidden    = relu(features @ K + b [+ e5 @ E])                    the deep path's hidden layer
    wide      = features @ W [+ e5 @ V]                              the wide path's logits
    logits    = dropout(hidden) @ D + d + wide;  probabilities = softmax(logits)
    embedding = [hidden, wide]                                       128 + 27 = 155 values

`text` is the study's normalised text (stems, no stop words, letters only); `cleaned` is the same
product text lower case and accent-folded but with digits and punctuation kept, where model
numbers, sizes and units live. Character n-grams are taken inside each word padded with a space,
as scikit-learn's `char_wb` analyzer does (`CharNgramsWithinWords`).

The wide path is a linear SVM on the features (fitted by LIBLINEAR, `fit_wide_path`); the deep
path adds what a hidden layer finds. The "embedding" layer's output is the text embedding the
fusion model consumes: the hidden units and the wide logits side by side, so the probabilities
are a softmax of a linear function of it (the fusion head reads that layer back). Vectorisation is deterministic, so training computes
the TF-IDF features once, keeps them sparse, and fits a float32 copy of the head on them
(`_training_head`, the same layer names); its weights are then copied into the served model,
whose two big TF-IDF kernels (vocabulary x 128 and vocabulary x 27, nearly the whole bundle) are
stored as float16 (`StoredDense`).

The e5 tower is optional at serving time: in training each row's e5 vector is zeroed with
probability `e5_dropout` (`RandomlyAbsent`), so the same bundle serves TEXT_ENCODER=tfidf (a
zero e5 input) and tfidf+e5. Title-only copies of the training products (`preprocess(title, "")`)
teach the model titles sent alone.

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
import scipy.sparse
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
E5_INPUT = "e5"            # E5Encoder embedding of preprocess(...).title; zeros when absent
INPUT_NAMES = (TEXT_INPUT, CLEANED_INPUT)
E5_DIM = 384
#: The encoders a bundle may be trained with (metadata.json `encoders`), the service's TEXT_ENCODER.
TFIDF, TFIDF_E5 = "tfidf", "tfidf+e5"
EMBEDDING_LAYER = "embedding"
PROBABILITIES_LAYER = "probabilities"
#: Layer names the NumPy runtime reads its weights from (`training.text_runtime_files`).
HIDDEN_LAYER, WIDE_LAYER, E5_HIDDEN_LAYER, E5_WIDE_LAYER, DEEP_LAYER = (
    "tfidf_hidden", "tfidf_wide", "e5_hidden", "e5_wide", "deep_logits")
_FEATURE_BATCH = 256

#: What the model functions accept as input rows: `PreprocessedText` objects (what `preprocess`
#: returns), or a mapping / DataFrame with the columns `text` and `cleaned`. Models that read
#: `text` only (the study baseline) also accept a plain sequence of normalised strings.
TextInputs = Union[Sequence[PreprocessedText], Mapping[str, Sequence[str]], Sequence[str], Any]


@dataclass(frozen=True)
class TextModelConfig:
    """The served model's features and head; defaults are the ones chosen on the real data."""

    word_vocabulary: int = 15_000
    word_ngrams: int = 2
    char_vocabulary: int = 25_000
    char_ngrams: tuple[int, ...] = (2, 3, 4, 5)
    embedding_dim: int = 128
    dropout: float = 0.5
    wide: bool = True          # a linear path from the features to the logits beside the deep one
    wide_c: tuple[float, ...] = (0.25, 0.5, 1.0)  # the wide path's linear SVM: C tried (inverse L2 strength)
    e5_dropout: float = 0.5    # share of training rows whose e5 vector is zeroed (the model must work without)
    e5: bool = False           # the e5 tower: an `e5` input into the hidden layer and the wide path
    kernel_dtype: str = "float16"  # how the big TF-IDF kernels are stored in the bundle
    fit: FitConfig = FitConfig(learning_rate=1e-3, batch_size=128, label_smoothing=0.1)

    def __post_init__(self):
        if self.word_vocabulary < 1 or self.char_vocabulary < 1:
            raise ValueError("both the word and the character vocabularies must be at least 1")
        if self.kernel_dtype not in ("float16", "float32"):
            raise ValueError(f"kernel_dtype must be float16 or float32, got {self.kernel_dtype!r}")
        if not 0.0 <= self.e5_dropout < 1.0:
            raise ValueError(f"e5_dropout must lie in [0, 1), got {self.e5_dropout}")

    @property
    def encoders(self) -> list[str]:
        """The settings the trained bundle serves (`TEXT_ENCODER`): tfidf always, tfidf+e5 with the tower."""
        return [TFIDF, TFIDF_E5] if self.e5 else [TFIDF]


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
    history: dict[str, list[float]]
    rows_train: int           # products fitted (each twice with title-only copies)
    rows_early_stopping: int  # products held out
    epochs: int = 0
    config: TextModelConfig | None = None


@keras.saving.register_keras_serializable(package="rakuten_text")
class StoredDense(layers.Layer):
    """A Dense layer whose kernel is kept in `storage_dtype` (float16 halves the bundle) and cast to
    the input's dtype for the product; serving only (the head is trained in float32, then copied)."""

    def __init__(self, units: int, use_bias: bool = True, storage_dtype: str = "float16", **kwargs):
        super().__init__(**kwargs)
        self.units, self.use_bias, self.storage_dtype = units, use_bias, storage_dtype

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(int(input_shape[-1]), self.units), initializer="zeros",
                                      dtype=self.storage_dtype, trainable=False, name="kernel")
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", trainable=False,
                                    name="bias") if self.use_bias else None

    def call(self, x):
        y = ops.matmul(x, ops.cast(self.kernel, x.dtype))
        return y + self.bias if self.bias is not None else y

    def get_config(self):
        return {**super().get_config(), "units": self.units, "use_bias": self.use_bias,
                "storage_dtype": self.storage_dtype}


@keras.saving.register_keras_serializable(package="rakuten_text")
class RandomlyAbsent(layers.Layer):
    """In training, zeroes whole rows with probability `rate` (an input the served model may not
    get, e.g. e5 under TEXT_ENCODER=tfidf); the identity otherwise. Unlike Dropout, no rescaling:
    an absent input is a zero vector, exactly what the service sends."""

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training or self.rate <= 0:
            return x
        keep = keras.random.uniform(ops.shape(x)[:1], seed=self.seed_generator) >= self.rate
        return x * ops.expand_dims(ops.cast(keep, x.dtype), -1)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


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
          stop: int | None = None, e5: np.ndarray | None = None) -> dict[str, tf.Tensor] | tf.Tensor:
    """The rows [start, stop) of `arrays` (and of `e5`, zeros when None) in the form `model` takes."""
    names = _model_input_names(model)
    missing = [name for name in names if name not in arrays and name != E5_INPUT]
    if missing:
        raise ValueError(f"the model reads {names}; the rows have no {missing}")
    tensors = {name: tf.constant(arrays[name][start:stop], dtype=tf.string) for name in names if name != E5_INPUT}
    if E5_INPUT in names:
        rows = len(next(iter(arrays.values()))[start:stop])
        tensors[E5_INPUT] = tf.constant(np.zeros((rows, E5_DIM), np.float32) if e5 is None else e5[start:stop],
                                        dtype=tf.float32)
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


def _head(features, e5, num_classes: int, config: TextModelConfig, dense) -> tuple[Any, Any, Any]:
    """(embedding, probabilities, wide logits or None) of the wide-and-deep head on `features` (and `e5`, or None):

        hidden    = relu(features @ K + b [+ e5 @ E])                     the deep path
        wide      = features @ W [+ e5 @ V]                                the wide path
        logits    = dropout(hidden) @ D + d [+ wide]
        embedding = hidden [, wide]    (so logits are linear in the embedding)

    `dense(units, name, use_bias, wide)` makes the TF-IDF layers (trainable Dense in training,
    `StoredDense` in the served model), so both models share names and weights one to one.
    """
    hidden = dense(config.embedding_dim, HIDDEN_LAYER, True, False)(features)
    if e5 is not None:
        hidden = layers.Add(name="hidden_sum")(
            [hidden, layers.Dense(config.embedding_dim, use_bias=False, name=E5_HIDDEN_LAYER)(e5)])
    hidden = layers.ReLU(name="hidden_relu" if config.wide else EMBEDDING_LAYER)(hidden)
    deep = layers.Dense(num_classes, name=DEEP_LAYER)
    dropout = layers.Dropout(config.dropout, seed=config.fit.seed, name="embedding_dropout")
    embedding, wide = hidden, None
    if config.wide:
        wide = dense(num_classes, WIDE_LAYER, False, True)(features)
        if e5 is not None:
            wide = layers.Add(name="wide_sum")([wide, layers.Dense(num_classes, use_bias=False,
                                                                   name=E5_WIDE_LAYER)(e5)])
        # the hidden units and the wide logits: the probabilities are a softmax of a linear
        # function of the embedding, which the fusion head reads back (`fusion_model.output_layer`)
        embedding = layers.Concatenate(name=EMBEDDING_LAYER)([hidden, wide])
        units = config.embedding_dim
        logits = layers.Add(name="logits")([deep(dropout(embedding[:, :units])), embedding[:, units:]])
    else:
        logits = deep(dropout(hidden))
    return embedding, layers.Softmax(name=PROBABILITIES_LAYER)(logits), wide


def build_text_model(rows: TextInputs, num_classes: int,
                     config: TextModelConfig = TextModelConfig()) -> tuple[keras.Model, keras.Model]:
    """(served model, featurizer): {"text", "cleaned"[, "e5"]} -> probabilities, and -> TF-IDF features.

    Vocabularies and idf weights are fitted on `rows`, which should be the rows the model is
    fitted on (no early-stopping or validation rows). The head's weights come from training
    (`train_text_model` copies them in).
    """
    arrays = text_inputs(rows)
    word = _tfidf_branch(arrays[TEXT_INPUT], "word", "whitespace", config.word_vocabulary, config.word_ngrams)
    char = _tfidf_branch(arrays[CLEANED_INPUT], "char", CharNgramsWithinWords(config.char_ngrams),
                         config.char_vocabulary, None)

    inputs = {name: keras.Input(shape=(), dtype="string", name=name) for name in INPUT_NAMES}
    normalized = [layers.UnitNormalization(name=f"{weighting.name}_l2")(weighting(vectorizer(inputs[name])))
                  for name, (vectorizer, weighting) in ((TEXT_INPUT, word), (CLEANED_INPUT, char))]
    features = layers.Concatenate(name="features")(normalized)
    e5 = None
    if config.e5:
        e5 = inputs[E5_INPUT] = keras.Input(shape=(E5_DIM,), dtype="float32", name=E5_INPUT)
    stored = lambda units, name, use_bias, wide: StoredDense(units, use_bias, config.kernel_dtype, name=name)  # noqa: E731
    _, probabilities, _ = _head(features, e5, num_classes, config, stored)
    return keras.Model(inputs, probabilities, name="text_classifier"), keras.Model(inputs, features, name="text_features")


def _training_head(feature_dim: int, num_classes: int, config: TextModelConfig) -> keras.Model:
    """The served head on sparse TF-IDF rows (and e5 rows, absent at random), in float32, trainable."""
    features = keras.Input(shape=(feature_dim,), sparse=True, name="features")
    inputs = {"features": features}
    e5 = None
    if config.e5:
        inputs[E5_INPUT] = keras.Input(shape=(E5_DIM,), name=E5_INPUT)
        e5 = RandomlyAbsent(config.e5_dropout, seed=config.fit.seed, name="e5_absent")(inputs[E5_INPUT])

    def dense(units, name, use_bias, wide):
        return layers.Dense(units, use_bias=use_bias, name=name)

    _, probabilities, _ = _head(features, e5, num_classes, config, dense)
    return keras.Model(inputs if config.e5 else features, probabilities, name="text_head")


def copy_head(head: keras.Model, served: keras.Model) -> None:
    """Set the served model's head to the trained one's (kernels rounded to their storage dtype)."""
    for name in (HIDDEN_LAYER, E5_HIDDEN_LAYER, DEEP_LAYER, WIDE_LAYER, E5_WIDE_LAYER):
        try:
            source = head.get_layer(name)
        except ValueError:
            continue
        served.get_layer(name).set_weights(source.get_weights())


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
                     reserved: np.ndarray | None = None, title_only: TextInputs | None = None,
                     e5: np.ndarray | None = None) -> TrainedModel:
    """Fit the served text model on preprocessed training rows and their class indices `labels`.

    `rows`: `PreprocessedText` objects, or a mapping / DataFrame with `text` and `cleaned`.
    `reserved`: a boolean mask of rows never fitted (kept in the early-stopping set), for the
    fusion head (`training.pairing.reserved_for_fusion`).
    `title_only`: the same products preprocessed from their title alone, row for row: each is
    added as a copy beside its product, on the same side of the early-stopping split, so a title
    sent alone is classified nearly as well. Vocabularies and idf weights come from `rows` only.
    `e5`: [n, 384] e5 embeddings of the rows' titles (`preprocess(...).title`), for `config.e5`;
    the title-only copies get the same vectors (e5 reads the title only).
    """
    arrays, labels = _validate(rows, labels, num_classes)
    if config.e5 and (e5 is None or len(e5) != len(labels)):
        raise ValueError("config.e5 needs one e5 embedding per row")
    title_arrays = None
    if title_only is not None:
        title_arrays = text_inputs(title_only)
        if _rows_count(title_arrays) != len(labels):
            raise ValueError(f"{_rows_count(title_arrays)} title-only rows for {len(labels)} rows")
    fit = config.fit
    keras.utils.set_random_seed(fit.seed)
    fit_rows, early_rows = early_stopping_split(labels, fit.early_stopping_fraction, fit.seed, reserved)
    model, featurizer = build_text_model(_subset(arrays, fit_rows), num_classes, config)

    def rows_of(selected: np.ndarray) -> tuple[tf.SparseTensor, np.ndarray, np.ndarray | None]:
        features = sparse_features(featurizer, _subset(arrays, selected))
        targets, e5_rows = labels[selected], None if e5 is None else e5[selected].astype(np.float32)
        if title_arrays is not None:
            features = tf.sparse.concat(0, [features, sparse_features(featurizer, _subset(title_arrays, selected))])
            targets = np.concatenate([targets, targets])
            e5_rows = None if e5_rows is None else np.concatenate([e5_rows, e5_rows])
        return features, targets, e5_rows

    def data(rows, shuffle: bool) -> tf.data.Dataset:
        features, targets, e5_rows = rows
        inputs = {"features": features, E5_INPUT: e5_rows} if config.e5 else features
        return dataset(inputs, targets, num_classes, fit, shuffle=shuffle, keep_sparse=True)

    fit_data, early_data_rows = rows_of(fit_rows), rows_of(early_rows)
    train_data, early_data = data(fit_data, True), data(early_data_rows, False)
    head = _training_head(int(fit_data[0].shape[-1]), num_classes, config)
    early_variants = [early_data_rows]
    if config.e5:  # the held-out rows with and without their e5 vector, as the service may send them
        features, targets, e5_rows = early_data_rows
        early_variants.append((features, targets, np.zeros_like(e5_rows)))
    wide_record = {}
    if config.wide:  # the deep path is fitted alone first: the wide kernels stay at zero, frozen
        for name in (WIDE_LAYER, E5_WIDE_LAYER):
            if name in {layer.name for layer in head.layers}:
                layer = head.get_layer(name)
                layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
                layer.trainable = False
    history = fit_classifier(head, train_data, early_data, fit)
    if config.wide:
        wide_record = fit_wide_path(head, fit_data, [(data(v, False), v) for v in early_variants], config)
    history.update({f"wide_{key}": [value] for key, value in wide_record.items()})
    history["early_stopping_accuracy"] = [wide_record.get("early_stopping_accuracy", max(history["val_accuracy"]))]
    copy_head(head, model)
    return TrainedModel(model, history, len(fit_rows), len(early_rows), len(history["loss"]), config)


def _scipy_rows(features: tf.SparseTensor, e5_rows: np.ndarray | None, with_e5: bool) -> scipy.sparse.csr_matrix:
    matrix = scipy.sparse.csr_matrix((features.values.numpy(), features.indices.numpy().T), shape=features.shape)
    if e5_rows is None:
        return matrix
    return scipy.sparse.hstack([matrix, e5_rows if with_e5 else np.zeros_like(e5_rows)]).tocsr()


def fit_wide_path(head: keras.Model, fit_rows, early_variants, config: TextModelConfig) -> dict:
    """Add the wide path to a head whose deep path is fitted: a linear SVM (one-vs-rest, LIBLINEAR,
    as the baseline; C among `config.wide_c`) on the fit rows, with and without e5 when the head has
    the tower. The logits become scale * SVM scores + weight * deep logits, both chosen on the
    early-stopping rows (log loss; weight 0 drops the deep path's answer but keeps its embedding
    for the fusion model). Returns what was chosen and the early-stopping accuracy."""
    from sklearn.svm import LinearSVC

    features, targets, e5_rows = fit_rows
    variants = (True, False) if e5_rows is not None else (True,)
    x = scipy.sparse.vstack([_scipy_rows(features, e5_rows, v) for v in variants]).tocsr()
    deep_logits = keras.Model(head.input, head.get_layer(DEEP_LAYER).output)
    early, deep, truth = [], [], []
    for dataset_, (e_features, e_targets, e_e5) in early_variants:
        early.append(_scipy_rows(e_features, e_e5, True))
        deep.append(np.concatenate([np.asarray(deep_logits(inputs, training=False)) for inputs, _ in dataset_]))
        truth.append(e_targets)
    early, deep, truth = scipy.sparse.vstack(early).tocsr(), np.concatenate(deep), np.concatenate(truth)

    def log_loss(scores: np.ndarray, scale: float, weight: float) -> float:
        logits = scale * scores + weight * deep
        logits = logits - logits.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(logits).sum(axis=1)) - logits[np.arange(len(truth)), truth]))

    candidates = []
    for c in config.wide_c:
        svm = LinearSVC(C=c).fit(x, np.tile(targets, len(variants)))
        if list(svm.classes_) != list(range(head.output.shape[-1])):
            raise ValueError("every class must be among the fitted rows")
        scores = svm.decision_function(early)
        for scale in np.geomspace(0.5, 50, 30):
            for weight in (0.0, 0.25, 0.5, 0.75, 1.0, 1.5):
                candidates.append((log_loss(scores, scale, weight), c, scale, weight, svm, scores))
    _, c, scale, weight, svm, scores = min(candidates, key=lambda candidate: candidate[0])
    kernel = (scale * svm.coef_.T).astype(np.float32)
    vocabulary = int(features.shape[-1])
    head.get_layer(WIDE_LAYER).set_weights([kernel[:vocabulary]])
    if e5_rows is not None:
        head.get_layer(E5_WIDE_LAYER).set_weights([kernel[vocabulary:]])
    deep_kernel, deep_bias = head.get_layer(DEEP_LAYER).get_weights()
    head.get_layer(DEEP_LAYER).set_weights([weight * deep_kernel,
                                            (weight * deep_bias + scale * svm.intercept_).astype(np.float32)])
    combined = (scale * scores + weight * deep).argmax(axis=1)
    return {"c": c, "scale": round(float(scale), 4), "deep_weight": weight,
            "early_stopping_accuracy": round(float(np.mean(combined == truth)), 4),
            "svm_early_stopping_accuracy": round(float(np.mean(scores.argmax(axis=1) == truth)), 4),
            "deep_early_stopping_accuracy": round(float(np.mean(deep.argmax(axis=1) == truth)), 4)}


def _vocabulary_columns(featurizer: keras.Model) -> range:
    return range(int(featurizer.output.shape[-1]))


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


def _predict(model: keras.Model, rows: TextInputs, e5: np.ndarray | None = None) -> np.ndarray:
    arrays = text_inputs(rows)
    batches = [model(_feed(model, arrays, start, start + _FEATURE_BATCH, e5), training=False)
               for start in range(0, _rows_count(arrays), _FEATURE_BATCH)]
    return np.concatenate([np.asarray(batch) for batch in batches])


def predict_probabilities(model: keras.Model, rows: TextInputs, e5: np.ndarray | None = None) -> np.ndarray:
    """Class probabilities [n, classes] from a Keras text model (the served one or the study's);
    `e5`: the rows' e5 embeddings for a model with the tower (zeros, i.e. absent, when None)."""
    return _predict(model, rows, e5)


def predict_embeddings(model: keras.Model, rows: TextInputs, e5: np.ndarray | None = None) -> np.ndarray:
    """The "embedding" layer's output [n, embedding_dim]: what the fusion model is fed."""
    return _predict(keras.Model(model.input, model.get_layer(EMBEDDING_LAYER).output), rows, e5)


def model_encoders(model: keras.Model) -> list[str]:
    """The TEXT_ENCODER settings a model serves: tfidf, and tfidf+e5 when it has the e5 input."""
    return [TFIDF, TFIDF_E5] if E5_INPUT in _model_input_names(model) else [TFIDF]


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
    `preprocess`), and `e5` (float32 [None, 384]) when the model has the e5 tower; metadata.json's
    `encoders` lists the TEXT_ENCODER settings it serves. It returns `embedding` (float32 [None, D], the "embedding" layer) and
    `probabilities` (float32 [None, classes], index i is the i-th of `labels`, given in
    ascending code order).
    """
    serving_model = keras.Model(model.input, {"embedding": model.get_layer(EMBEDDING_LAYER).output,
                                              "probabilities": model.output})
    inputs = [tf.TensorSpec([None], tf.string, name=name_) for name_ in INPUT_NAMES]
    descriptions = {TEXT_INPUT: "preprocess(designation, description).text (text_service.preprocessing)",
                    CLEANED_INPUT: "preprocess(designation, description).cleaned (text_service.preprocessing)"}
    encoders = model_encoders(model)
    if TFIDF_E5 in encoders:
        inputs.append(tf.TensorSpec([None, E5_DIM], tf.float32, name=E5_INPUT))
        descriptions[E5_INPUT] = ("E5Encoder(kind='query').encode([preprocess(...).title]) "
                                  "(text_service.e5_encoder); zeros under TEXT_ENCODER=tfidf")
    metadata = {"training_data": training_data, "metrics": metrics, "hyperparameters": hyperparameters,
                "encoders": encoders}
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
