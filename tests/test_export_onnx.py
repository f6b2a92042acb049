"""ONNX export: a bundle's SavedModel converted, checked within 1e-4 before anything is written,
recorded in metadata.json; old bundles get it from `python -m training.export_onnx`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

from common.model_bundle import read_bundle
from common.runtime import ONNX_FILE, OnnxRunner
from training import export_onnx
from training.fitting import FitConfig
from training.fusion_model import FusionConfig, export_fusion_bundle, train_fusion_model

TEXT_DIM, IMAGE_DIM = 12, 8
LABELS = [(10, "Livre occasion"), (2583, "Autour de la piscine"), (1160, "Carte Collection")]


@pytest.fixture(scope="module")
def fusion_bundle(tmp_path_factory):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 150)
    text = np.abs(rng.normal(size=(150, TEXT_DIM))) + labels[:, None]
    image = np.abs(rng.normal(size=(150, IMAGE_DIM)))
    model, _ = train_fusion_model(text, image, labels, 3, FusionConfig(hidden_units=8), FitConfig(max_epochs=3))
    return export_fusion_bundle(model, tmp_path_factory.mktemp("models"), LABELS, {"metrics": {}})


def embeddings(rows: int, seed: int) -> dict[str, np.ndarray]:
    """Like the encoders' embeddings: non-negative (ReLU), a few units."""
    rng = np.random.default_rng(seed)
    return {"text_embedding": np.abs(rng.normal(0, 2, (rows, TEXT_DIM))).astype(np.float32),
            "image_embedding": np.abs(rng.normal(0, 2, (rows, IMAGE_DIM))).astype(np.float32)}


def test_training_export_writes_onnx_that_matches_the_saved_model(fusion_bundle):
    runtimes = fusion_bundle.metadata["runtimes"]
    assert runtimes["onnx"]["file"] == ONNX_FILE and runtimes["onnx"]["opset"] == 17
    assert runtimes["onnx"]["max_abs_difference"] <= export_onnx.TOLERANCE
    inputs = embeddings(64, seed=7)
    saved = tf.saved_model.load(str(fusion_bundle.path)).signatures["serving_default"]
    expected = saved(**{name: tf.constant(value) for name, value in inputs.items()})["probabilities"].numpy()
    got = OnnxRunner(fusion_bundle.path / ONNX_FILE, intra_op_threads=1)(**inputs)["probabilities"]
    assert np.abs(got - expected).max() <= 1e-4
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_old_bundles_get_onnx_from_the_command(fusion_bundle, tmp_path):
    old = tmp_path / "models" / "fusion" / "1"
    shutil.copytree(fusion_bundle.path, old)
    (old / ONNX_FILE).unlink()
    metadata = json.loads((old / "metadata.json").read_text())
    del metadata["runtimes"]
    (old / "metadata.json").write_text(json.dumps(metadata))
    lines = []
    assert export_onnx.main(["--models", str(tmp_path / "models"), "--names", "fusion"], log=lines.append) == 0
    assert (old / ONNX_FILE).is_file() and "max |SavedModel - ONNX|" in lines[0]
    updated = read_bundle(tmp_path / "models", "fusion", 1).metadata
    assert updated["runtimes"]["onnx"]["max_abs_difference"] <= export_onnx.TOLERANCE
    assert updated["labels"] == metadata["labels"]  # the rest of the metadata is kept


def test_a_conversion_outside_the_tolerance_writes_nothing(fusion_bundle, tmp_path, monkeypatch):
    copy = tmp_path / "1"
    shutil.copytree(fusion_bundle.path, copy)
    (copy / ONNX_FILE).unlink()
    metadata = (copy / "metadata.json").read_text()
    monkeypatch.setattr(export_onnx, "TOLERANCE", 0.0)
    monkeypatch.setattr(export_onnx, "max_abs_difference", lambda *args: 3e-4)
    with pytest.raises(ValueError, match="differ by 0.0003"):
        export_onnx.add_to_bundle(copy)
    assert not (copy / ONNX_FILE).exists()
    assert (copy / "metadata.json").read_text() == metadata
