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


def dataset(inputs, labels: np.ndarray, num_classes: int, fit: FitConfig, shuffle: bool) -> tf.data.Dataset:
    """Batches of (inputs, one-hot labels); inputs may be an array, a dict of arrays or a SparseTensor."""
    data = tf.data.Dataset.from_tensor_slices((inputs, tf.one_hot(labels, num_classes)))
    if shuffle:
        data = data.shuffle(len(labels), seed=fit.seed, reshuffle_each_iteration=True)
    data = data.batch(fit.batch_size)
    if isinstance(inputs, tf.SparseTensor):
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
