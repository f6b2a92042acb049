"""Which scores answer a product, and why the answer is degraded: one pure function, `decide`.

The pipeline calls the stages and hands `decide` what each gave the product: text and image
scores answer alone; both together are fused (the fusion service's scores, or late fusion in the
gateway when that is the mode or when the fusion service failed). A stage that failed for a
product that needed it degrades the answer to the other modality, with a `DegradedReason`
whose value is the metric label and whose description, with the stage's failure, is the
answer's `degraded_reason`. With no scores at all the product cannot be answered.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

from gateway.fusion import ScoreVector, late_fusion
from rakuten.v1 import common_pb2

TEXT_ONLY = (common_pb2.MODALITY_TEXT,)
IMAGE_ONLY = (common_pb2.MODALITY_IMAGE,)
BOTH = (common_pb2.MODALITY_TEXT, common_pb2.MODALITY_IMAGE)


class DegradedReason(Enum):
    """Why an answer is degraded; the value is the `reason` label of gateway_degraded_answers_total."""

    TEXT_FAILED = "text_failed"
    IMAGE_FAILED = "image_failed"
    FUSION_FAILED = "fusion_failed"

    def describe(self, failure: str) -> str:
        """The reason as the answer's `degraded_reason` reads it, with the stage's failure."""
        what = {DegradedReason.TEXT_FAILED: "text unavailable",
                DegradedReason.IMAGE_FAILED: "image unavailable",
                DegradedReason.FUSION_FAILED: "fusion unavailable, late fusion used"}[self]
        return f"{what} ({failure})"


@dataclass(frozen=True)
class FusionPolicy:
    mode: str  # "head": the fusion service; "late": weighted average in the gateway
    late_text_weight: float
    late_review_threshold: float = 0.0  # late fusion's answers below it need review (fusion bundle's)


class Scored(NamedTuple):
    """A model's scores for a product, with that model's review threshold."""

    scores: ScoreVector
    review_threshold: float


@dataclass(frozen=True)
class StageResult:
    """What one stage gave one product: its scores, or the stage's failure; neither when the
    product did not need the stage (no text, no image, not both for fusion, late mode)."""

    scored: Scored | None = None
    failure: str | None = None


@dataclass(frozen=True)
class Degradation:
    reason: DegradedReason
    failure: str

    def __str__(self) -> str:
        return self.reason.describe(self.failure)


@dataclass(frozen=True)
class Answer:
    """A product's scores and modalities (None and () when no modality could answer), and why degraded."""

    scored: Scored | None
    modalities: tuple[int, ...] = ()
    degradations: tuple[Degradation, ...] = ()

    @property
    def degraded_reason(self) -> str:
        return "; ".join(str(d) for d in self.degradations)


def decide(text: StageResult, image: StageResult, fusion: StageResult, policy: FusionPolicy) -> Answer:
    """The answer to one product from what the text, image and fusion stages gave it."""
    degradations = []
    if text.scored is not None and image.scored is not None:
        if fusion.scored is not None:
            return Answer(fusion.scored, BOTH)
        if fusion.failure is not None:
            degradations.append(Degradation(DegradedReason.FUSION_FAILED, fusion.failure))
        fused = late_fusion(text.scored.scores, image.scored.scores, policy.late_text_weight)
        return Answer(Scored(fused, policy.late_review_threshold), BOTH, tuple(degradations))
    if text.failure is not None:
        degradations.append(Degradation(DegradedReason.TEXT_FAILED, text.failure))
    if image.failure is not None:
        degradations.append(Degradation(DegradedReason.IMAGE_FAILED, image.failure))
    if text.scored is not None:
        return Answer(text.scored, TEXT_ONLY, tuple(degradations))
    if image.scored is not None:
        return Answer(image.scored, IMAGE_ONLY, tuple(degradations))
    return Answer(None, (), tuple(degradations))
