"""Export a trained Keras model as a bundle: one `serving_default` signature and metadata.json.

Every model (text, image head, fusion) is exported the same way: a Keras model whose outputs are a
dict with `embedding` (where it has one) and `probabilities`, named inputs with fixed specs, and
metadata that says what goes in and out, which labels the probabilities follow, what data trained
it and how it scored on validation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import keras
import tensorflow as tf

from common.model_bundle import BundleInfo, write_bundle
from common.saved_model import SERVING_SIGNATURE
from training.export_onnx import runtimes_record, write_onnx


def _spec_dict(spec: tf.TensorSpec, description: str = "") -> dict[str, Any]:
    entry = {"dtype": spec.dtype.name, "shape": [-1 if d is None else int(d) for d in spec.shape]}
    if description:
        entry["description"] = description
    return entry


def export_bundle(
    serving_model: keras.Model,
    models_root: str | Path,
    name: str,
    inputs: Sequence[tf.TensorSpec],
    labels: Sequence[Any],
    metadata: dict[str, Any],
    input_descriptions: dict[str, str] | None = None,
    version: int | None = None,
    with_onnx: bool = False,
    write_runtimes: Callable[[Path], dict[str, Any]] | None = None,
) -> BundleInfo:
    """Write `models_root/name/<version>/` for a model with dict outputs and the given named inputs.

    `labels` are (code, name) pairs or objects with `.code` and `.name`, in output order.
    `metadata` adds the model's own fields (training_data, metrics, hyperparameters, ...).
    `with_onnx`: also write `model.onnx` (`training.export_onnx`, checked against the SavedModel) for
    ONNX Runtime, for float inputs; metadata.json's `runtimes` says which files the bundle has.
    `write_runtimes(folder)`: writes another runtime's files, derived from the SavedModel once it is
    in `folder`, and returns their `runtimes` records (the text model's NumPy runtime).
    """
    names = [spec.name for spec in inputs]
    if not all(names) or len(set(names)) != len(names):
        raise ValueError(f"every input needs a distinct name, got {names}")

    @tf.function(input_signature=list(inputs))
    def serve(*tensors):
        features = tensors[0] if len(tensors) == 1 else dict(zip(names, tensors))
        outputs = serving_model(features, training=False)
        return {key: tf.cast(value, tf.float32) for key, value in outputs.items()}

    def export(folder: Path) -> None:
        # tf.saved_model.save of a plain tf.Module rather than keras.export.ExportArchive: in
        # Keras 3.15 the archive writes every variable twice, which doubles the bundle. The
        # signature is the same: the inputs by name (keyword arguments), a dict of float32 outputs.
        module = tf.Module()
        module.model = serving_model  # tracks the variables and any lookup tables (vocabularies)
        tf.saved_model.save(module, str(folder), signatures={SERVING_SIGNATURE: serve.get_concrete_function()})
        # write_bundle adds metadata.json after this returns, so the record lands in it.
        runtimes = write_onnx(folder) if with_onnx else runtimes_record()
        if write_runtimes is not None:
            runtimes.update(write_runtimes(folder))
        full["runtimes"] = runtimes

    output_specs = serve.get_concrete_function().structured_outputs
    pairs = [(item.code, item.name) if hasattr(item, "code") else item for item in labels]
    label_list = [{"code": int(code), "name": str(label)} for code, label in pairs]
    n_classes = int(output_specs["probabilities"].shape[-1])
    if n_classes != len(label_list):
        raise ValueError(f"the model has {n_classes} classes for {len(label_list)} labels")
    descriptions = input_descriptions or {}
    full = {
        "labels": label_list,
        "inputs": {spec.name: _spec_dict(spec, descriptions.get(spec.name, "")) for spec in inputs},
        "outputs": {key: _spec_dict(spec) for key, spec in output_specs.items()},
        "framework": {"tensorflow": tf.__version__, "keras": keras.__version__},
        **metadata,
    }
    if "embedding" in output_specs:
        full["embedding_dim"] = int(output_specs["embedding"].shape[-1])
    return write_bundle(models_root, name, export, full, version=version)
