"""Calibration: temperature scaling as services and evaluation apply it, its fitting, the review
threshold and the expected calibration error (all on synthetic scores)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.model_bundle import read_bundle, update_metadata, write_bundle
from common.scores import Calibration, answer_scores
from tests.synthetic_products import LABELS
from training.calibration import (REVIEW_PRECISION, acceptance, expected_calibration_error, fit_calibration,
                                  fit_temperature, review_threshold)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def overconfident(rows: int = 4000, classes: int = 5, factor: float = 3.0, seed: int = 0):
    """Labels drawn from softmax(z); the 'model' answers softmax(factor x z): overconfident by `factor`."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=1.5, size=(rows, classes))
    labels = np.array([rng.choice(classes, p=p) for p in softmax(logits)])
    return softmax(factor * logits), labels


def test_temperature_scaling_is_softmax_of_log_probabilities_over_t():
    logits = np.array([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])
    probabilities = softmax(logits)
    assert np.allclose(Calibration(2.0).apply(probabilities), softmax(logits / 2.0), atol=1e-6)
    assert np.allclose(Calibration(2.0).apply(probabilities[0]), softmax(logits[0] / 2.0), atol=1e-6)
    assert np.array_equal(Calibration().apply(probabilities), probabilities.astype(np.float32))
    # An underflowed 0 keeps a finite logit; the ranking never changes.
    assert np.isfinite(Calibration(0.5).apply(np.array([0.7, 0.3, 0.0]))).all()
    assert (Calibration(4.0).apply(probabilities).argmax(1) == probabilities.argmax(1)).all()


def test_the_fitted_temperature_undoes_overconfidence_and_lowers_the_ece():
    probabilities, labels = overconfident(factor=3.0)
    temperature = fit_temperature(probabilities, labels)
    assert temperature == pytest.approx(3.0, rel=0.15)
    before = expected_calibration_error(probabilities, labels)
    after = expected_calibration_error(Calibration(temperature).apply(probabilities), labels)
    assert before > 0.1 and after < 0.03


def test_ece_of_known_bins():
    # Two rows at confidence 0.9 (one right), two at 0.6 (both right): |0.5 - 0.9| / 2 + |1 - 0.6| / 2.
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 1])
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.4)


def test_review_threshold_accepts_the_most_rows_at_the_precision():
    # Sorted by confidence: right, right, ..., then a wrong one every 4th below 0.7.
    confidence = np.linspace(0.99, 0.4, 60)
    correct = np.ones(60, bool)
    correct[30::4] = False
    probabilities = np.stack([confidence, 1 - confidence], axis=1)
    labels = np.where(correct, 0, 1)
    threshold = review_threshold(probabilities, labels)
    kept = acceptance(probabilities, labels, Calibration(1.0, threshold))
    assert kept.precision >= REVIEW_PRECISION
    # Lowering it to the next row would accept one more and drop below the precision.
    lower = confidence[confidence < threshold].max()
    assert acceptance(probabilities, labels, Calibration(1.0, lower)).precision < REVIEW_PRECISION
    # A model right too rarely gets 1.0: every answer needs review.
    assert review_threshold(np.full((10, 2), 0.5) + [0.1, -0.1], np.ones(10, int)) == 1.0


def test_fit_calibration_section_and_bundle_metadata_round_trip(tmp_path):
    probabilities, labels = overconfident(rows=2000, classes=3, factor=2.0, seed=1)
    section = fit_calibration(probabilities, labels, "synthetic held-out rows")
    assert section["held_out_ece_after"] < section["held_out_ece_before"]
    assert 0 < section["review_threshold"] < 1 and section["held_out_rows"] == 2000

    bundle = write_bundle(tmp_path, "text", lambda folder: None,
                          {"labels": [{"code": label.code, "name": label.name} for label in LABELS]})
    update_metadata(bundle, {"calibration": section})
    stored = read_bundle(tmp_path, "text")
    assert json.loads((stored.path / "metadata.json").read_text())["calibration"] == section
    calibration = Calibration.of(stored.metadata)
    assert (calibration.temperature, calibration.review_threshold) == (section["temperature"],
                                                                        section["review_threshold"])
    # What a service answers: the calibrated scores of the bundle, best first.
    scores = answer_scores(probabilities[0], stored, 3)
    assert [s.score for s in scores] == pytest.approx(sorted(calibration.apply(probabilities[0]), reverse=True))
    assert Calibration.of({}) == Calibration(1.0, 0.0) and not Calibration.of({}).needs_review(0.01)


def test_the_ece_noise_floor_is_what_a_perfectly_calibrated_model_shows():
    from training.calibration import ece_noise_floor

    probabilities, _ = overconfident(rows=300, classes=4, factor=1.0, seed=2)
    floor = ece_noise_floor(probabilities)
    # Labels drawn from the probabilities themselves: calibrated by construction, ECE is noise alone.
    rng = np.random.default_rng(5)
    drawn = np.array([rng.choice(4, p=p) for p in probabilities])
    assert 0.01 < floor < 0.1
    assert expected_calibration_error(probabilities, drawn) < 2.5 * floor
    assert ece_noise_floor(np.tile(probabilities, (20, 1))) < floor / 2  # shrinks with more rows
