"""The part every model service shares: a model repository, a dynamic batcher in front of it,
TF Serving's PredictionService (TensorFlow loaded on its first call) and the Open Inference
Protocol (KServe v2) for the raw model, and the request-size checks. The model runs on the
runtime `--runtime` chose (`common.runtime`).

A subclass adds its gRPC servicer and the domain steps around `predict`.
"""

from __future__ import annotations

import concurrent.futures
from typing import Callable, Generic, Protocol, Sequence, TypeVar

import grpc

from common import open_inference, tf_serving_handler
from common.batching import DynamicBatcher
from common.errors import InvalidInput, TooLarge
from common.model_bundle import BundleInfo
from common.model_repository import ModelRepository
from common.runtime import Runner
from common.scores import Calibration
from common.settings import ModelServiceSettings
from rakuten.kserve import grpc_predict_v2_pb2_grpc
from rakuten.v1 import common_pb2

In = TypeVar("In")
Out = TypeVar("Out")


class BatchModel(Protocol[In, Out]):
    """A loaded, warmed-up model: one output per input, in order."""

    runner: Runner

    def predict(self, items: list[In]) -> Sequence[Out]: ...


class BatchedModelService(Generic[In, Out]):
    """Serves one bundle name; `predict` batches items across concurrent calls."""

    #: The domain gRPC service names; TF Serving's and the v2 protocol's are added by `service_names`.
    domain_service_names: Sequence[str] = ()
    #: The generated `add_<Service>Servicer_to_server` that registers the subclass.
    add_servicer: Callable[[object, grpc.aio.Server], None] | None = None

    def __init__(self, settings: ModelServiceSettings, loader: Callable[[BundleInfo], BatchModel[In, Out]],
                 worker_threads: int = 0, worker_name: str = "worker"):
        self.settings = settings
        #: Threads for the per-item work before the model (text pipeline, image decoding).
        self.workers = (concurrent.futures.ThreadPoolExecutor(worker_threads, thread_name_prefix=worker_name)
                        if worker_threads else None)
        self.repository: ModelRepository[BatchModel[In, Out]] = ModelRepository(
            settings.models_dir, settings.model_name, loader, settings.model_poll_seconds)
        self.batcher: DynamicBatcher[In, tuple[BundleInfo, Out]] = DynamicBatcher(
            settings.model_name, self._run_batch, settings.max_batch_size,
            settings.max_batch_delay_ms / 1000.0, settings.max_queue_size)

    @property
    def service_names(self) -> tuple[str, ...]:
        return (*self.domain_service_names, tf_serving_handler.SERVICE_NAME, open_inference.SERVICE_NAME)

    def register(self, server: grpc.aio.Server) -> None:
        tf_serving_handler.LazyPredictionService(self.repository, self.settings.max_items_per_request).register(server)
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            open_inference.InferenceServicer(self.repository, self.settings.max_items_per_request), server)
        if self.add_servicer is not None:
            type(self).add_servicer(self, server)

    async def start(self) -> None:
        await self.repository.load_latest()
        self.batcher.start()
        self.repository.start_watching()

    async def stop(self) -> None:
        await self.repository.stop()
        await self.batcher.stop()
        if self.workers is not None:
            self.workers.shutdown(wait=False, cancel_futures=True)

    def _run_batch(self, items: list[In]) -> list[tuple[BundleInfo, Out]]:
        bundle, model = self.repository.current()
        return [(bundle, output) for output in model.predict(items)]

    async def predict(self, items: Sequence[In]) -> list[tuple[BundleInfo, Out]]:
        """Outputs with the bundle that computed them (a version swap may happen between calls)."""
        return await self.batcher.submit(items)

    def check_item_count(self, field: str, count: int) -> None:
        """An empty batch is a client mistake; an oversized one exceeds a limit."""
        if count == 0:
            raise InvalidInput.at(field, "empty batch, send at least one item")
        if count > self.settings.max_items_per_request:
            raise TooLarge.at(field, f"{count} items, the limit is {self.settings.max_items_per_request} per call")


def served_version(outputs: Sequence[tuple[BundleInfo, object]]) -> common_pb2.ModelVersion:
    """The version that answered a call (the last item's, should a swap fall inside the call)."""
    bundle = outputs[-1][0]
    return common_pb2.ModelVersion(name=bundle.name, version=bundle.version)


def served_review_threshold(outputs: Sequence[tuple[BundleInfo, object]]) -> float:
    """The review threshold of the version that answered a call (as `served_version`)."""
    return Calibration.of(outputs[-1][0].metadata).review_threshold
