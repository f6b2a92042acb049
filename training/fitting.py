"""How every classifier here is fitted: AdamW with label smoothing, and EarlyStopping plus
ReduceLROnPlateau watching the loss of an early-stopping set carved out of the training split
(never `split == val`, which is kept for reporting)."""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from sklearn.model_selection import train_test_split


@dataclass(frozen=True)
class FitConfig:
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    batch_size: int = 64
    max_epochs: int = 60
    early_stopping_patience: int = 4
    reduce_lr_patience: int = 2
    reduce_lr_factor: float = 0.3
    early_stopping_fraction: float = 0.1
    seed: int = 0
    verbose: int = 0


def early_stopping_split(labels: np.ndarray, fraction: float, seed: int,
                         reserved: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (fit, early-stopping) row indices; the held-out part has every class at least once.

    `reserved` (a boolean mask) marks rows that must never be fitted (the fusion head's training
    products, see `training.pairing.reserved_for_fusion`): they are always held out, and the rest
    of the held-out share is drawn stratified from the other rows.
    """
    labels = np.asarray(labels)
    reserved = np.zeros(len(labels), bool) if reserved is None else np.asarray(reserved, bool)
    if reserved.shape != labels.shape:
        raise ValueError(f"reserved mask of shape {reserved.shape} for {len(labels)} labels")
    free = np.flatnonzero(~reserved)
    classes = len(np.unique(labels[free]))
    held_out = max(classes, int(round(fraction * len(labels))) - int(reserved.sum()))
    if held_out >= len(free) - classes:
        raise ValueError(f"{len(free)} rows are too few to hold out an early-stopping set "
                         f"covering {classes} classes")
    fit_rows, early_rows = train_test_split(free, test_size=held_out, stratify=labels[free], random_state=seed)
    return np.sort(fit_rows), np.sort(np.concatenate([early_rows, np.flatnonzero(reserved)]))


def dataset(inputs, labels: np.ndarray, num_classes: int, fit: FitConfig, shuffle: bool,
            keep_sparse: bool = False) -> tf.data.Dataset:
    """Batches of (inputs, one-hot labels); inputs may be an array, a dict of arrays or a SparseTensor.

    SparseTensor batches are made dense unless `keep_sparse` (for a model with a sparse Input,
    where a sparse product is far cheaper than a dense one).
    """
    data = tf.data.Dataset.from_tensor_slices((inputs, tf.one_hot(labels, num_classes)))
    if shuffle:
        data = data.shuffle(len(labels), seed=fit.seed, reshuffle_each_iteration=True)
    data = data.batch(fit.batch_size)
    if isinstance(inputs, tf.SparseTensor) and not keep_sparse:
        data = data.map(lambda x, y: (tf.sparse.to_dense(x), y))
    return data.prefetch(tf.data.AUTOTUNE)


def fit_classifier(model: keras.Model, train: tf.data.Dataset, early_stopping: tf.data.Dataset,
                   fit: FitConfig) -> dict[str, list[float]]:
    """Compile and fit a softmax classifier; the best weights on the early-stopping loss are kept."""
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
