"""One classification call: text and image stages concurrently, then fusion, then the answers.

The text stage gets the products with text, the image stage those with an image, each as one
batched call under the caller's deadline. Products with both go to fusion. What each product
gets is answered by `gateway.degradation.decide`: a stage that fails degrades the products that
needed it to the other modality (marked, with the reason); when the fusion service fails, late
fusion in the gateway answers (marked). Only a product that no modality can answer fails the
call, with UNAVAILABLE naming the product and the reasons. A stage's refusal is the caller's
error only when its status details (BadRequest) name one of the caller's items, never by its
message; a refusal naming none, such as a full queue (ErrorInfo QUEUE_FULL), degrades.
`classify_each` is the same for a stream: each product gets its answer or its own error.
Each answer `needs_review` when its top score is below the review threshold of the model that
produced its scores: the text, image or fusion service's (they send their bundle's), or for late
fusion the gateway's `late_review_threshold` (recorded in the fusion bundle).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Sequence

import grpc

from common.error_details import field_item
from common.errors import DeadlineExceeded, InvalidInput, QueueFull, ServiceError, TooLarge, Unavailable
from common.scores import needs_review
from common.validation import check_text_field
from gateway import metrics
from gateway.backends import CallerError, StageOutcome, call_stage
from gateway.degradation import Answer, FusionPolicy, Scored, StageResult, decide
from gateway.fusion import ScoreVector
from rakuten.v1 import (classifier_pb2, common_pb2, fusion_pb2, fusion_pb2_grpc, image_pb2, image_pb2_grpc,
                        text_pb2, text_pb2_grpc)

TEXT, IMAGE, FUSION = "text", "image", "fusion"
# The request field that holds a stage's items, and the product field an item's field stands for:
# texts[i].designation is the product's designation, images[i].data its image.
_STAGE_ITEMS = {TEXT: ("texts", lambda rest: rest), IMAGE: ("images", lambda rest: ".image")}


@dataclass(frozen=True)
class Limits:
    max_products: int
    max_designation_chars: int
    max_description_chars: int
    max_image_bytes: int


@dataclass
class Stubs:
    text: text_pb2_grpc.TextEncoderStub
    image: image_pb2_grpc.ImageEncoderStub
    fusion: fusion_pb2_grpc.FusionStub


def batch_names(count: int) -> list[str]:
    """How a batch's messages name its products: products[0], products[1], ..."""
    return [f"products[{index}]" for index in range(count)]


@dataclass
class _Answered:
    classification: classifier_pb2.Classification
    answer: Answer

    def deliver(self) -> classifier_pb2.Classification:
        """The classification, counted in the metrics as it goes to the caller."""
        count_answer(self.answer, self.classification.needs_review)
        return self.classification


def validate_product(name: str, product: classifier_pb2.Product, limits: Limits) -> None:
    """What the gateway can check of one product without a model, with messages naming `name`."""
    if not product.designation.strip() and not product.description.strip() and not product.image:
        raise InvalidInput.at(name, "designation, description and image are all empty")
    check_text_field(f"{name}.designation", product.designation, limits.max_designation_chars)
    check_text_field(f"{name}.description", product.description, limits.max_description_chars)
    if len(product.image) > limits.max_image_bytes:
        raise TooLarge.at(f"{name}.image", f"{len(product.image)} bytes, the limit is {limits.max_image_bytes}")


def validate(products: Sequence[classifier_pb2.Product], limits: Limits) -> None:
    """A batch's checks, with messages naming products[i]."""
    if not products:
        raise InvalidInput.at("products", "empty batch, send at least one product")
    if len(products) > limits.max_products:
        raise TooLarge.at("products", f"{len(products)} products, the limit is {limits.max_products} per call")
    for index, (name, product) in enumerate(zip(batch_names(len(products)), products)):
        try:
            validate_product(name, product, limits)
        except ServiceError as error:
            error.item = index
            raise


def has_text(product: classifier_pb2.Product) -> bool:
    return bool(product.designation.strip() or product.description.strip())


def _caller_error(error: CallerError, positions: list[int], names: Sequence[str]) -> ServiceError | None:
    """The caller's error when the stage's BadRequest names one of its items: `images[2].data`
    becomes `products[5].image` (the product's name), with the stage's status and the product's
    position as its item. None when the refusal is the stage's own trouble and the answer
    degrades: a full queue (ErrorInfo QUEUE_FULL), or a RESOURCE_EXHAUSTED naming no item.
    An INVALID_ARGUMENT naming no item fails the call. Decided on the details, never the message."""
    status = error.status
    if status.reason == QueueFull.reason:
        return None
    too_large = status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    collection, product_field = _STAGE_ITEMS[error.stage]
    for violation in status.field_violations:
        item = field_item(violation.field, collection)
        if item is not None and item[0] < len(positions):
            product = positions[item[0]]
            return (TooLarge if too_large else InvalidInput).at(
                names[product] + product_field(item[1]), violation.description, product)
    return None if too_large else InvalidInput(f"{error.stage}: {status.message}")


def count_answer(answer: Answer, review: bool) -> None:
    """What was served, for the monitoring: the answer's modalities and top class, how sure it is,
    whether it needs review, and why it is degraded (gateway/metrics.py)."""
    modalities = "+".join(common_pb2.Modality.Name(m)[9:].lower() for m in answer.modalities)
    code, probability = answer.scored.scores.best()
    metrics.know_codes(answer.scored.scores.codes)
    metrics.ANSWERS.labels(modalities, str(code)).inc()
    metrics.TOP_PROBABILITY.labels(modalities).observe(probability)
    if review:
        metrics.NEEDS_REVIEW.labels(modalities).inc()
    for degradation in answer.degradations:
        metrics.DEGRADED.labels(degradation.reason.value).inc()


def _stage_result(outcome: StageOutcome, needed: bool, results: dict, index: int) -> StageResult:
    """What a stage gave the product at `index`: its scores, the stage's failure, or nothing."""
    if index in results:
        return StageResult(Scored(ScoreVector(results[index].top_k), outcome.response.review_threshold))
    return StageResult(failure=outcome.failure) if needed else StageResult()


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
            outcome = StageOutcome(stage, failure=error.failure, seconds=error.seconds)
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

        paired = [i for i in range(len(products)) if i in texts and i in images]
        fusion_outcome = await self._fuse(paired, texts, images, deadline)
        fused = dict(zip(paired, fusion_outcome.response.results)) if fusion_outcome.ok else {}
        fusion_needed = set(paired) if fusion_outcome.called else set()
        answers = [decide(_stage_result(text_outcome, i in text_positions, texts, i),
                          _stage_result(image_outcome, i in image_positions, images, i),
                          _stage_result(fusion_outcome, i in fusion_needed, fused, i), self.policy)
                   for i in range(len(products))]
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
            if answer.scored is None:
                reasons = ", ".join(str(d) for d in answer.degradations)
                results.append(unanswerable(f"{names[i]}: no modality could answer: {reasons}", i))
                continue
            scores = answer.scored.scores
            results.append(_Answered(classifier_pb2.Classification(
                needs_review=bool(needs_review(float(scores.values.max()), answer.scored.review_threshold)),
                id=product.id, top_k=scores.top_k(top_ks[i]), modalities=answer.modalities,
                degraded=bool(answer.degradations), degraded_reason=answer.degraded_reason,
                language=texts[i].language if i in texts else "", models=models, timings=timings),
                answer))
        return results

    async def _fuse(self, paired: list[int], texts, images, deadline: float) -> StageOutcome:
        """The fusion service on the products that have both embeddings (in "head" mode); not
        called otherwise (late fusion in `decide`)."""
        if not paired or self.policy.mode != "head":
            return StageOutcome(FUSION)
        request = fusion_pb2.FuseRequest(all_classes=True, inputs=[
            fusion_pb2.FusionInput(text_embedding=texts[i].embedding, image_embedding=images[i].embedding)
            for i in paired])
        return await self._stage(FUSION, self.stubs.fusion.Fuse, request, paired, deadline)
