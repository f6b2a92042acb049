"""Runs the `serving_default` signature of a bundle's SavedModel on NumPy arrays.

Every model service and the TF Serving `PredictionService` call models through this one class,
so what a TF Serving client gets is exactly what the service computes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from common.model_bundle import SAVED_MODEL_FILE

SERVING_SIGNATURE = "serving_default"


class SavedModelRunner:
    """A loaded SavedModel signature: named NumPy inputs in, named NumPy outputs out."""

    def __init__(self, path: str | Path, signature: str = SERVING_SIGNATURE):
        self.path = Path(path)
        self._module = tf.saved_model.load(str(self.path))
        if signature not in self._module.signatures:
            raise ValueError(f"{self.path}: no signature {signature!r} (has {sorted(self._module.signatures)})")
        self.signature_name = signature
        self._fn = self._module.signatures[signature]
        _, kwargs = self._fn.structured_input_signature
        self.input_specs: dict[str, tf.TensorSpec] = dict(kwargs)
        self.output_specs: dict[str, tf.TensorSpec] = dict(self._fn.structured_outputs)

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        missing = set(self.input_specs) - set(inputs)
        unknown = set(inputs) - set(self.input_specs)
        if missing or unknown:
            raise ValueError(f"inputs must be {sorted(self.input_specs)}; missing {sorted(missing)}, "
                             f"unknown {sorted(unknown)}")
        tensors = {name: tf.convert_to_tensor(value, dtype=self.input_specs[name].dtype)
                   for name, value in inputs.items()}
        return {name: value.numpy() for name, value in self._fn(**tensors).items()}

    def signature_defs(self) -> dict[str, meta_graph_pb2.SignatureDef]:
        """The callable SignatureDefs as written in saved_model.pb (what TF Serving reports);
        internal ones such as `__saved_model_init_op` are left out."""
        saved = saved_model_pb2.SavedModel()
        saved.ParseFromString((self.path / SAVED_MODEL_FILE).read_bytes())
        return {name: sig for name, sig in saved.meta_graphs[0].signature_def.items() if not name.startswith("__")}
