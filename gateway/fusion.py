"""Score vectors from stage answers, and late fusion: a weighted average of text and image scores.

Late fusion serves when the fusion service fails (marked degraded), or always when it is the
configured mode (it needs no extra call; `make eval-fusion` says which of the two is better).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from rakuten.v1 import common_pb2


class ScoreVector:
    """A full class distribution keyed by code, built from a stage's complete top-k list."""

    def __init__(self, scores: Iterable[common_pb2.ClassScore]):
        ordered = sorted(scores, key=lambda s: s.code)
        self.codes = tuple(s.code for s in ordered)
        self.names = {s.code: s.name for s in ordered}
        self.values = np.array([s.score for s in ordered], dtype=np.float64)

    def best(self) -> tuple[int, float]:
        """The top class's code and score (the first of equals, as top_k orders them)."""
        i = int(np.argmax(self.values))
        return self.codes[i], float(self.values[i])

    def top_k(self, k: int) -> list[common_pb2.ClassScore]:
        best = np.argsort(-self.values, kind="stable")[:k]
        return [common_pb2.ClassScore(code=self.codes[i], name=self.names[self.codes[i]],
                                      score=float(self.values[i])) for i in best]


def late_fusion(text: ScoreVector, image: ScoreVector, text_weight: float) -> ScoreVector:
    """text_weight * text + (1 - text_weight) * image, over the same codes."""
    if text.codes != image.codes:
        raise ValueError(f"text and image models disagree on the classes: {text.codes} vs {image.codes}")
    fused = ScoreVector([])
    fused.codes, fused.names = text.codes, text.names
    fused.values = text_weight * text.values + (1.0 - text_weight) * image.values
    return fused
