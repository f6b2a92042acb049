"""The Open Inference Protocol (KServe v2, Triton's gRPC API) for a service's raw model.

Triton's and KServe's clients and tools (tritonclient, perf_analyzer-style load generators) call
any model service as if it were Triton: `inference.GRPCInferenceService` with the bundle name as
the model name and the serving version as its version. ModelInfer runs the model's runner (the
one the domain API uses) on the named input tensors, sent as typed `contents` or as
`raw_input_contents`; the answer comes back the same way. Like TF Serving's Predict, it calls the
runner directly in a thread, not through the service's batcher: the batcher's items are each
service's domain items (prepared texts, decoded images), while a v2 request is a batch already.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import math
import struct
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from common.errors import InvalidInput, NotFound, TooLarge
from common.model_repository import ModelRepository
from common.runtime import Runner, TensorSpec
from rakuten.kserve import grpc_predict_v2_pb2 as pb, grpc_predict_v2_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVER_NAME = "rakuten-classifier"


class RunsModel(Protocol):
    """A served model: its `runner` (`common.runtime.Runner`) may name its `platform` in Triton's
    words (e.g. "onnxruntime_onnx"); "tensorflow" otherwise."""

    runner: Runner


@dataclass(frozen=True)
class Datatype:
    """A v2 datatype: its NumPy type (object for BYTES) and its InferTensorContents field (None:
    raw only)."""

    name: str
    numpy: np.dtype
    field: str | None


DATATYPES = {d.name: d for d in (
    Datatype("BOOL", np.dtype(np.bool_), "bool_contents"),
    Datatype("UINT8", np.dtype(np.uint8), "uint_contents"),
    Datatype("UINT16", np.dtype(np.uint16), "uint_contents"),
    Datatype("UINT32", np.dtype(np.uint32), "uint_contents"),
    Datatype("UINT64", np.dtype(np.uint64), "uint64_contents"),
    Datatype("INT8", np.dtype(np.int8), "int_contents"),
    Datatype("INT16", np.dtype(np.int16), "int_contents"),
    Datatype("INT32", np.dtype(np.int32), "int_contents"),
    Datatype("INT64", np.dtype(np.int64), "int64_contents"),
    Datatype("FP16", np.dtype(np.float16), None),
    Datatype("FP32", np.dtype(np.float32), "fp32_contents"),
    Datatype("FP64", np.dtype(np.float64), "fp64_contents"),
    Datatype("BYTES", np.dtype(object), "bytes_contents"),
)}
_BY_NUMPY = {d.numpy: d for d in DATATYPES.values() if d.name != "BYTES"}
_CONTENT_FIELDS = [field.name for field in pb.InferTensorContents.DESCRIPTOR.fields]
_LENGTH = struct.Struct("<I")


def datatype_of(spec: TensorSpec) -> Datatype:
    """The v2 datatype of a tensor spec (TF's dtype name: "string" is BYTES)."""
    if spec.dtype == "string":
        return DATATYPES["BYTES"]
    try:
        return _BY_NUMPY[spec.numpy_dtype]
    except (KeyError, TypeError):
        raise TypeError(f"{spec.dtype} has no Open Inference Protocol datatype") from None


def shape_of(spec: TensorSpec) -> list[int]:
    """The metadata shape: -1 for a dimension of any size."""
    return [-1 if size is None else size for size in spec.shape]


def split_bytes(raw: bytes, count: int, where: str) -> list[bytes]:
    """BYTES elements from their raw form: each a 4-byte little-endian length, then the bytes."""
    items, offset = [], 0
    while offset < len(raw) and len(items) < count:
        if offset + _LENGTH.size > len(raw):
            raise InvalidInput(f"{where}: raw BYTES element {len(items)} is cut inside its length prefix")
        (size,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + size > len(raw):
            raise InvalidInput(f"{where}: raw BYTES element {len(items)} declares {size} bytes, "
                               f"{len(raw) - offset} remain")
        items.append(bytes(raw[offset:offset + size]))
        offset += size
    if len(items) != count or offset != len(raw):
        raise InvalidInput(f"{where}: raw BYTES hold {len(items)} elements"
                           f"{' and more bytes' if offset != len(raw) else ''}; the shape needs {count}")
    return items


def bytes_items(array: np.ndarray) -> list[bytes]:
    """A BYTES tensor's elements, row-major (str encoded as UTF-8)."""
    return [value if isinstance(value, bytes) else str(value).encode() for value in array.ravel()]


def join_bytes(array: np.ndarray) -> bytes:
    """BYTES elements in their raw form."""
    return b"".join(_LENGTH.pack(len(item)) + item for item in bytes_items(array))


def decode_tensor(where: str, datatype: Datatype, shape: list[int], contents: pb.InferTensorContents | None,
                  raw: bytes | None) -> np.ndarray:
    """An input tensor as a NumPy array, from its raw bytes or its typed contents; the shape was
    checked first, so no size declared here allocates more than the request's bytes."""
    count = math.prod(shape)
    if raw is not None:
        if datatype.name == "BYTES":
            return np.array(split_bytes(raw, count, where), dtype=object).reshape(shape)
        expected = count * datatype.numpy.itemsize
        if len(raw) != expected:
            raise InvalidInput(f"{where}: {len(raw)} raw bytes, a {datatype.name} tensor of shape {shape} "
                               f"takes {expected}")
        return np.frombuffer(raw, dtype=datatype.numpy.newbyteorder("<")).astype(datatype.numpy).reshape(shape)
    if datatype.field is None:
        raise InvalidInput(f"{where}: {datatype.name} has no typed contents; send it in raw_input_contents")
    for name in _CONTENT_FIELDS:
        if name != datatype.field and contents is not None and len(getattr(contents, name)):
            raise InvalidInput(f"{where}: contents.{name} is set; a {datatype.name} tensor's values go in "
                               f"contents.{datatype.field}")
    values = getattr(contents, datatype.field) if contents is not None else []
    if len(values) != count:
        raise InvalidInput(f"{where}: {len(values)} values in contents.{datatype.field}, shape {shape} "
                           f"holds {count}")
    if datatype.name == "BYTES":
        return np.array(list(values), dtype=object).reshape(shape)
    wide = np.asarray(list(values))
    array = wide.astype(datatype.numpy)
    if datatype.numpy.kind in "iu" and not np.array_equal(array, wide):  # uint8 travels in uint32s
        raise InvalidInput(f"{where}: values outside the {datatype.name} range")
    return array.reshape(shape)


def encode_tensor(tensor, array: np.ndarray, datatype: Datatype, raw: bool) -> bytes | None:
    """Fill an output tensor's datatype, shape and typed contents; with `raw`, return its bytes instead
    of typed contents."""
    tensor.datatype = datatype.name
    tensor.shape.extend(array.shape)
    if datatype.name == "BYTES":
        if raw:
            return join_bytes(array)
        tensor.contents.bytes_contents.extend(bytes_items(array))
        return None
    array = np.asarray(array, dtype=datatype.numpy)
    if raw:
        return array.astype(datatype.numpy.newbyteorder("<")).tobytes()
    getattr(tensor.contents, datatype.field).extend(array.ravel().tolist())
    return None


def _refuse_parameters(where: str, parameters) -> None:
    """No parameter is supported (classification, shared memory, sequences): refused, not ignored."""
    if parameters:
        raise InvalidInput(f"{where}: parameters {sorted(parameters)} are not supported")


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The v2 API over the model a ModelRepository serves."""

    def __init__(self, repository: ModelRepository[RunsModel], max_batch: int):
        self._repository = repository
        self._max_batch = max_batch

    def _check_name(self, field: str, name: str) -> None:
        if name != self._repository.name:
            raise NotFound(f"{field}: this server serves {self._repository.name!r}, not {name!r}")

    def _resolve(self, name_field: str, name: str, version_field: str, version: str) -> tuple[int, Runner]:
        """The serving version and its runner; UNAVAILABLE while loading, NOT_FOUND if not served."""
        self._check_name(name_field, name)
        bundle, model = self._repository.current()
        if version and version != str(bundle.version):
            raise NotFound(f"{version_field}: {version!r} is not loaded; version {bundle.version} is serving")
        return bundle.version, model.runner

    async def ServerLive(self, request, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._repository.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest, context) -> pb.ModelReadyResponse:
        """False while loading, and for a version other than the one serving (a newer one may come)."""
        self._check_name("name", request.name)
        if not self._repository.ready:
            return pb.ModelReadyResponse(ready=False)
        bundle, _ = self._repository.current()
        return pb.ModelReadyResponse(ready=request.version in ("", str(bundle.version)))

    async def ServerMetadata(self, request, context) -> pb.ServerMetadataResponse:
        try:
            version = importlib.metadata.version(SERVER_NAME)
        except importlib.metadata.PackageNotFoundError:  # run from a source tree (the container)
            version = "unknown"
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=version, extensions=[])

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context) -> pb.ModelMetadataResponse:
        version, runner = self._resolve("name", request.name, "version", request.version)
        response = pb.ModelMetadataResponse(name=self._repository.name, versions=[str(version)],
                                            platform=getattr(runner, "platform", "tensorflow"))
        for target, specs in ((response.inputs, runner.input_specs), (response.outputs, runner.output_specs)):
            for name, spec in specs.items():
                target.add(name=name, datatype=datatype_of(spec).name, shape=shape_of(spec))
        return response

    def _inputs(self, request: pb.ModelInferRequest, runner: Runner) -> dict[str, np.ndarray]:
        raw = list(request.raw_input_contents)
        if raw and len(raw) != len(request.inputs):
            raise InvalidInput(f"raw_input_contents: {len(raw)} entries for {len(request.inputs)} inputs")
        arrays: dict[str, np.ndarray] = {}
        for index, tensor in enumerate(request.inputs):
            where = f"inputs[{tensor.name!r}]"
            if tensor.name not in runner.input_specs:
                raise InvalidInput(f"{where}: unknown input; the model takes {sorted(runner.input_specs)}")
            if tensor.name in arrays:
                raise InvalidInput(f"{where}: sent twice")
            _refuse_parameters(where, tensor.parameters)
            spec = runner.input_specs[tensor.name]
            datatype = datatype_of(spec)
            if tensor.datatype != datatype.name:
                raise InvalidInput(f"{where}: datatype must be {datatype.name}, got {tensor.datatype!r}")
            # The declared shape is checked before decoding: a few bytes cannot make it allocate more.
            shape = list(tensor.shape)
            if any(size < 0 for size in shape) or not spec.is_compatible_with(shape):
                raise InvalidInput(f"{where}: shape must match {shape_of(spec)}, got {shape}")
            if shape and shape[0] > self._max_batch:
                raise TooLarge(f"{where}: batch of {shape[0]}, the limit is {self._max_batch}")
            if shape and shape[0] == 0:
                raise InvalidInput(f"{where}: empty batch")
            if raw and tensor.HasField("contents"):
                raise InvalidInput(f"{where}: contents set together with raw_input_contents; send one or the other")
            arrays[tensor.name] = decode_tensor(where, datatype, shape, tensor.contents,
                                                raw[index] if raw else None)
        missing = set(runner.input_specs) - set(arrays)
        if missing:
            raise InvalidInput(f"inputs: missing {sorted(missing)}")
        batches = {name: array.shape[0] for name, array in arrays.items() if array.ndim}
        if len(set(batches.values())) > 1:  # every input is one row per item: the model would fail
            raise InvalidInput(f"inputs: batch sizes differ ({batches})")
        return arrays

    @staticmethod
    def _requested_outputs(request: pb.ModelInferRequest, runner: Runner) -> list[str]:
        names: list[str] = []
        for output in request.outputs:
            where = f"outputs[{output.name!r}]"
            if output.name not in runner.output_specs:
                raise InvalidInput(f"{where}: unknown output; the model gives {sorted(runner.output_specs)}")
            if output.name in names:
                raise InvalidInput(f"{where}: requested twice")
            _refuse_parameters(where, output.parameters)
            names.append(output.name)
        return names or list(runner.output_specs)

    async def ModelInfer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        version, runner = self._resolve("model_name", request.model_name, "model_version", request.model_version)
        _refuse_parameters("parameters", request.parameters)
        arrays = self._inputs(request, runner)
        names = self._requested_outputs(request, runner)
        outputs = await asyncio.get_running_loop().run_in_executor(None, lambda: runner(**arrays))
        datatypes = [datatype_of(runner.output_specs[name]) for name in names]
        # Raw answers raw (as Triton and KServe do), and a datatype without typed contents forces raw.
        raw = bool(request.raw_input_contents) or any(datatype.field is None for datatype in datatypes)
        response = pb.ModelInferResponse(model_name=self._repository.name, model_version=str(version), id=request.id)
        for name, datatype in zip(names, datatypes):
            data = encode_tensor(response.outputs.add(name=name), np.asarray(outputs[name]), datatype, raw)
            if data is not None:
                response.raw_output_contents.append(data)
        return response
