"""TensorFlow Serving's `PredictionService` (Predict, GetModelMetadata) for a service's raw model.

TF Serving clients and tools can call any model service as if it were TF Serving: the request
names the model (the bundle name), optionally a version, and the `serving_default` signature's
inputs as TensorProtos. Calls go straight to the loaded SavedModel, outside the service's own
pre- and post-processing, on whichever runtime the service chose (TensorFlow or ONNX Runtime).

This module imports TensorFlow (TF Serving's protos are built on TensorFlow's): a service
registers it through `common.tf_serving_handler`, which imports it on the first call only.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from common.errors import InvalidInput, NotFound, TooLarge
from common.model_repository import ModelRepository
from common.runtime import Runner
from common.tf_serving_handler import PREDICT_METHOD, SERVING_SIGNATURE


class RunsSavedModel(Protocol):
    runner: Runner


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata over the model a ModelRepository serves."""

    def __init__(self, repository: ModelRepository[RunsSavedModel], max_batch: int):
        self._repository = repository
        self._max_batch = max_batch

    def _resolve(self, model_spec) -> tuple[int, Runner]:
        bundle, model = self._repository.current()
        if model_spec.name != bundle.name:
            raise NotFound(f"model_spec.name: this server serves {bundle.name!r}, not {model_spec.name!r}")
        if model_spec.HasField("version") and model_spec.version.value != bundle.version:
            raise NotFound(f"model_spec.version: {model_spec.version.value} is not loaded; "
                           f"version {bundle.version} is serving")
        if model_spec.version_label:
            raise InvalidInput("model_spec.version_label: labels are not supported; use a version number")
        if model_spec.signature_name not in ("", SERVING_SIGNATURE):
            raise NotFound(f"model_spec.signature_name: only {SERVING_SIGNATURE!r} exists, "
                           f"not {model_spec.signature_name!r}")
        return bundle.version, model.runner

    def _fill_spec(self, spec, version: int) -> None:
        spec.name = self._repository.name
        spec.version.value = version
        spec.signature_name = SERVING_SIGNATURE

    def _inputs(self, request: predict_pb2.PredictRequest, runner: Runner) -> dict[str, np.ndarray]:
        expected = set(runner.input_specs)
        if set(request.inputs) != expected:
            raise InvalidInput(f"inputs: expected exactly {sorted(expected)}, got {sorted(request.inputs)}")
        arrays = {}
        for name, proto in request.inputs.items():
            spec = runner.input_specs[name]
            try:
                dtype = tf.dtypes.as_dtype(proto.dtype)
            except TypeError:
                raise InvalidInput(f"inputs[{name!r}]: unknown dtype enum {proto.dtype}") from None
            if dtype.name != spec.dtype:
                raise InvalidInput(f"inputs[{name!r}]: dtype must be {spec.dtype}, got {dtype.name}")
            # The declared shape is checked before decoding: a few bytes (one value, repeated) can
            # declare billions of elements, which make_ndarray would allocate.
            shape = [dim.size for dim in proto.tensor_shape.dim]
            if proto.tensor_shape.unknown_rank or any(size < 0 for size in shape) \
                    or not spec.is_compatible_with(shape):
                raise InvalidInput(f"inputs[{name!r}]: shape must match {list(spec.shape)}, got {shape}")
            if shape and shape[0] > self._max_batch:
                raise TooLarge(f"inputs[{name!r}]: batch of {shape[0]}, the limit is {self._max_batch}")
            if shape and shape[0] == 0:
                raise InvalidInput(f"inputs[{name!r}]: empty batch")
            try:
                arrays[name] = tf.make_ndarray(proto)
            except Exception as error:
                raise InvalidInput(f"inputs[{name!r}]: not a valid TensorProto ({error})") from error
        batches = {name: array.shape[0] for name, array in arrays.items() if array.ndim}
        if len(set(batches.values())) > 1:  # every input is one row per item: the model would fail
            raise InvalidInput(f"inputs: batch sizes differ ({batches})")
        return arrays

    async def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        version, runner = self._resolve(request.model_spec)
        arrays = self._inputs(request, runner)
        unknown = set(request.output_filter) - set(runner.output_specs)
        if unknown:
            raise InvalidInput(f"output_filter: unknown outputs {sorted(unknown)}; "
                               f"available {sorted(runner.output_specs)}")
        outputs = await asyncio.get_running_loop().run_in_executor(None, lambda: runner(**arrays))
        response = predict_pb2.PredictResponse()
        self._fill_spec(response.model_spec, version)
        for name in request.output_filter or outputs:
            response.outputs[name].CopyFrom(tf.make_tensor_proto(outputs[name]))
        return response

    async def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
                               context) -> get_model_metadata_pb2.GetModelMetadataResponse:
        version, runner = self._resolve(request.model_spec)
        unsupported = set(request.metadata_field) - {"signature_def"}
        if unsupported or not request.metadata_field:
            raise InvalidInput(f"metadata_field: only ['signature_def'] is supported, "
                               f"got {sorted(request.metadata_field)}")
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        self._fill_spec(response.model_spec, version)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        signatures.signature_def[SERVING_SIGNATURE].CopyFrom(signature_def(runner))
        response.metadata["signature_def"].Pack(signatures)
        return response


def signature_def(runner: Runner) -> meta_graph_pb2.SignatureDef:
    """The SignatureDef TF Serving would report for the runner's signature."""
    signature = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
    for target, specs in ((signature.inputs, runner.input_specs), (signature.outputs, runner.output_specs)):
        for name, spec in specs.items():
            target[name].name = f"{name}:0"
            target[name].dtype = tf.dtypes.as_dtype(spec.dtype).as_datatype_enum
            target[name].tensor_shape.CopyFrom(tf.TensorShape(list(spec.shape)).as_proto())
    return signature
