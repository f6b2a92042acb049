"""One classification call: text and image stages concurrently, then fusion, then the answers.

The text stage gets the products with text, the image stage those with an image, each as one
batched call under the caller's deadline. Products with both go to fusion. A stage that fails
degrades the products that needed it to the other modality (marked, with the reason); when the
fusion service fails, late fusion in the gateway answers (marked). Only a product that no
modality can answer fails the call, with UNAVAILABLE naming the product and the reasons.
`classify_each` is the same for a stream: each product gets its answer or its own error.
Each answer `needs_review` when its top score is below the review threshold of the model that
produced its scores: the text, image or fusion service's (they send their bundle's), or for late
fusion the gateway's `late_review_threshold` (recorded in the fusion bundle).
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Sequence

import grpc

from common.errors import DeadlineExceeded, InvalidInput, ServiceError, TooLarge, Unavailable
from common.scores import needs_review
from gateway import metrics
from gateway.backends import CallerError, StageOutcome, call_stage
from gateway.fusion import ScoreVector, late_fusion
from rakuten.v1 import (classifier_pb2, common_pb2, fusion_pb2, fusion_pb2_grpc, image_pb2, image_pb2_grpc,
                        text_pb2, text_pb2_grpc)
from common.validation import check_text_field

TEXT, IMAGE, FUSION = "text", "image", "fusion"
_STAGE_FIELD = re.compile(r"^(texts|images|inputs)\[(\d+)\](\.\w+)?")


@dataclass(frozen=True)
class Limits:
    max_products: int
    max_designation_chars: int
    max_description_chars: int
    max_image_bytes: int


@dataclass(frozen=True)
class FusionPolicy:
    mode: str  # "head": the fusion service; "late": weighted average in the gateway
    late_text_weight: float
    late_review_threshold: float = 0.0  # late fusion's answers below it need review (fusion bundle's)


@dataclass
class Stubs:
    text: text_pb2_grpc.TextEncoderStub
    image: image_pb2_grpc.ImageEncoderStub
    fusion: fusion_pb2_grpc.FusionStub


@dataclass
class _Answer:
    scores: ScoreVector | None = None
    review_threshold: float = 0.0  # that of the model whose scores these are
    modalities: list[int] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    reason_labels: list[str] = field(default_factory=list)


def batch_names(count: int) -> list[str]:
    """How a batch's messages name its products: products[0], products[1], ..."""
    return [f"products[{index}]" for index in range(count)]


@dataclass
class _Answered:
    classification: classifier_pb2.Classification
    answer: _Answer

    def deliver(self) -> classifier_pb2.Classification:
        """The classification, counted in the metrics as it goes to the caller."""
        count_answer(self.answer, self.classification.needs_review)
        return self.classification


def validate_product(name: str, product: classifier_pb2.Product, limits: Limits) -> None:
    """What the gateway can check of one product without a model, with messages naming `name`."""
    if not product.designation.strip() and not product.description.strip() and not product.image:
        raise InvalidInput(f"{name}: designation, description and image are all empty")
    check_text_field(f"{name}.designation", product.designation, limits.max_designation_chars)
    check_text_field(f"{name}.description", product.description, limits.max_description_chars)
    if len(product.image) > limits.max_image_bytes:
        raise TooLarge(f"{name}.image: {len(product.image)} bytes, the limit is {limits.max_image_bytes}")


def validate(products: Sequence[classifier_pb2.Product], limits: Limits) -> None:
    """A batch's checks, with messages naming products[i]."""
    if not products:
        raise InvalidInput("products: empty batch, send at least one product")
    if len(products) > limits.max_products:
        raise TooLarge(f"products: {len(products)} products, the limit is {limits.max_products} per call")
    for index, (name, product) in enumerate(zip(batch_names(len(products)), products)):
        try:
            validate_product(name, product, limits)
        except ServiceError as error:
            error.item = index
            raise


def has_text(product: classifier_pb2.Product) -> bool:
    return bool(product.designation.strip() or product.description.strip())


def _caller_error(error: CallerError, positions: list[int], names: Sequence[str]) -> InvalidInput | TooLarge | None:
    """A stage's 'images[2].data: ...' becomes 'products[5].image: ...' (the product's name) for
    the caller, with the stage's status and the product's position as its item. None for a RESOURCE_EXHAUSTED that names no item (the stage's queue is full):
    that is the stage's trouble, and the answer degrades."""
    too_large = error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    match = _STAGE_FIELD.match(error.details)
    if not match:
        return None if too_large else InvalidInput(f"{error.stage}: {error.details}")
    product = positions[int(match.group(2))]
    part = {"texts": "", "images": ".image", "inputs": ""}[match.group(1)]
    if match.group(1) == "texts" and match.group(3):
        part = match.group(3)
    return (TooLarge if too_large else InvalidInput)(f"{names[product]}{part}{error.details[match.end():]}", product)


def count_answer(answer: _Answer, review: bool) -> None:
    """What was served, for the monitoring: the answer's modalities and top class, how sure it is,
    whether it needs review, and why it is degraded (gateway/metrics.py)."""
    modalities = "+".join(common_pb2.Modality.Name(m)[9:].lower() for m in answer.modalities)
    code, probability = answer.scores.best()
    metrics.know_codes(answer.scores.codes)
    metrics.ANSWERS.labels(modalities, str(code)).inc()
    metrics.TOP_PROBABILITY.labels(modalities).observe(probability)
    if review:
        metrics.NEEDS_REVIEW.labels(modalities).inc()
    for label in answer.reason_labels:
        metrics.DEGRADED.labels(label).inc()


class ClassificationPipeline:
    def __init__(self, stubs: Stubs, limits: Limits, policy: FusionPolicy):
        self.stubs = stubs
        self.limits = limits
        self.policy = policy

    async def _stage(self, stage: str, method, request, positions: list[int], deadline: float,
                     names: Sequence[str] = ()) -> StageOutcome:
        if not positions:
            return StageOutcome(stage)
        try:
            outcome = await call_stage(stage, method, request, deadline)
        except CallerError as error:
            # Embeddings come from our own encoders: a refused fusion input is ours, not the caller's.
            refusal = None if stage == FUSION else _caller_error(error, positions, names)
            if refusal is not None:
                raise refusal from None
            outcome = StageOutcome(stage, failure=f"{stage}: {error.code.name}: {error.details}", seconds=error.seconds)
        metrics.STAGE_LATENCY.labels(stage).observe(outcome.seconds)
        return outcome

    async def classify(self, products: Sequence[classifier_pb2.Product], top_k: int,
                       deadline: float) -> list[classifier_pb2.Classification]:
        """A batch: every product answered, or the call fails with the first problem."""
        validate(products, self.limits)
        results = await self._answer(products, [top_k] * len(products), deadline, batch_names(len(products)))
        failed = [result for result in results if isinstance(result, ServiceError)]
        if failed:
            raise type(failed[0])("; ".join(error.message for error in failed))
        return [result.deliver() for result in results]

    async def classify_each(self, products: Sequence[classifier_pb2.Product], top_ks: Sequence[int],
                            deadline: float, names: Sequence[str]) -> list[classifier_pb2.Classification | ServiceError]:
        """A stream's group: each product's answer, or its own error (named `names[i]`) in its place.

        A product that fails validation never reaches the stages; one that a stage refuses is
        answered with that refusal and the others go through the stages again without it.
        """
        results: list[classifier_pb2.Classification | ServiceError | None] = [None] * len(products)
        todo = []
        for index, (name, product) in enumerate(zip(names, products)):
            try:
                validate_product(name, product, self.limits)
                todo.append(index)
            except ServiceError as error:
                results[index] = error
        while todo:
            try:
                answers = await self._answer([products[i] for i in todo], [top_ks[i] for i in todo], deadline,
                                             [names[i] for i in todo])
            except ServiceError as error:
                if error.item is None:  # a refusal naming no product: every product of the call
                    for index in todo:
                        results[index] = error
                    break
                results[todo.pop(error.item)] = error
                continue
            for index, answer in zip(todo, answers):
                results[index] = answer if isinstance(answer, ServiceError) else answer.deliver()
            break
        return results

    async def _answer(self, products: Sequence[classifier_pb2.Product], top_ks: Sequence[int], deadline: float,
                      names: Sequence[str]) -> list[_Answered | ServiceError]:
        """Valid products through the stages: an answer per product, or the Unavailable (or
        DeadlineExceeded) of one that no modality could answer. A stage's refusal of a product's
        input is raised (InvalidInput or TooLarge, with the product's position as its item)."""
        started = time.monotonic()
        text_positions = [i for i, p in enumerate(products) if has_text(p)]
        image_positions = [i for i, p in enumerate(products) if p.image]
        text_request = text_pb2.EncodeTextRequest(all_classes=True, texts=[
            text_pb2.TextInput(designation=products[i].designation, description=products[i].description)
            for i in text_positions])
        image_request = image_pb2.EncodeImageRequest(all_classes=True, images=[
            image_pb2.ImageInput(data=products[i].image) for i in image_positions])
        text_outcome, image_outcome = await asyncio.gather(
            self._stage(TEXT, self.stubs.text.Encode, text_request, text_positions, deadline, names),
            self._stage(IMAGE, self.stubs.image.Encode, image_request, image_positions, deadline, names))
        texts = dict(zip(text_positions, text_outcome.response.results)) if text_outcome.ok else {}
        images = dict(zip(image_positions, image_outcome.response.results)) if image_outcome.ok else {}

        answers = [_Answer() for _ in products]
        paired = [i for i in range(len(products)) if i in texts and i in images]
        fusion_outcome = await self._fuse(paired, texts, images, answers, deadline)
        for i, answer in enumerate(answers):
            if answer.scores is not None:
                continue
            if i in texts:
                answer.scores, answer.modalities = ScoreVector(texts[i].top_k), [common_pb2.MODALITY_TEXT]
                answer.review_threshold = text_outcome.response.review_threshold
            elif i in images:
                answer.scores, answer.modalities = ScoreVector(images[i].top_k), [common_pb2.MODALITY_IMAGE]
                answer.review_threshold = image_outcome.response.review_threshold
            if i in text_positions and i not in texts:
                answer.reasons.append(f"text unavailable ({text_outcome.failure})")
                answer.reason_labels.append("text_failed")
            if i in image_positions and i not in images:
                answer.reasons.append(f"image unavailable ({image_outcome.failure})")
                answer.reason_labels.append("image_failed")
        failed = [o for o in (text_outcome, image_outcome) if o.called and not o.ok]
        unanswerable = DeadlineExceeded if all(o.timed_out for o in failed) else Unavailable

        models = [stage.response.model for stage in (text_outcome, image_outcome, fusion_outcome) if stage.ok]
        total = time.monotonic() - started
        metrics.STAGE_LATENCY.labels("total").observe(total)
        timings = [common_pb2.StageTiming(stage=stage.stage, seconds=stage.seconds)
                   for stage in (text_outcome, image_outcome, fusion_outcome) if stage.called]
        timings.append(common_pb2.StageTiming(stage="total", seconds=total))
        results = []
        for i, (product, answer) in enumerate(zip(products, answers)):
            if answer.scores is None:
                results.append(unanswerable(f"{names[i]}: no modality could answer: {', '.join(answer.reasons)}", i))
                continue
            results.append(_Answered(classifier_pb2.Classification(
                needs_review=bool(needs_review(float(answer.scores.values.max()), answer.review_threshold)),
                id=product.id, top_k=answer.scores.top_k(top_ks[i]), modalities=answer.modalities,
                degraded=bool(answer.reasons), degraded_reason="; ".join(answer.reasons),
                language=texts[i].language if i in texts else "", models=models, timings=timings),
                answer))
        return results

    async def _fuse(self, paired: list[int], texts, images, answers: list[_Answer], deadline: float) -> StageOutcome:
        """Fuse the products that have both embeddings; fall back to late fusion if the service fails."""
        both = [common_pb2.MODALITY_TEXT, common_pb2.MODALITY_IMAGE]
        if not paired:
            return StageOutcome(FUSION)
        outcome = StageOutcome(FUSION)
        if self.policy.mode == "head":
            request = fusion_pb2.FuseRequest(all_classes=True, inputs=[
                fusion_pb2.FusionInput(text_embedding=texts[i].embedding, image_embedding=images[i].embedding)
                for i in paired])
            outcome = await self._stage(FUSION, self.stubs.fusion.Fuse, request, paired, deadline)
            if outcome.ok:
                for i, result in zip(paired, outcome.response.results):
                    answers[i].scores, answers[i].modalities = ScoreVector(result.top_k), both
                    answers[i].review_threshold = outcome.response.review_threshold
                return outcome
        for i in paired:
            answers[i].scores = late_fusion(ScoreVector(texts[i].top_k), ScoreVector(images[i].top_k),
                                            self.policy.late_text_weight)
            answers[i].modalities = both
            answers[i].review_threshold = self.policy.late_review_threshold
            if self.policy.mode == "head":
                answers[i].reasons.append(f"fusion unavailable, late fusion used ({outcome.failure})")
                answers[i].reason_labels.append("fusion_failed")
        return outcome
