"""Write the NumPy text runtime's files next to a text bundle's SavedModel, read from that SavedModel.

The one code path for both cases: `export_text_bundle` calls `write_numpy_runtime` on the folder it
has just saved, and `python -m training.text_runtime_files models/text/1` (`make text-runtime-files`)
adds the files to a bundle exported before the runtime existed, without retraining.

From the SavedModel it takes the two vocabularies (its lookup tables, exported), and the offsets of
the idf vectors and Dense weights in its variables file (each tensor's bytes found there, so the
runtime reads the very bytes TensorFlow restores). It then checks the NumPy runtime against the
SavedModel on probe texts and refuses to write a bundle where they differ by more than `TOLERANCE`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from common.model_bundle import METADATA_FILE
from common.saved_model import SERVING_SIGNATURE
from text_service import numpy_model
from text_service.numpy_model import NUMPY, VECTORIZER_FILE, NumpyTextModel
from training.export_onnx import runtimes_record

TOLERANCE = 1e-4
OOV_TOKEN = "[UNK]"
#: (text, cleaned) pairs the export checks the runtime on: words, digits and units, repeats,
#: characters outside any vocabulary, odd white space, empty views.
PROBES = [
    ("tabl tres jol dimens cm", "une table tres jolie! +dimensions : 60 x 33 cm"),
    ("livr livr livr", "livre livre  livre\tlivre"),
    ("", ""),
    ("chaussur", "chaussures t.42 \u00a0noir\u2003 ☃ 漢字 über-cool 5x5mm"),
    ("a", "é"),
]


def _vocabulary(table) -> list[str]:
    """A StringLookup table as a list by index; index 0 is the OOV column the table never returns."""
    keys, values = tf.raw_ops.LookupTableExportV2(table_handle=table.resource_handle,
                                                  Tkeys=tf.string, Tvalues=tf.int64)
    keys, values = keys.numpy(), values.numpy()
    if sorted(values.tolist()) != list(range(1, len(values) + 1)):
        raise ValueError("the vocabulary table does not map onto indices 1..n")
    vocabulary = [OOV_TOKEN] * (len(values) + 1)
    for key, value in zip(keys, values):
        vocabulary[int(value)] = key.decode("utf-8")
    return vocabulary


def _layers(module) -> tuple[list, list, dict]:
    """The restored model's lookup tables and idf weights (word branch before character branch),
    and its head's tensors by the runtime's names (`numpy_model.TENSORS`, `OPTIONAL_TENSORS`).

    Restored layers keep no names, so the head's are told apart by kind, in the model's order:
    `StoredDense` (a `kernel`) with a bias is the TF-IDF hidden layer, without one the wide path;
    Dense (a `_kernel`) with a bias is the deep logits; bias-less Dense layers are the e5 tower's,
    into the hidden layer first, then into the wide path.
    """
    operations = list(module.model._operations)
    tables = [op._lookup_layer.lookup_table for op in operations if hasattr(op, "_lookup_layer")]
    idfs = [op.idf for op in operations if hasattr(op, "idf")]
    head, e5 = {}, []
    for op in operations:
        stored, dense, bias = hasattr(op, "kernel"), hasattr(op, "_kernel"), hasattr(op, "bias")
        if stored:
            head["hidden_kernel" if bias else "wide_kernel"] = op.kernel
            if bias:
                head["hidden_bias"] = op.bias
        elif dense and bias:
            head["deep_kernel"], head["deep_bias"] = op._kernel, op.bias
        elif dense:
            e5.append(op._kernel)
    head.update(zip(("e5_hidden_kernel", "e5_wide_kernel"), e5))
    if (len(tables), len(idfs)) != (2, 2) or not set(numpy_model.TENSORS[2:]) <= set(head) or len(e5) > 2:
        raise ValueError(f"not a two-view wide-and-deep text model: {len(tables)} vocabularies, {len(idfs)} idf "
                         f"weightings, head tensors {sorted(head)} and {len(e5)} e5 kernels")
    return tables, idfs, head


def _offsets(data_file: Path, tensors: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Where each tensor's little-endian bytes (float32, or float16 for a half-precision kernel) lie in
    the SavedModel's variables file."""
    data = data_file.read_bytes()
    entries = {}
    for name, array in tensors.items():
        dtype = "float16" if array.dtype == np.float16 else "float32"
        raw = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
        offset = data.find(raw)
        if offset < 0:
            raise ValueError(f"{data_file}: {name} is not stored as raw {dtype}")
        entries[name] = {"offset": offset, "shape": list(array.shape), "dtype": dtype}
    return entries


def write_numpy_runtime(folder: str | Path, word_ngrams: Sequence[int],
                        char_ngrams: Sequence[int]) -> dict[str, Any]:
    """Write the runtime's files into the bundle folder; return its `runtimes` record for metadata.json.

    `word_ngrams`: the word TextVectorization's n-gram widths (1, 2); `char_ngrams`: those of its
    `CharNgramsWithinWords` split (2, 3, 4, 5).
    """
    folder = Path(folder)
    module = tf.saved_model.load(str(folder))
    tables, idfs, head = _layers(module)
    word_vocabulary, char_vocabulary = (_vocabulary(table) for table in tables)
    tensors = {"word_idf": idfs[0].numpy(), "char_idf": idfs[1].numpy(),
               **{name: variable.numpy() for name, variable in head.items()}}
    shards = sorted((folder / "variables").glob("variables.data-*"))
    if len(shards) != 1:
        raise ValueError(f"{folder}: expected one variables shard, found {len(shards)}")
    runtime = NumpyTextModel(word_vocabulary, tuple(word_ngrams), char_vocabulary, tuple(char_ngrams), tensors)
    runtime.save_vectorizer(folder)
    weights_file = str(shards[0].relative_to(folder))
    section = {
        "files": [VECTORIZER_FILE, weights_file],
        "description": "text_service.numpy_model: the SavedModel's computation in NumPy",
        "vectorizer": VECTORIZER_FILE,
        "weights": {"file": weights_file, "tensors": _offsets(shards[0], tensors)},
    }
    loaded = NumpyTextModel.load(folder, section)
    section["max_abs_difference"] = _check(loaded, module.signatures[SERVING_SIGNATURE])
    return {NUMPY: section}


def _check(runtime: NumpyTextModel, signature) -> float:
    """The largest output difference from the SavedModel on `PROBES` (with e5 vectors absent and
    random, for a model with the tower); raises above `TOLERANCE`."""
    text = [pair[0] for pair in PROBES]
    cleaned = [pair[1] for pair in PROBES]
    e5_cases = [None]
    if runtime.has_e5:
        dim = runtime.input_specs[numpy_model.E5_INPUT].shape[1]
        vectors = np.random.default_rng(0).normal(size=(len(PROBES), dim)).astype(np.float32)
        e5_cases = [np.zeros_like(vectors), vectors / np.linalg.norm(vectors, axis=1, keepdims=True)]
    difference = 0.0
    for e5 in e5_cases:
        extra = {} if e5 is None else {numpy_model.E5_INPUT: e5}
        expected = signature(text=tf.constant(text), cleaned=tf.constant(cleaned),
                             **{k: tf.constant(v) for k, v in extra.items()})
        got = runtime(text=text, cleaned=cleaned, **extra)
        difference = max([difference] + [float(np.max(np.abs(got[name] - expected[name].numpy())))
                                         for name in numpy_model.OUTPUT_NAMES])
    if not difference <= TOLERANCE:
        raise ValueError(f"the NumPy text runtime differs from the SavedModel by {difference:.3g} "
                         f"(tolerance {TOLERANCE})")
    return float(f"{difference:.3g}")


def add_to_bundle(folder: str | Path) -> dict[str, Any]:
    """Add the runtime's files to an exported bundle; n-gram widths from its hyperparameters."""
    folder = Path(folder)
    metadata = json.loads((folder / METADATA_FILE).read_text(encoding="utf-8"))
    hyper = metadata.get("hyperparameters") or {}
    if "word_ngrams" not in hyper or "char_ngrams" not in hyper:
        raise ValueError(f"{folder}: metadata.json hyperparameters give no word_ngrams / char_ngrams")
    word = hyper["word_ngrams"]
    word_ngrams = tuple(range(1, word + 1)) if isinstance(word, int) else tuple(word)
    runtimes = metadata.setdefault("runtimes", runtimes_record())
    runtimes.update(write_numpy_runtime(folder, word_ngrams, hyper["char_ngrams"]))
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return runtimes[NUMPY]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="+", help="text bundle version folders, e.g. models/text/1")
    args = parser.parse_args(argv)
    for folder in args.bundle:
        section = add_to_bundle(folder)
        print(f"{folder}: {section['vectorizer']} written, weights read from {section['weights']['file']}, "
              f"max |NumPy - SavedModel| on the probes {section['max_abs_difference']:.2g}")


if __name__ == "__main__":
    main()
