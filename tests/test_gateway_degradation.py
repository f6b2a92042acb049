"""The gateway's choice of answer, straight on the pure function: stage outcomes -> answer."""

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.degradation import (BOTH, IMAGE_ONLY, TEXT_ONLY, DegradedReason, FusionPolicy, Scored, StageResult,
                                 decide)
from gateway.fusion import ScoreVector
from rakuten.v1 import common_pb2

CODES = (10, 2583, 2705)


def scored(best: int, threshold: float) -> Scored:
    return Scored(ScoreVector(common_pb2.ClassScore(code=c, name=str(c), score=0.8 if c == best else 0.1)
                              for c in CODES), threshold)


TEXT, IMAGE, FUSED = scored(2583, 0.9), scored(2705, 0.5), scored(10, 0.7)
NONE = StageResult()
DOWN = "stage: UNAVAILABLE: down"
HEAD, LATE = FusionPolicy("head", 0.6, 0.3), FusionPolicy("late", 0.6, 0.3)
TEXT_FAILED, IMAGE_FAILED, FUSION_FAILED = (DegradedReason.TEXT_FAILED, DegradedReason.IMAGE_FAILED,
                                            DegradedReason.FUSION_FAILED)

# (text, image, fusion, policy) -> (best code, review threshold, modalities, reasons); code None: unanswerable
CASES = {
    "fused": ((TEXT, IMAGE, FUSED, HEAD), (10, 0.7, BOTH, [])),
    "fusion failed: late fusion": ((TEXT, IMAGE, DOWN, HEAD), (2583, 0.3, BOTH, [FUSION_FAILED])),
    "late mode: late fusion, not degraded": ((TEXT, IMAGE, NONE, LATE), (2583, 0.3, BOTH, [])),
    "text only": ((TEXT, NONE, NONE, HEAD), (2583, 0.9, TEXT_ONLY, [])),
    "image only": ((NONE, IMAGE, NONE, HEAD), (2705, 0.5, IMAGE_ONLY, [])),
    "image failed: text": ((TEXT, DOWN, NONE, HEAD), (2583, 0.9, TEXT_ONLY, [IMAGE_FAILED])),
    "text failed: image": ((DOWN, IMAGE, NONE, HEAD), (2705, 0.5, IMAGE_ONLY, [TEXT_FAILED])),
    "both failed": ((DOWN, DOWN, NONE, HEAD), (None, None, (), [TEXT_FAILED, IMAGE_FAILED])),
    "text failed, no image sent": ((DOWN, NONE, NONE, HEAD), (None, None, (), [TEXT_FAILED])),
}


def result(stage) -> StageResult:
    if isinstance(stage, Scored):
        return StageResult(stage)
    return StageResult(failure=stage) if isinstance(stage, str) else stage


@pytest.mark.parametrize("stages, expected", CASES.values(), ids=CASES.keys())
def test_stage_outcomes_decide_the_answer(stages, expected):
    text, image, fusion, policy = stages
    code, threshold, modalities, reasons = expected
    answer = decide(result(text), result(image), result(fusion), policy)
    assert answer.modalities == modalities
    assert [d.reason for d in answer.degradations] == reasons
    if code is None:
        assert answer.scored is None
    else:
        assert answer.scored.scores.best()[0] == code and answer.scored.review_threshold == threshold


def test_late_fusion_weighs_text_and_image():
    answer = decide(StageResult(TEXT), StageResult(IMAGE), StageResult(failure=DOWN), HEAD)
    by_code = dict(zip(answer.scored.scores.codes, answer.scored.scores.values))
    assert by_code[2583] == pytest.approx(0.6 * 0.8 + 0.4 * 0.1)
    assert by_code[2705] == pytest.approx(0.6 * 0.1 + 0.4 * 0.8)


def test_degraded_reason_reads_each_reason_with_its_stage_failure():
    answer = decide(StageResult(failure="text: INTERNAL: boom"), StageResult(failure="image: UNAVAILABLE: gone"),
                    NONE, HEAD)
    assert answer.degraded_reason == "text unavailable (text: INTERNAL: boom); image unavailable (image: UNAVAILABLE: gone)"
    assert [d.reason.value for d in answer.degradations] == ["text_failed", "image_failed"]


def test_the_gateway_imports_no_model_service():
    """The gateway depends on the serving kit and the protos only, never on a service's modules."""
    code = ("import sys, gateway.server; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('text_service', 'image_service', 'fusion_service')))")
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parents[1])
    assert imported.stdout.strip() == "[]"
