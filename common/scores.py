"""Class scores to top-k answers, and the checks every service applies to `top_k`."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from common.errors import InvalidInput
from common.model_bundle import Label
from rakuten.v1 import common_pb2


def resolve_top_k(requested: int, default: int, n_classes: int, all_classes: bool = False) -> int:
    """0 means the server default (capped at the class count); otherwise 1..n_classes."""
    if all_classes:
        return n_classes
    if requested == 0:
        return min(default, n_classes)
    if not 1 <= requested <= n_classes:
        raise InvalidInput(f"top_k: must be between 1 and {n_classes} (or 0 for the default), got {requested}")
    return requested


def top_k_scores(probabilities: np.ndarray, labels: Sequence[Label], k: int) -> list[common_pb2.ClassScore]:
    """The k best classes of one probability vector, best first."""
    best = np.argsort(-probabilities, kind="stable")[:k]
    return [common_pb2.ClassScore(code=labels[i].code, name=labels[i].name, score=float(probabilities[i]))
            for i in best]
