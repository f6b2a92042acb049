"""Runs a model signature on NumPy arrays: named inputs in, named outputs out.

A `SignatureRunner` wraps any TF concrete function with keyword tensor inputs: the
`serving_default` signature of a bundle's SavedModel (`load_saved_model`), or a function that
composes several models in memory (the image service's backbone + head). Every model service and
the TF Serving `PredictionService` call models through it, so what a TF Serving client gets is
exactly what the service computes. `common.runtime.OnnxRunner` is its ONNX Runtime twin: both
expose framework-neutral `TensorSpec`s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from common.model_bundle import SERVING_SIGNATURE
from common.runtime import TENSORFLOW, TensorSpec, check_inputs

__all__ = ["SERVING_SIGNATURE", "SignatureRunner", "load_saved_model"]


class SignatureRunner:
    """A callable signature with its input and output specs."""

    runtime = TENSORFLOW

    def __init__(self, function, keep_alive: object = None):
        self.function = function
        self._keep_alive = keep_alive  # the objects whose variables the function reads
        args, kwargs = function.structured_input_signature
        # SavedModel signatures take keywords; a tf.function's concrete function takes named positionals.
        self._positional = [spec.name for spec in args]
        self._tf_inputs: dict[str, tf.TensorSpec] = dict(kwargs) or {spec.name: spec for spec in args}
        self.input_specs = {name: _neutral(name, spec) for name, spec in self._tf_inputs.items()}
        self.output_specs = {name: _neutral(name, spec) for name, spec in function.structured_outputs.items()}

    @property
    def device(self) -> str:
        """Where TF places the ops: the GPU when it sees one."""
        return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        check_inputs(self.input_specs, inputs)
        tensors = {name: tf.convert_to_tensor(value, dtype=self._tf_inputs[name].dtype)
                   for name, value in inputs.items()}
        if self._positional:
            outputs = self.function(*(tensors[name] for name in self._positional))
        else:
            outputs = self.function(**tensors)
        return {name: value.numpy() for name, value in outputs.items()}


def _neutral(name: str, spec: tf.TensorSpec) -> TensorSpec:
    return TensorSpec(name, spec.dtype.name, tuple(spec.shape.as_list()) if spec.shape.rank is not None else ())


def load_saved_model(path: str | Path, signature: str = SERVING_SIGNATURE) -> SignatureRunner:
    """The named signature of the SavedModel in `path`."""
    module = tf.saved_model.load(str(path))
    if signature not in module.signatures:
        raise ValueError(f"{path}: no signature {signature!r} (has {sorted(module.signatures)})")
    return SignatureRunner(module.signatures[signature], keep_alive=module)
