"""The text model in NumPy: the SavedModel's own computation, replicated exactly, without TensorFlow.

TensorFlow spends a fixed ~6 ms per call on the text SavedModel whatever the batch; the work itself
(split, look up, weigh, a sparse product with the first Dense kernel) is well under a millisecond
for a typical product. This runtime does the same steps in NumPy (and a SciPy sparse product), from
what the bundle carries next to its SavedModel:

    text    -> ASCII-whitespace words -> 1..n-grams joined by " "      -> vocabulary index (0: OOV)
    cleaned -> each word as " word " -> character n-grams, never across words -> vocabulary index
            -> counts -> (1 + log tf) * idf -> L2 (x * min(rsqrt(sum x^2), 1e12)), per view
            -> [hidden | wide] = features @ [hidden kernel | wide kernel]   one sparse product (SciPy CSR)
    e5      -> embedding = relu(hidden + hidden bias + e5 @ e5 hidden kernel)
            -> softmax(embedding @ deep kernel + deep bias + wide + e5 @ e5 wide kernel)
    embedding output = [relu hidden, wide logits] (the hidden units alone without a wide path)

which is what `TextVectorization` (split=whitespace: `tf.strings.split`, ASCII white space only;
ngrams joined by a space), `CharNgramsWithinWords` (UTF-8 code points), `SublinearTfIdf`,
`UnitNormalization`, the wide-and-deep head and its optional e5 tower compute (`training.text_model`);
the big TF-IDF kernels may be stored as float16, cast to float32 at load as TensorFlow casts them. Out-of-vocabulary
terms are counted, weighed and normalised in column 0 as TensorFlow does.

The bundle carries the vocabularies in `text_vectorizer.json`; the idf vectors and Dense weights
are read from the SavedModel's own variables file at the offsets metadata.json records in
`runtimes.numpy` (checked equal at export), so the bundle does not hold its biggest tensor twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy.sparse import csr_array

from common.runtime import TensorSpec, check_inputs

#: This runtime's name, and its record's key in metadata.json's `runtimes`.
NUMPY = "numpy"
VECTORIZER_FILE = "text_vectorizer.json"
INPUT_NAMES = ("text", "cleaned")
E5_INPUT = "e5"
OUTPUT_NAMES = ("embedding", "probabilities")
#: The float tensors the runtime reads, in the order of the computation; OPTIONAL_TENSORS may be
#: absent (no wide path, no e5 tower).
TENSORS = ("word_idf", "char_idf", "hidden_kernel", "hidden_bias", "deep_kernel", "deep_bias")
OPTIONAL_TENSORS = ("wide_kernel", "e5_hidden_kernel", "e5_wide_kernel")

_KEY_LIMIT = 2 ** 63
_WHITESPACE_POINTS = (9, 10, 11, 12, 13, 32)  # " \t\n\v\f\r": absl::ascii_isspace, as bytes.split()
_DIRECT_POINTS = 1 << 16  # code points looked up in a table; the others by binary search


def words(text: bytes) -> list[bytes]:
    """`tf.strings.split(text)` on UTF-8: runs of ASCII white space separate words (not U+00A0...)."""
    return text.split()


def word_ngrams(tokens: list[bytes], ngrams: Sequence[int]) -> list[bytes]:
    """`tf.strings.ngrams(tokens, ngrams, separator=" ")`: all n-grams of each width, in order."""
    grams = []
    for n in ngrams:
        if n == 1:
            grams.extend(tokens)
        elif n == 2:  # the common case, without slicing
            grams.extend([first + b" " + second for first, second in zip(tokens, tokens[1:])])
        else:
            grams.extend([b" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)])
    return grams


class CharNgramIndex:
    """Character n-grams inside " word " looked up in a vocabulary, for a whole batch in NumPy.

    Each code point gets a small id (1..A for the vocabulary's alphabet, A+1 for any other, which
    no vocabulary n-gram contains), and an n-gram the integer of its ids in base A+2: no id is 0,
    so n-grams of different lengths never share a key. Keys are looked up by binary search.

    The batch's texts are joined into one code point array with every run of white space as one
    space: a space then ends one word and starts the next, so the n-grams of " word " are exactly
    the windows with no space inside (a space may only be first or last).
    """

    def __init__(self, vocabulary: Sequence[str], ngrams: Sequence[int]):
        self.ngrams = tuple(int(n) for n in ngrams)
        if min(self.ngrams) < 2:  # a 1-gram would count the padding spaces, which words share here
            raise ValueError(f"character n-grams of widths {self.ngrams}: widths start at 2 here")
        characters = sorted({ch for token in vocabulary for ch in token} | {" "})
        self.alphabet = np.array([ord(ch) for ch in characters], dtype=np.int64)
        self.other = len(self.alphabet) + 1
        self.base = len(self.alphabet) + 2
        self.key_space = self.base ** max(self.ngrams)
        if self.key_space >= _KEY_LIMIT:
            raise ValueError(f"{len(self.alphabet)} distinct characters in the vocabulary: "
                             f"{max(self.ngrams)}-gram keys would not fit in 64 bits")
        self._rows_per_chunk = max(1, (_KEY_LIMIT - 1) // self.key_space)
        self._space = characters.index(" ") + 1
        # id of each code point below _DIRECT_POINTS; white space is the word separator, a space
        self._direct = np.full(_DIRECT_POINTS, self.other, dtype=np.int64)
        for index, point in enumerate(self.alphabet.tolist()):
            if point < _DIRECT_POINTS:
                self._direct[point] = index + 1
        self._direct[list(_WHITESPACE_POINTS)] = self._space
        ids = {ch: i + 1 for i, ch in enumerate(characters)}
        keys = []
        for token in vocabulary:
            key = 0
            for ch in token:
                key = key * self.base + ids[ch]
            keys.append(key)
        keys = np.array(keys, dtype=np.int64)
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.indices = np.arange(len(vocabulary), dtype=np.int64)[order]
        if len(np.unique(self.keys)) != len(self.keys):
            raise ValueError("the character vocabulary holds the same n-gram twice")

    def _window_keys(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(row, key) of every character n-gram of every word of `texts`."""
        joined = " " + " ".join(texts) + " "
        points = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        row = np.repeat(np.arange(len(texts) + 1), [len(text) + 1 for text in texts] + [1])
        space = (points == 32) | ((points >= 9) & (points <= 13))  # " \t\n\v\f\r"
        keep = ~space
        keep[1:] |= ~space[:-1]  # the first of each run of white space
        keep[0] = True
        points, space, row = points[keep], space[keep], row[keep]
        ids = self._direct[np.minimum(points, _DIRECT_POINTS - 1)]
        beyond = points >= _DIRECT_POINTS - 1
        if beyond.any():  # emoji and other astral characters (and U+FFFF)
            position = np.searchsorted(self.alphabet, points[beyond])
            known = self.alphabet[np.minimum(position, len(self.alphabet) - 1)] == points[beyond]
            ids[beyond] = np.where(known, position + 1, self.other)
        spaces_before = np.concatenate([[0], np.cumsum(space)])
        rows, keys = [], []
        for n in self.ngrams:
            count = len(ids) - n + 1
            if count <= 0:
                continue
            key = ids[:count].copy()
            for k in range(1, n):
                key = key * self.base + ids[k:k + count]
            inside = spaces_before[n - 1:n - 1 + count] == spaces_before[1:1 + count]  # no inner space
            start = np.arange(count)
            rows.append(row[start + space[:count]][inside])  # the row of the window's first letter
            keys.append(key[inside])
        if not keys:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(rows), np.concatenate(keys)

    def counts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, vocabulary index, count) of the n-grams of each text, sorted by row; OOV n-grams
        are all counted at index 0.

        Distinct (row, n-gram) pairs are counted first and only those looked up: a product's text
        repeats most of its n-grams (" de ", "es "...), so that is a fraction of the windows.
        """
        found = []
        for first in range(0, len(texts), self._rows_per_chunk):  # row * key_space + key fits in int64
            chunk = texts[first:first + self._rows_per_chunk]
            rows, keys = self._window_keys(chunk)
            rows, keys, counts = count_pairs(rows, keys, self.key_space)
            position = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
            known = self.keys[position] == keys
            oov = np.bincount(rows[~known], weights=counts[~known], minlength=len(chunk)).astype(np.int64)
            oov_rows = np.flatnonzero(oov)
            rows = np.concatenate([rows[known], oov_rows])
            order = np.argsort(rows, kind="stable")  # rows were sorted but for the OOV ones appended
            found.append((rows[order] + first,
                          np.concatenate([self.indices[position[known]], np.zeros_like(oov_rows)])[order],
                          np.concatenate([counts[known], oov[oov_rows]])[order]))
        return tuple(np.concatenate(parts) for parts in zip(*found))


def count_pairs(rows: np.ndarray, columns: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (row, column) pairs, sorted, and how often each occurs (columns < `width`)."""
    # stable: a merge sort, which finds the runs of ascending rows (twice as fast as quicksort here)
    combined = np.sort(rows * width + columns, kind="stable")
    first = np.flatnonzero(np.concatenate(([len(combined) > 0], combined[1:] != combined[:-1])))
    rows, columns = np.divmod(combined[first], width)
    return rows, columns, np.diff(np.append(first, len(combined)))


def _sublinear_l2(rows: np.ndarray, counts: np.ndarray, idf: np.ndarray, batch: int) -> np.ndarray:
    """(1 + log tf) * idf of each (row, column) count, each row scaled to unit L2 norm as
    `UnitNormalization` does: x * min(rsqrt(sum x^2), 1e12)."""
    weights = (np.float32(1.0) + np.log(counts.astype(np.float32))) * idf
    squares = np.bincount(rows, weights=weights * weights, minlength=batch)
    with np.errstate(divide="ignore"):
        inverse_norm = np.minimum(1.0 / np.sqrt(squares), 1e12).astype(np.float32)
    return weights * inverse_norm[rows]


@dataclass
class NumpyTextModel:
    """The text SavedModel's `serving_default` as NumPy: `model(text=..., cleaned=...)`."""

    word_vocabulary: list[str]  # index 0 is the OOV column ("[UNK]")
    word_ngrams: tuple[int, ...]
    char_vocabulary: list[str]
    char_ngrams: tuple[int, ...]
    tensors: dict[str, np.ndarray]  # TENSORS by name, float32

    runtime = NUMPY

    def __post_init__(self):
        self._word_index = {token.encode("utf-8"): index for index, token in enumerate(self.word_vocabulary) if index}
        self._chars = CharNgramIndex(self.char_vocabulary[1:], self.char_ngrams)
        self._chars.indices += 1  # the vocabulary without its OOV entry starts at index 1
        t = {name: np.asarray(value, dtype=np.float32) for name, value in self.tensors.items()}
        self._word_idf, self._char_idf = t["word_idf"], t["char_idf"]
        self._units = int(t["hidden_kernel"].shape[1])
        classes = int(t["deep_kernel"].shape[1])
        # the wide kernel beside the hidden one: one sparse product gives both
        wide = t.get("wide_kernel")
        self._kernel = t["hidden_kernel"] if wide is None else np.hstack([t["hidden_kernel"], wide])
        self._bias = t["hidden_bias"]
        self._out_kernel, self._out_bias = t["deep_kernel"], t["deep_bias"]
        self._e5_hidden, self._e5_wide = t.get("e5_hidden_kernel"), t.get("e5_wide_kernel")
        self._char_offset = len(self.word_vocabulary)
        if len(self._word_idf) != len(self.word_vocabulary) or len(self._char_idf) != len(self.char_vocabulary) \
                or len(self._kernel) != len(self.word_vocabulary) + len(self.char_vocabulary):
            raise ValueError("vocabularies, idf vectors and hidden kernel do not agree in size")
        self.input_specs = {name: TensorSpec(name, "string", (None,)) for name in INPUT_NAMES}
        if self.has_e5:
            self.input_specs[E5_INPUT] = TensorSpec(E5_INPUT, "float32", (None, int(self._e5_hidden.shape[0])))
        self.output_specs = {"embedding": TensorSpec("embedding", "float32", (None, self.embedding_dim)),
                             "probabilities": TensorSpec("probabilities", "float32", (None, classes))}

    @property
    def embedding_dim(self) -> int:
        """The hidden units, and the wide logits beside them when the model has a wide path."""
        return int(self._kernel.shape[1])

    @property
    def has_e5(self) -> bool:
        """Whether the model has the e5 tower (an `e5` input)."""
        return self._e5_hidden is not None

    def _word_counts(self, texts: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, vocabulary index, count) of the word n-grams of each text, sorted by row."""
        rows, columns, index = [], [], self._word_index
        for row, text in enumerate(texts):
            found = [index.get(token, 0) for token in word_ngrams(words(text), self.word_ngrams)]
            rows.extend([row] * len(found))
            columns.extend(found)
        return count_pairs(np.array(rows, dtype=np.int64), np.array(columns, dtype=np.int64),
                           len(self.word_vocabulary))

    def features(self, text: Sequence[bytes], cleaned: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The batch's TF-IDF features, sparse: (row, column, value) of the non-zero entries, sorted
        by row; columns index the concatenation [word vocabulary, character vocabulary]."""
        word_rows, word_columns, word_counts = self._word_counts(text)
        char_rows, char_columns, char_counts = self._chars.counts(cleaned)
        word_values = _sublinear_l2(word_rows, word_counts, self._word_idf[word_columns], len(text))
        char_values = _sublinear_l2(char_rows, char_counts, self._char_idf[char_columns], len(text))
        rows = np.concatenate([word_rows, char_rows])
        order = np.argsort(rows, kind="stable")  # two sorted runs: merged
        return (rows[order], np.concatenate([word_columns, char_columns + self._char_offset])[order],
                np.concatenate([word_values, char_values])[order])

    def __call__(self, **inputs: Sequence[str]) -> dict[str, np.ndarray]:
        """`serving_default`'s outputs for `text=`, `cleaned=` (sequences of str, or bytes) and, for a
        model with the e5 tower, `e5=` ([n, 384] float32; zeros for an absent tower input)."""
        check_inputs(self.input_specs, inputs)
        text, cleaned = inputs["text"], inputs["cleaned"]
        text, cleaned = [_as_bytes(value) for value in text], [_as_str(value) for value in cleaned]
        if len(text) != len(cleaned):
            raise ValueError(f"inputs of different lengths: text {len(text)}, cleaned {len(cleaned)}")
        rows, columns, values = self.features(text, cleaned)
        # the sparse rows times the kernel, each a weighted sum of the kernel rows of its columns
        row_starts = np.searchsorted(rows, np.arange(len(text) + 1))
        product = csr_array((values, columns, row_starts), shape=(len(text), len(self._kernel))) @ self._kernel
        hidden, wide = product[:, :self._units], product[:, self._units:]
        hidden = hidden + self._bias
        e5 = None
        if self.has_e5:
            e5 = np.asarray(inputs[E5_INPUT], dtype=np.float32).reshape(len(text), -1)
            hidden = hidden + e5 @ self._e5_hidden
        embedding = np.maximum(hidden, np.float32(0.0))
        logits = embedding @ self._out_kernel + self._out_bias
        if wide.shape[1]:  # the embedding is the hidden units and the wide logits side by side
            if e5 is not None and self._e5_wide is not None:
                wide = wide + e5 @ self._e5_wide
            logits = logits + wide
            embedding = np.hstack([embedding, wide])
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return {"embedding": embedding, "probabilities": exp / exp.sum(axis=1, keepdims=True)}

    # -- the bundle's files ---------------------------------------------------------------------

    def save_vectorizer(self, folder: Path) -> None:
        spec = {"word": {"ngrams": list(self.word_ngrams), "vocabulary": self.word_vocabulary},
                "char": {"ngrams": list(self.char_ngrams), "vocabulary": self.char_vocabulary}}
        (Path(folder) / VECTORIZER_FILE).write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path, section: dict[str, Any]) -> "NumpyTextModel":
        """The runtime of a bundle folder, from its files and its metadata.json `runtimes.numpy` record."""
        folder = Path(folder)
        spec = json.loads((folder / section["vectorizer"]).read_text(encoding="utf-8"))
        weights = section["weights"]
        tensors = {}
        with open(folder / weights["file"], "rb") as data:
            for name in TENSORS + tuple(n for n in OPTIONAL_TENSORS if n in weights["tensors"]):
                entry = weights["tensors"][name]
                data.seek(entry["offset"])
                count = int(np.prod(entry["shape"]))
                array = np.fromfile(data, dtype=np.dtype(entry["dtype"]).newbyteorder("<"), count=count)
                if array.size != count:
                    raise ValueError(f"{folder / weights['file']}: {name} is cut short")
                tensors[name] = array.astype(np.float32).reshape(entry["shape"])  # float16 kernels widened
        return cls(spec["word"]["vocabulary"], tuple(spec["word"]["ngrams"]),
                   spec["char"]["vocabulary"], tuple(spec["char"]["ngrams"]), tensors)


def _as_bytes(value: str | bytes) -> bytes:
    """The word view is split as TensorFlow does, on the UTF-8 bytes."""
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def _as_str(value: str | bytes) -> str:
    """TF Serving clients send bytes (invalid UTF-8 becomes U+FFFD, as `tf.strings.unicode_split`
    does); the service sends str."""
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def numpy_record(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """A bundle's `runtimes.numpy` record, or None when it does not carry this runtime's files."""
    return (metadata.get("runtimes") or {}).get(NUMPY)
