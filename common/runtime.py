"""The inference runtime chosen for the node, and the runner for ONNX Runtime.

TensorFlow/Keras trains and exports every model, and every bundle keeps its SavedModel (TF Serving
and its tools read it). A bundle exported with ONNX also holds the same network as `model.onnx`
(written by `training.export_onnx`, checked against the SavedModel). On a CPU, ONNX Runtime runs
these networks in about half TensorFlow's CPU time and a fraction of its memory (bench/RESULTS.md), so a model
service picks its runtime with one setting (`--runtime`, env RUNTIME):

* `auto` (default): ONNX Runtime when it imports and the bundle has an ONNX file (on the GPU
  through CUDAExecutionProvider when onnxruntime-gpu offers it, else on the CPU); TensorFlow
  otherwise.
* `onnx` or `tensorflow`: that one, or the service refuses to start, saying why.

Every runner has the calling convention of `common.saved_model.SignatureRunner`:
`runner(**inputs: np.ndarray) -> dict[str, np.ndarray]`, with `input_specs` and `output_specs`
(framework-neutral `TensorSpec`s), so models, the batcher and TF Serving's Predict run either.
Thread pools are sized from the CPUs this process may use (affinity and cgroup quota) unless
a setting says otherwise.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, Sequence

import numpy as np

if TYPE_CHECKING:
    from common.model_bundle import BundleInfo

log = logging.getLogger(__name__)

RuntimeChoice = Literal["auto", "onnx", "tensorflow"]
ONNX = "onnx"
TENSORFLOW = "tensorflow"
#: The bundle's network in ONNX, next to its SavedModel.
ONNX_FILE = "model.onnx"
#: Opset and IR version of every ONNX graph here (bundles' and the image backbone's, which are
#: merged into one); onnx writes its newest IR by default, which onnxruntime may not read yet.
ONNX_OPSET = 17
ONNX_IR_VERSION = 8
#: Python module that must import for each runtime.
_MODULES = {ONNX: "onnxruntime", TENSORFLOW: "tensorflow"}
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"

# ONNX tensor element types -> the dtype names TF and metadata.json use.
_ONNX_DTYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(uint8)": "uint8", "tensor(int8)": "int8", "tensor(int32)": "int32", "tensor(int64)": "int64",
    "tensor(string)": "string", "tensor(bool)": "bool",
}


class RuntimeUnavailable(RuntimeError):
    """The runtime asked for cannot run here (not installed, or the bundle lacks its file)."""


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor's dtype (TF's name: float32, uint8, string...) and shape (None: any size)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(object) if self.dtype == "string" else np.dtype(self.dtype)

    def is_compatible_with(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.shape) and all(
            want is None or want == got for want, got in zip(self.shape, shape))


class Runner(Protocol):
    """A network on some runtime: named arrays in, named arrays out."""

    runtime: str
    input_specs: dict[str, TensorSpec]
    output_specs: dict[str, TensorSpec]

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]: ...


def check_inputs(specs: dict[str, TensorSpec], inputs: dict[str, object]) -> None:
    missing = set(specs) - set(inputs)
    unknown = set(inputs) - set(specs)
    if missing or unknown:
        raise ValueError(f"inputs must be {sorted(specs)}; missing {sorted(missing)}, unknown {sorted(unknown)}")


def node_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup CPU quota (v2 or v1)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _cgroup_quota() -> float | None:
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def installed(runtime: str) -> bool:
    """Whether the runtime's Python package is installed (found, not imported: importing TF costs ~750 MB)."""
    return importlib.util.find_spec(_MODULES[runtime]) is not None


def check_choice(choice: RuntimeChoice) -> RuntimeChoice:
    """Refuse an explicit runtime that is not installed, at start-up, with what to do about it."""
    if choice != "auto" and not installed(choice):
        other = TENSORFLOW if choice == ONNX else ONNX
        raise RuntimeUnavailable(
            f"runtime {choice!r} is not available: Python package {_MODULES[choice]!r} is not installed "
            f"(install it, or use --runtime auto or {other})")
    if choice == "auto" and not any(installed(name) for name in _MODULES):
        raise RuntimeUnavailable("no inference runtime installed: install onnxruntime or tensorflow")
    return choice


def onnx_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it (onnxruntime-gpu), always the CPU as fallback."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    return [CUDA_PROVIDER, CPU_PROVIDER] if CUDA_PROVIDER in available else [CPU_PROVIDER]


@dataclass(frozen=True)
class RuntimeConfig:
    """The runtime setting and thread-pool sizes of a model service (0: sized from the node)."""

    choice: RuntimeChoice = "auto"
    intra_op_threads: int = 0
    inter_op_threads: int = 0

    @classmethod
    def from_settings(cls, settings) -> "RuntimeConfig":
        return cls(settings.runtime, settings.intra_op_threads, settings.inter_op_threads)

    @property
    def intra_threads(self) -> int:
        """Threads inside one op (a convolution, a matmul): one per CPU of the node by default."""
        return self.intra_op_threads or node_cpus()

    @property
    def inter_threads(self) -> int:
        """Ops run side by side: these networks are chains, so one by default."""
        return self.inter_op_threads or 1

    def select(self, has_onnx: bool, where: str = "the bundle") -> str:
        """The runtime to use for a model that has (or lacks) an ONNX file."""
        check_choice(self.choice)
        if self.choice == ONNX and not has_onnx:
            raise RuntimeUnavailable(f"runtime 'onnx' asked for, but {where} has no {ONNX_FILE} "
                                     "(python -m training.export_onnx adds it; or use --runtime auto)")
        if self.choice == "auto":
            return ONNX if has_onnx and installed(ONNX) else TENSORFLOW
        return self.choice

    def bundle_runtime(self, bundle: "BundleInfo") -> str:
        return self.select((bundle.path / ONNX_FILE).is_file(), f"bundle {bundle.path}")

    def load_bundle(self, bundle: "BundleInfo") -> Runner:
        """The bundle's `serving_default` network on the selected runtime."""
        runtime = self.bundle_runtime(bundle)
        if runtime == ONNX:
            return self.onnx_runner(bundle.path / ONNX_FILE)
        from common.saved_model import load_saved_model

        self.configure_tensorflow()
        return load_saved_model(bundle.path)

    def onnx_runner(self, model: str | os.PathLike | bytes) -> "OnnxRunner":
        return OnnxRunner(model, self.intra_threads, self.inter_threads)

    def configure_tensorflow(self) -> None:
        """TF's thread pools; settable once per process, before TF runs its first op."""
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(self.intra_threads)
            tf.config.threading.set_inter_op_parallelism_threads(self.inter_threads)
        except RuntimeError:  # TF already ran ops in this process (tests, two models): keep its pools
            log.debug("TensorFlow already initialised; its thread pools stay as they are")


class OnnxRunner:
    """An ONNX model in an ONNX Runtime session, called like a SignatureRunner."""

    runtime = ONNX

    def __init__(self, model: str | os.PathLike | bytes, intra_op_threads: int | None = None,
                 inter_op_threads: int = 1, providers: Sequence[str] | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = intra_op_threads or node_cpus()
        options.inter_op_num_threads = inter_op_threads
        options.execution_mode = (onnxruntime.ExecutionMode.ORT_SEQUENTIAL if inter_op_threads <= 1
                                  else onnxruntime.ExecutionMode.ORT_PARALLEL)
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle pool threads sleep instead of spinning: the service's own decode threads and event
        # loop share these CPUs, and spinning took CPU from them (more images per CPU-second without).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        source = model if isinstance(model, bytes) else str(model)
        self.session = onnxruntime.InferenceSession(source, options,
                                                    providers=list(providers or onnx_providers()))
        self.providers: list[str] = self.session.get_providers()
        self.input_specs = {arg.name: _spec(arg) for arg in self.session.get_inputs()}
        self.output_specs = {arg.name: _spec(arg) for arg in self.session.get_outputs()}
        self._output_names = list(self.output_specs)

    @property
    def device(self) -> str:
        return "gpu" if self.providers and self.providers[0] == CUDA_PROVIDER else "cpu"

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        check_inputs(self.input_specs, inputs)
        feed = {name: np.asarray(value, dtype=self.input_specs[name].numpy_dtype) for name, value in inputs.items()}
        return dict(zip(self._output_names, self.session.run(self._output_names, feed)))


def _spec(arg) -> TensorSpec:
    if arg.type not in _ONNX_DTYPES:
        raise ValueError(f"ONNX {arg.name!r}: element type {arg.type} is not supported")
    shape = tuple(dim if isinstance(dim, int) else None for dim in arg.shape)
    return TensorSpec(arg.name, _ONNX_DTYPES[arg.type], shape)
