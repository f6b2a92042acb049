"""Runs a model signature on NumPy arrays: named inputs in, named outputs out.

A `SignatureRunner` wraps any TF concrete function with keyword tensor inputs: the
`serving_default` signature of a bundle's SavedModel (`load_saved_model`), or a function that
composes several models in memory (the image service's backbone + head). Every model service and
the TF Serving `PredictionService` call models through it, so what a TF Serving client gets is
exactly what the service computes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

SERVING_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"


class SignatureRunner:
    """A callable signature with its input and output specs."""

    def __init__(self, function, keep_alive: object = None):
        self.function = function
        self._keep_alive = keep_alive  # the objects whose variables the function reads
        args, kwargs = function.structured_input_signature
        # SavedModel signatures take keywords; a tf.function's concrete function takes named positionals.
        self._positional = [spec.name for spec in args]
        self.input_specs: dict[str, tf.TensorSpec] = dict(kwargs) or {spec.name: spec for spec in args}
        self.output_specs: dict[str, tf.TensorSpec] = dict(function.structured_outputs)

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        missing = set(self.input_specs) - set(inputs)
        unknown = set(inputs) - set(self.input_specs)
        if missing or unknown:
            raise ValueError(f"inputs must be {sorted(self.input_specs)}; missing {sorted(missing)}, "
                             f"unknown {sorted(unknown)}")
        tensors = {name: tf.convert_to_tensor(value, dtype=self.input_specs[name].dtype)
                   for name, value in inputs.items()}
        if self._positional:
            outputs = self.function(*(tensors[name] for name in self._positional))
        else:
            outputs = self.function(**tensors)
        return {name: value.numpy() for name, value in outputs.items()}

    def signature_def(self) -> meta_graph_pb2.SignatureDef:
        """The SignatureDef TF Serving would report for this signature."""
        signature = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
        for target, specs in ((signature.inputs, self.input_specs), (signature.outputs, self.output_specs)):
            for name, spec in specs.items():
                target[name].name = f"{name}:0"
                target[name].dtype = spec.dtype.as_datatype_enum
                target[name].tensor_shape.CopyFrom(spec.shape.as_proto())
        return signature


def load_saved_model(path: str | Path, signature: str = SERVING_SIGNATURE) -> SignatureRunner:
    """The named signature of the SavedModel in `path`."""
    module = tf.saved_model.load(str(path))
    if signature not in module.signatures:
        raise ValueError(f"{path}: no signature {signature!r} (has {sorted(module.signatures)})")
    return SignatureRunner(module.signatures[signature], keep_alive=module)
