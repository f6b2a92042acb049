"""`make eval-*` on any labelled folder: a folder whose rows are all split == val (no train split,
so no baselines) is evaluated through the services' model classes, calibration included."""

from __future__ import annotations

import json
import shutil

import pytest

from common.model_bundle import read_bundle, update_metadata
from tests.synthetic_data import write_data_folder
from training import evaluate_fusion, evaluate_image, evaluate_text

ROWS = 24  # 8 text only, 8 image only, 8 with both


@pytest.fixture(scope="module")
def val_only(tmp_path_factory, synthetic_models):
    root = tmp_path_factory.mktemp("val-only")
    data = write_data_folder(root / "data", rows=ROWS, split="val")
    models = root / "models"
    shutil.copytree(synthetic_models, models)
    # What `make train-fusion` and `make calibrate` record (the synthetic bundles are bare).
    update_metadata(read_bundle(models, "fusion"), {"late_fusion_text_weight": 0.6,
                                                    "calibration": {"temperature": 1.5, "review_threshold": 0.6}})
    update_metadata(read_bundle(models, "text"), {"calibration": {"temperature": 2.0, "review_threshold": 0.5}})
    return root, data, models


@pytest.mark.parametrize("evaluate, name, rows, groups", [
    (evaluate_text, "text", 16, {"all", "text only", "text + image"}),
    (evaluate_image, "image", 16, {"all", "image only", "text + image"}),
    (evaluate_fusion, "fusion", 8, {"all"}),
])
def test_evaluation_runs_on_a_folder_without_a_train_split(val_only, evaluate, name, rows, groups, capsys):
    root, data, models = val_only
    report = root / "reports" / name
    assert evaluate.main(["--data", str(data), "--models", str(models), "--report", str(report),
                          "--cache-dir", str(root / "cache")]) == 0
    printed = capsys.readouterr().out
    assert "ECE (15 bins, top label)" in printed and "coverage" in printed
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["rows"] == rows
    assert not any("baseline" in key or "study head" in key or "linear probe" in key
                   for key in metrics["baselines"]), metrics["baselines"]
    calibration = read_bundle(models, name).metadata.get("calibration", {})
    assert metrics["calibration"]["temperature"] == calibration.get("temperature", 1.0)
    assert set(metrics["calibration"]["coverage"]) == groups
    assert 0 <= metrics["calibration"]["ece_after"] <= 1
    assert (report / "reliability.png").stat().st_size > 0
    assert "## Confidence" in (report / "report.md").read_text()


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
