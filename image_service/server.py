"""ImageEncoder over gRPC: decode in a thread pool, batch the model call across requests, answer."""

from __future__ import annotations

import asyncio

import numpy as np
from pydantic import Field

from common.model_service import BatchedModelService, served_review_threshold, served_version
from common.runtime import RuntimeConfig, node_cpus
from common.scores import answer_scores, resolve_top_k
from common.services import IMAGE_SERVICE
from common.settings import ModelServiceSettings, metrics_port_field, port_field
from common.timing import StageTimer
from image_service.model import ImageModel, ImagePrediction
from image_service.preprocessing import ImageLimits, prepare_image
from rakuten.v1 import image_pb2, image_pb2_grpc

SERVICE_NAME = image_pb2.DESCRIPTOR.services_by_name["ImageEncoder"].full_name


class ImageServiceSettings(ModelServiceSettings):
    port: int = port_field(IMAGE_SERVICE.port)
    metrics_port: int = metrics_port_field(IMAGE_SERVICE.metrics_port)
    model_name: str = Field("image", description="bundle folder under models_dir")
    max_items_per_request: int = Field(64, ge=1, description="most images in one call")
    max_batch_size: int = Field(
        8, ge=1, le=4096,
        description="most images in one model call (on CPU the cost per image grows past 8: make bench)")
    max_image_bytes: int = Field(10 * 1024 * 1024, ge=1, description="largest encoded image accepted")
    max_image_pixels: int = Field(40_000_000, ge=1, description="largest width x height accepted (bomb guard)")
    min_image_side: int = Field(8, ge=1, description="smallest width or height accepted")
    decode_threads: int = Field(0, ge=0, description="threads decoding and resizing images (0: the node's CPUs)")


class ImageService(BatchedModelService[np.ndarray, ImagePrediction], image_pb2_grpc.ImageEncoderServicer):
    domain_service_names = (SERVICE_NAME,)
    add_servicer = staticmethod(image_pb2_grpc.add_ImageEncoderServicer_to_server)

    def __init__(self, settings: ImageServiceSettings):
        runtime = RuntimeConfig.from_settings(settings)
        super().__init__(settings, lambda bundle: ImageModel(bundle, runtime),
                         settings.decode_threads or node_cpus(), "image-decode")
        self.settings: ImageServiceSettings = settings
        self.limits = ImageLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels,
                                  min_side=settings.min_image_side)

    async def _prepare_all(self, images) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        size = self.repository.current()[1].input_shape[0]
        return list(await asyncio.gather(*(
            loop.run_in_executor(self.workers, prepare_image, image.data, f"images[{index}].data",
                                 self.limits, size)
            for index, image in enumerate(images))))

    async def Encode(self, request: image_pb2.EncodeImageRequest, context) -> image_pb2.EncodeImageResponse:
        timer = StageTimer()
        self.check_item_count("images", len(request.images))
        bundle, _ = self.repository.current()
        k = resolve_top_k(request.top_k, self.settings.default_top_k, len(bundle.labels), request.all_classes)
        with timer.stage("decode"), self.batcher.expecting(len(request.images)):
            prepared = await self._prepare_all(request.images)
        with timer.stage("model"):
            outputs = await self.predict(prepared)
        response = image_pb2.EncodeImageResponse()
        for used, prediction in outputs:
            result = response.results.add()
            result.top_k.extend(answer_scores(prediction.probabilities, used, k))
            if not request.omit_embedding:
                result.embedding.extend(prediction.embedding.tolist())
        response.model.CopyFrom(served_version(outputs))
        response.review_threshold = served_review_threshold(outputs)
        response.timings.extend(timer.protos())
        return response
