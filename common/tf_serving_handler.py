"""Registers TensorFlow Serving's `PredictionService` without importing TensorFlow up front.

TF Serving's request and response messages are built on TensorFlow's protos
(`tensorflow_serving.apis.predict_pb2` imports `tensorflow.core...`), and importing any of them
runs TensorFlow's `__init__`: about 750 MB of memory. A service that runs its model on ONNX
Runtime needs none of it until a TF Serving client calls. So the service is registered as a
generic handler on raw bytes; its first call imports `common.tf_serving` (and TensorFlow) in a
worker thread, parses the request and hands it to the real servicer. The TF Serving API loads
TensorFlow on first use: that call takes a few seconds longer, later ones do not.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from typing import Awaitable, Callable

import grpc
from google.protobuf.message import DecodeError

from common.errors import InvalidInput
from common.model_bundle import SERVING_SIGNATURE

SERVICE_NAME = "tensorflow.serving.PredictionService"
PREDICT_METHOD = "tensorflow/serving/predict"
#: method -> the name of its request message class in tensorflow_serving.apis.
_METHODS = {"Predict": ("predict_pb2", "PredictRequest"),
            "GetModelMetadata": ("get_model_metadata_pb2", "GetModelMetadataRequest")}

__all__ = ["SERVICE_NAME", "PREDICT_METHOD", "SERVING_SIGNATURE", "LazyPredictionService"]


class LazyPredictionService:
    """TF Serving's PredictionService over a model repository, TensorFlow imported on first call."""

    def __init__(self, repository, max_batch: int):
        self._repository = repository
        self._max_batch = max_batch
        self._servicer = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        """Whether a call has loaded TensorFlow and the servicer yet."""
        return self._servicer is not None

    def _load(self):
        with self._lock:
            if self._servicer is None:
                from common.tf_serving import PredictionServicer

                self._servicer = PredictionServicer(self._repository, self._max_batch)
            return self._servicer

    def _method(self, name: str) -> Callable[[bytes, object], Awaitable[bytes]]:
        module_name, message_name = _METHODS[name]

        async def call(request: bytes, context) -> bytes:
            servicer = self._servicer or await asyncio.get_running_loop().run_in_executor(None, self._load)
            message_type = getattr(importlib.import_module(f"tensorflow_serving.apis.{module_name}"), message_name)
            try:
                message = message_type.FromString(request)
            except DecodeError as error:
                raise InvalidInput(f"request: not a valid {message_name} ({error})") from error
            response = await getattr(servicer, name)(message, context)
            return response.SerializeToString()

        return call

    def register(self, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, {
            name: grpc.unary_unary_rpc_method_handler(self._method(name)) for name in _METHODS}),))
