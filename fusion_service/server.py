"""Fusion over gRPC: check embedding sizes against the model, batch the model call, answer top-k."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from common.errors import InvalidInput
from common.model_service import BatchedModelService, served_review_threshold, served_version
from common.runtime import RuntimeConfig
from common.scores import answer_scores, resolve_top_k
from common.services import FUSION_SERVICE
from common.settings import ModelServiceSettings, metrics_port_field, port_field
from common.timing import StageTimer
from fusion_service.model import FusionModel
from rakuten.v1 import fusion_pb2, fusion_pb2_grpc

SERVICE_NAME = fusion_pb2.DESCRIPTOR.services_by_name["Fusion"].full_name


class FusionServiceSettings(ModelServiceSettings):
    port: int = port_field(FUSION_SERVICE.port)
    metrics_port: int = metrics_port_field(FUSION_SERVICE.metrics_port)
    model_name: str = Field("fusion", description="bundle folder under models_dir")


def embedding_array(field: str, values, expected: int) -> np.ndarray:
    """The embedding as float32, if it has the model's size and only finite values."""
    if len(values) != expected:
        raise InvalidInput.at(field, f"{len(values)} values, the model expects {expected}")
    array = np.asarray(values, dtype=np.float32)
    if not np.isfinite(array).all():
        raise InvalidInput.at(field, "holds NaN or infinite values")
    return array


class FusionService(BatchedModelService[tuple[np.ndarray, np.ndarray], np.ndarray], fusion_pb2_grpc.FusionServicer):
    domain_service_names = (SERVICE_NAME,)
    add_servicer = staticmethod(fusion_pb2_grpc.add_FusionServicer_to_server)

    def __init__(self, settings: FusionServiceSettings):
        runtime = RuntimeConfig.from_settings(settings)
        super().__init__(settings, lambda bundle: FusionModel(bundle, runtime))

    async def Fuse(self, request: fusion_pb2.FuseRequest, context) -> fusion_pb2.FuseResponse:
        timer = StageTimer()
        self.check_item_count("inputs", len(request.inputs))
        bundle, model = self.repository.current()
        k = resolve_top_k(request.top_k, self.settings.default_top_k, len(bundle.labels), request.all_classes)
        pairs = [(embedding_array(f"inputs[{i}].text_embedding", item.text_embedding, model.text_dim),
                  embedding_array(f"inputs[{i}].image_embedding", item.image_embedding, model.image_dim))
                 for i, item in enumerate(request.inputs)]
        with timer.stage("model"):
            outputs = await self.predict(pairs)
        response = fusion_pb2.FuseResponse()
        for i, (used, probabilities) in enumerate(outputs):
            if not np.isfinite(probabilities).all():  # finite inputs, e.g. 3e38, can still overflow float32
                raise InvalidInput.at(f"inputs[{i}]", "the model's scores overflow for these embedding values "
                                      "(far outside what the encoders produce)")
            response.results.add().top_k.extend(answer_scores(probabilities, used, k))
        response.model.CopyFrom(served_version(outputs))
        response.review_threshold = served_review_threshold(outputs)
        response.timings.extend(timer.protos())
        return response
