"""TextEncoder over gRPC: validate, run the text pipeline, batch the model call, answer."""

from __future__ import annotations

import asyncio

from pydantic import Field

from common.model_service import BatchedModelService, served_review_threshold, served_version
from common.runtime import RuntimeConfig
from common.scores import answer_scores, resolve_top_k
from common.services import TEXT_SERVICE
from common.settings import ModelServiceSettings, metrics_port_field, port_field
from common.timing import StageTimer
from rakuten.v1 import text_pb2, text_pb2_grpc
from text_service.language import DEFAULT_DETECTOR, LanguageDetector, load_detector
from text_service.model import TFIDF, TextEncoderChoice, TextModel, TextPrediction
from text_service.preprocessing import PreprocessedText, preprocess
from common.validation import check_product_text

SERVICE_NAME = text_pb2.DESCRIPTOR.services_by_name["TextEncoder"].full_name


class TextServiceSettings(ModelServiceSettings):
    port: int = port_field(TEXT_SERVICE.port)
    metrics_port: int = metrics_port_field(TEXT_SERVICE.metrics_port)
    model_name: str = Field("text", description="bundle folder under models_dir")
    max_designation_chars: int = Field(1_000, ge=1, description="longest title accepted")
    max_description_chars: int = Field(50_000, ge=1, description="longest description accepted")
    preprocess_threads: int = Field(2, ge=1, description="threads running the text pipeline")
    text_encoder: TextEncoderChoice = Field(
        TFIDF, description="tfidf: the TF-IDF views only; tfidf+e5: also e5 embeddings of the title "
                           "(the bundle must be trained with the e5 tower)")
    language_detector: LanguageDetector = Field(
        DEFAULT_DETECTOR, description="detector of the language answered: py3langid (fast) or langdetect (the study's)")


class TextService(BatchedModelService[str, TextPrediction], text_pb2_grpc.TextEncoderServicer):
    domain_service_names = (SERVICE_NAME,)
    add_servicer = staticmethod(text_pb2_grpc.add_TextEncoderServicer_to_server)

    def __init__(self, settings: TextServiceSettings):
        runtime = RuntimeConfig.from_settings(settings)
        super().__init__(settings, lambda bundle: TextModel(bundle, runtime, settings.text_encoder), settings.preprocess_threads,
                         "text-pipeline")
        self.settings: TextServiceSettings = settings
        load_detector(settings.language_detector)  # its model loads now, not on the first request

    def _preprocess_all(self, texts) -> list[PreprocessedText]:
        return [preprocess(t.designation, t.description, self.settings.language_detector) for t in texts]

    async def Encode(self, request: text_pb2.EncodeTextRequest, context) -> text_pb2.EncodeTextResponse:
        timer = StageTimer()
        self.check_item_count("texts", len(request.texts))
        for index, text in enumerate(request.texts):
            check_product_text(f"texts[{index}]", text.designation, text.description,
                               self.settings.max_designation_chars, self.settings.max_description_chars)
        bundle, _ = self.repository.current()
        k = resolve_top_k(request.top_k, self.settings.default_top_k, len(bundle.labels), request.all_classes)
        with timer.stage("preprocess"), self.batcher.expecting(len(request.texts)):
            prepared = await asyncio.get_running_loop().run_in_executor(
                self.workers, self._preprocess_all, request.texts)
        with timer.stage("model"):
            outputs = await self.predict(prepared)
        response = text_pb2.EncodeTextResponse()
        for prep, (used, prediction) in zip(prepared, outputs):
            result = response.results.add(language=prep.language, normalized_text=prep.text)
            result.top_k.extend(answer_scores(prediction.probabilities, used, k))
            if not request.omit_embedding:
                result.embedding.extend(prediction.embedding.tolist())
        response.model.CopyFrom(served_version(outputs))
        response.review_threshold = served_review_threshold(outputs)
        response.timings.extend(timer.protos())
        return response
