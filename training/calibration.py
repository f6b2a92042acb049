"""Fitting a bundle's calibration on held-out rows, and measuring it.

Temperature scaling (Guo et al., 2017): one T > 0 minimising the negative log-likelihood of
softmax(log p / T) on rows the model never fitted; it changes confidences, never the predicted
class. The review threshold is the lowest top probability at which the held-out answers it
accepts are still >= `REVIEW_PRECISION` correct. `common.scores.Calibration` applies both.
Reliability is measured as the top-label expected calibration error over 15 equal-width bins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from common.scores import Calibration

REVIEW_PRECISION = 0.95
ECE_BINS = 15


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: sum over equal-width confidence bins of |accuracy - confidence| x share of rows."""
    table = reliability_table(probabilities, labels, bins)
    total = table["count"].sum()
    return float(np.sum(table["count"] * np.abs(table["accuracy"] - table["confidence"])) / max(total, 1))


def ece_noise_floor(probabilities: np.ndarray, draws: int = 50, seed: int = 0) -> float:
    """The mean ECE a perfectly calibrated model with these confidences would show on as many rows
    (labels drawn from its own probabilities): below it, an ECE is sampling noise, not miscalibration."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if not len(probabilities):
        return float("nan")
    rng = np.random.default_rng(seed)
    cumulative = np.cumsum(probabilities / probabilities.sum(axis=1, keepdims=True), axis=1)
    last = probabilities.shape[1] - 1
    return float(np.mean([
        expected_calibration_error(probabilities, np.minimum((rng.random((len(cumulative), 1)) > cumulative).sum(1),
                                                             last))
        for _ in range(draws)]))


def reliability_table(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per confidence bin: rows, mean top probability, accuracy (0 where empty); `edges` [bins + 1]."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(which, minlength=bins).astype(float)
    safe = np.maximum(count, 1)
    return {"edges": edges, "count": count,
            "confidence": np.bincount(which, confidence, minlength=bins) / safe,
            "accuracy": np.bincount(which, correct.astype(float), minlength=bins) / safe}


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] minimising the held-out negative log-likelihood of softmax(log p / T)."""
    labels = np.asarray(labels)

    def nll(log_t: float) -> float:
        calibrated = Calibration(float(np.exp(log_t))).apply(probabilities).astype(np.float64)
        return float(-np.mean(np.log(np.clip(calibrated[np.arange(len(labels)), labels], 1e-12, None))))

    found = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(found.x))


def review_threshold(probabilities: np.ndarray, labels: np.ndarray, precision: float = REVIEW_PRECISION) -> float:
    """The lowest top probability t such that the rows with top probability >= t are >= `precision`
    correct (the most rows accepted at that precision); 1.0 (flag everything) when none qualifies."""
    confidence = np.asarray(probabilities).max(axis=1)
    correct = np.asarray(probabilities).argmax(axis=1) == np.asarray(labels)
    order = np.argsort(-confidence, kind="stable")
    confidence, correct = confidence[order], correct[order]
    accepted_precision = np.cumsum(correct) / np.arange(1, len(correct) + 1)
    # A threshold accepts every row tied at its confidence: only prefixes ending before a lower value count.
    ends = np.flatnonzero(np.append(confidence[1:] < confidence[:-1], True))
    good = ends[accepted_precision[ends] >= precision]
    return float(confidence[good[-1]]) if len(good) else 1.0


@dataclass(frozen=True)
class Acceptance:
    """What a review threshold does to some rows: the share accepted and how often those are right."""

    rows: int
    coverage: float
    precision: float  # NaN when nothing is accepted

    def line(self, name: str) -> str:
        kept = "n/a" if np.isnan(self.precision) else f"{self.precision:.3f}"
        return f"{name}: coverage {self.coverage:.3f} (precision of accepted {kept}, n={self.rows})"


def acceptance(probabilities: np.ndarray, labels: np.ndarray, calibration: Calibration) -> Acceptance:
    """Coverage and precision of the answers that do not need review (`probabilities` calibrated)."""
    probabilities = np.asarray(probabilities)
    if not len(probabilities):
        return Acceptance(0, float("nan"), float("nan"))
    accepted = ~calibration.needs_review(probabilities.max(axis=1))
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    precision = float(correct[accepted].mean()) if accepted.any() else float("nan")
    return Acceptance(len(probabilities), float(accepted.mean()), precision)


def fit_calibration(probabilities: np.ndarray, labels: np.ndarray, held_out: str) -> dict[str, Any]:
    """The metadata section for raw held-out `probabilities` and class indices `labels`."""
    temperature = fit_temperature(probabilities, labels)
    calibrated = Calibration(temperature).apply(probabilities)
    threshold = review_threshold(calibrated, labels)
    fitted = Calibration(temperature, threshold)
    kept = acceptance(calibrated, labels, fitted)
    return {
        "method": "temperature scaling of log-probabilities; review below the threshold",
        "temperature": temperature,
        "review_threshold": threshold,
        "review_precision_target": REVIEW_PRECISION,
        "held_out": held_out,
        "held_out_rows": int(len(labels)),
        "held_out_ece_before": round(expected_calibration_error(probabilities, labels), 4),
        "held_out_ece_after": round(expected_calibration_error(calibrated, labels), 4),
        "held_out_coverage": round(kept.coverage, 4),
    }
