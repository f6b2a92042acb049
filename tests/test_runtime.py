"""The runtime setting: what `auto` picks, explicit choices refused at start when they cannot run,
thread pools sized from the node, and the ONNX runner's calling convention."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from pydantic import ValidationError

from common import runtime
from common.model_bundle import BundleInfo
from common.runtime import ONNX_FILE, OnnxRunner, RuntimeConfig, RuntimeUnavailable, TensorSpec, node_cpus
from common.settings import ModelServiceSettings, load_settings


def bundle(tmp_path, with_onnx: bool) -> BundleInfo:
    path = tmp_path / "m" / "1"
    path.mkdir(parents=True)
    (path / "metadata.json").write_text(json.dumps({"labels": []}))
    if with_onnx:
        (path / ONNX_FILE).write_bytes(b"")
    return BundleInfo("m", 1, path, {"labels": []})


def without(monkeypatch, missing: str) -> None:
    """Pretend a runtime's package is not installed."""
    real = runtime.installed
    monkeypatch.setattr(runtime, "installed", lambda name: name != missing and real(name))


def test_auto_picks_onnx_when_the_bundle_has_it(tmp_path):
    assert RuntimeConfig("auto").bundle_runtime(bundle(tmp_path, with_onnx=True)) == "onnx"


def test_auto_picks_tensorflow_for_a_bundle_without_onnx(tmp_path):
    assert RuntimeConfig("auto").bundle_runtime(bundle(tmp_path, with_onnx=False)) == "tensorflow"


def test_auto_picks_tensorflow_when_onnxruntime_is_missing(tmp_path, monkeypatch):
    without(monkeypatch, "onnx")
    assert RuntimeConfig("auto").bundle_runtime(bundle(tmp_path, with_onnx=True)) == "tensorflow"


def test_explicit_choices_are_kept(tmp_path):
    assert RuntimeConfig("tensorflow").bundle_runtime(bundle(tmp_path, with_onnx=True)) == "tensorflow"


def test_onnx_for_a_bundle_without_onnx_is_refused(tmp_path):
    with pytest.raises(RuntimeUnavailable, match=f"runtime 'onnx' asked for, but bundle .* has no {ONNX_FILE}"):
        RuntimeConfig("onnx").bundle_runtime(bundle(tmp_path, with_onnx=False))


@pytest.mark.parametrize("choice, package", [("onnx", "onnxruntime"), ("tensorflow", "tensorflow")])
def test_a_runtime_that_is_not_installed_stops_the_settings(monkeypatch, choice, package):
    without(monkeypatch, choice)
    with pytest.raises(ValidationError, match=f"runtime '{choice}' is not available: Python package '{package}'"):
        load_settings(ModelServiceSettings, ["--runtime", choice])
    assert load_settings(ModelServiceSettings, ["--runtime", "auto"]).runtime == "auto"


def test_runtime_and_threads_come_from_flags_and_environment(monkeypatch):
    monkeypatch.setenv("RUNTIME", "tensorflow")
    monkeypatch.setenv("INTRA_OP_THREADS", "3")
    settings = load_settings(ModelServiceSettings, ["--inter-op-threads", "2"])
    config = RuntimeConfig.from_settings(settings)
    assert (config.choice, config.intra_threads, config.inter_threads) == ("tensorflow", 3, 2)
    with pytest.raises(ValidationError, match="runtime"):
        load_settings(ModelServiceSettings, ["--runtime", "tflite"])


def test_thread_pools_are_sized_from_the_node_by_default():
    config = RuntimeConfig()
    assert config.intra_threads == node_cpus() and config.inter_threads == 1
    assert 1 <= node_cpus() <= len(os.sched_getaffinity(0))


def test_a_cgroup_quota_caps_the_cpus(monkeypatch):
    monkeypatch.setattr(runtime, "_cgroup_quota", lambda: 0.5)
    assert node_cpus() == 1


def tiny_model() -> bytes:
    """y = x @ W + b, float32 [None, 3] -> [None, 2], and the argmax as int64."""
    weight = np.arange(6, dtype=np.float32).reshape(3, 2)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"]),
         helper.make_node("ArgMax", ["y"], ["best"], axis=1, keepdims=0)],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2]),
         helper.make_tensor_value_info("best", TensorProto.INT64, ["batch"])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(np.array([1, -1], np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", runtime.ONNX_OPSET)],
                              ir_version=runtime.ONNX_IR_VERSION)
    return model.SerializeToString()


def test_onnx_runner_has_the_signature_runner_convention():
    runner = OnnxRunner(tiny_model(), intra_op_threads=1)
    assert runner.runtime == "onnx" and runner.device == "cpu"
    assert runner.input_specs == {"x": TensorSpec("x", "float32", (None, 3))}
    assert runner.output_specs == {"y": TensorSpec("y", "float32", (None, 2)),
                                   "best": TensorSpec("best", "int64", (None,))}
    outputs = runner(x=np.array([[1, 0, 0], [0, 0, 1]], np.float64))  # converted to the spec's dtype
    np.testing.assert_allclose(outputs["y"], [[1, 0], [5, 4]])
    assert outputs["best"].tolist() == [0, 0]
    with pytest.raises(ValueError, match=r"inputs must be \['x'\]; missing \['x'\], unknown \['z'\]"):
        runner(z=np.zeros((1, 3), np.float32))


def test_onnx_runner_loads_a_file(tmp_path):
    path = tmp_path / ONNX_FILE
    onnx.save_model(onnx.load_from_string(tiny_model()), str(path))
    assert set(RuntimeConfig(intra_op_threads=1).onnx_runner(path)(x=np.zeros((4, 3), np.float32))) == {"y", "best"}


def test_tensor_spec_shapes():
    spec = TensorSpec("image", "uint8", (None, 224, 224, 3))
    assert spec.is_compatible_with([7, 224, 224, 3])
    assert not spec.is_compatible_with([7, 10, 10, 3]) and not spec.is_compatible_with([224, 224, 3])
    assert TensorSpec("text", "string", (None,)).numpy_dtype == np.dtype(object)
