"""Class scores to top-k answers, the checks every service applies to `top_k`, and calibration:
the one place where a bundle's temperature and review threshold are applied (services and
evaluation alike)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from common.errors import InvalidInput
from common.model_bundle import BundleInfo, Label
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


#: Where a bundle's metadata.json keeps its calibration (written by `python -m training.calibrate`).
CALIBRATION_KEY = "calibration"
_TINY = 1e-12  # probabilities of 0 (float32 underflow) get a finite logit


@dataclass(frozen=True)
class Calibration:
    """What turns a model's raw probabilities into the ones it answers, and when an answer needs review.

    The SavedModel outputs probabilities; temperature scaling needs logits. log p is a logit up
    to a per-row constant, which softmax ignores, so softmax(log p / T) is temperature scaling.
    Evaluation and the services both call `apply`, so the figures are those of the answers.
    `review_threshold`: an answer whose top probability is below it `needs_review`; 0 (a
    bundle never calibrated) flags none.
    """

    temperature: float = 1.0
    review_threshold: float = 0.0

    @classmethod
    def of(cls, metadata: Mapping[str, Any]) -> "Calibration":
        """The calibration recorded in a bundle's metadata; the identity when there is none."""
        section = metadata.get(CALIBRATION_KEY) or {}
        return cls(float(section.get("temperature", 1.0)), float(section.get("review_threshold", 0.0)))

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of one vector [C] or a batch [N, C] (float32)."""
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if self.temperature == 1.0:
            return probabilities.astype(np.float32)
        logits = np.log(np.clip(probabilities, _TINY, None)) / self.temperature
        logits -= logits.max(axis=-1, keepdims=True)
        scaled = np.exp(logits)
        return (scaled / scaled.sum(axis=-1, keepdims=True)).astype(np.float32)

    def needs_review(self, top_probability: float | np.ndarray) -> np.bool_ | np.ndarray:
        return needs_review(top_probability, self.review_threshold)


def needs_review(top_probability: float | np.ndarray, threshold: float) -> np.bool_ | np.ndarray:
    """True where the answer's top (calibrated) probability is below the review threshold."""
    return np.asarray(top_probability) < threshold


def answer_scores(probabilities: np.ndarray, bundle: BundleInfo, k: int) -> list[common_pb2.ClassScore]:
    """What a service answers for one item: the top k of the bundle's calibrated probabilities."""
    return top_k_scores(Calibration.of(bundle.metadata).apply(probabilities), bundle.labels, k)
