"""ProductClassifier over gRPC: the public entry point of the classifier."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from common.scores import resolve_top_k
from common.services import FUSION_SERVICE, GATEWAY, IMAGE_SERVICE, TEXT_SERVICE
from common.settings import ServiceSettings, metrics_port_field, port_field
from common.tls import ClientTLS
from gateway.backends import open_channel
from gateway.pipeline import ClassificationPipeline, FusionPolicy, Limits, Stubs
from gateway.stream import ProductStream, StreamPolicy
from rakuten.v1 import classifier_pb2, classifier_pb2_grpc, fusion_pb2_grpc, image_pb2_grpc, text_pb2_grpc

SERVICE_NAME = classifier_pb2.DESCRIPTOR.services_by_name["ProductClassifier"].full_name


class GatewaySettings(ServiceSettings):
    port: int = port_field(GATEWAY.port)
    metrics_port: int = metrics_port_field(GATEWAY.metrics_port)
    text_address: str = Field(TEXT_SERVICE.local_address, description="text_service (dns:///name:port spreads over pods)")
    image_address: str = Field(IMAGE_SERVICE.local_address, description="image_service address")
    fusion_address: str = Field(FUSION_SERVICE.local_address, description="fusion_service address")
    fusion_mode: Literal["head", "late"] = Field(
        "head", description="head: the fusion service; late: weighted average of text and image scores")
    late_fusion_text_weight: float = Field(
        0.5, ge=0.0, le=1.0, description="text weight of late fusion (from make eval-fusion)")
    late_fusion_review_threshold: float = Field(
        0.0, ge=0.0, le=1.0, description="late-fusion answers below this top score need review (make calibrate)")
    default_deadline_seconds: float = Field(10.0, gt=0, description="deadline of calls that set none")
    retry_backoff_ms: float = Field(50.0, ge=0, description="longest wait before the one retry of an UNAVAILABLE stage (gRPC's retry policy)")
    answer_reserve_ms: float = Field(
        50.0, ge=0, description="stages must end this long before the caller's deadline, to degrade and answer")
    max_products_per_request: int = Field(
        64, ge=1, description="most products in one ClassifyBatch (and in one pipeline call of a ClassifyStream)")
    stream_window: int = Field(
        64, ge=1, description="most products a ClassifyStream holds unanswered; it stops reading while full")
    stream_group_delay_ms: float = Field(
        2.0, ge=0, le=1000, description="how long a ClassifyStream group waits for more products to arrive")
    max_designation_chars: int = Field(1_000, ge=1, description="longest title accepted")
    max_description_chars: int = Field(50_000, ge=1, description="longest description accepted")
    max_image_bytes: int = Field(10 * 1024 * 1024, ge=1, description="largest encoded image accepted")
    default_top_k: int = Field(3, ge=1, description="top_k used when a request leaves it at 0")
    n_classes: int = Field(27, ge=1, description="number of product type codes the models know")
    backend_tls_ca_file: Path | None = Field(
        None, description="PEM CA that signed the model services' certificates: call them over TLS")
    backend_tls_cert_file: Path | None = Field(
        None, description="PEM client certificate presented to the model services (mutual TLS)")
    backend_tls_key_file: Path | None = Field(None, description="PEM private key of backend_tls_cert_file")
    backend_tls_server_name: str = Field(
        "", description="name verified in the model services' certificates instead of each address's host")

    def backend_tls(self) -> ClientTLS:
        return ClientTLS(self.backend_tls_ca_file, self.backend_tls_cert_file, self.backend_tls_key_file,
                         self.backend_tls_server_name, naming="backend_tls_{}_file")

    @model_validator(mode="after")
    def _check_backend_tls(self):
        self.backend_tls()
        return self


class Gateway(classifier_pb2_grpc.ProductClassifierServicer):
    service_names = (SERVICE_NAME,)

    def __init__(self, settings: GatewaySettings):
        self.settings = settings
        self._channels = []
        self.pipeline: ClassificationPipeline | None = None

    def register(self, server) -> None:
        classifier_pb2_grpc.add_ProductClassifierServicer_to_server(self, server)

    async def start(self) -> None:
        """Open the channels; the gateway serves even while backends are down (it degrades)."""
        s = self.settings
        tls = s.backend_tls()
        self._channels = [open_channel(a, s.max_message_bytes, tls, s.retry_backoff_ms / 1000.0)
                          for a in (s.text_address, s.image_address, s.fusion_address)]
        text, image, fusion = self._channels
        self.pipeline = ClassificationPipeline(
            Stubs(text_pb2_grpc.TextEncoderStub(text), image_pb2_grpc.ImageEncoderStub(image),
                  fusion_pb2_grpc.FusionStub(fusion)),
            Limits(s.max_products_per_request, s.max_designation_chars, s.max_description_chars,
                   s.max_image_bytes),
            FusionPolicy(s.fusion_mode, s.late_fusion_text_weight, s.late_fusion_review_threshold))

    def stream_policy(self) -> StreamPolicy:
        s = self.settings
        return StreamPolicy(window=s.stream_window, group_size=s.max_products_per_request,
                            group_delay_s=s.stream_group_delay_ms / 1000.0,
                            item_deadline_s=s.default_deadline_seconds, answer_reserve_s=s.answer_reserve_ms / 1000.0)

    async def stop(self) -> None:
        for channel in self._channels:
            await channel.close()

    def _deadline(self, context) -> float:
        """When the stages must be done: the caller's deadline (or the default) less the reserve."""
        remaining = context.time_remaining()
        budget = remaining if remaining is not None else self.settings.default_deadline_seconds
        return time.monotonic() + budget - self.settings.answer_reserve_ms / 1000.0

    def _top_k(self, requested: int) -> int:
        return resolve_top_k(requested, self.settings.default_top_k, self.settings.n_classes)

    async def Classify(self, request: classifier_pb2.ClassifyRequest, context) -> classifier_pb2.ClassifyResponse:
        k = self._top_k(request.top_k)
        results = await self.pipeline.classify([request.product], k, self._deadline(context))
        return classifier_pb2.ClassifyResponse(classification=results[0])

    async def ClassifyBatch(self, request: classifier_pb2.ClassifyBatchRequest,
                            context) -> classifier_pb2.ClassifyBatchResponse:
        k = self._top_k(request.top_k)
        results = await self.pipeline.classify(request.products, k, self._deadline(context))
        return classifier_pb2.ClassifyBatchResponse(classifications=results)

    async def ClassifyStream(self, request_iterator, context):
        remaining = context.time_remaining()
        stream = ProductStream(self.pipeline, self.stream_policy(), self._top_k,
                               None if remaining is None else time.monotonic() + remaining)
        async for response in stream.answers(request_iterator):
            yield response
