"""Evaluation reports shared by the text, image and fusion models.

One call writes `<report_dir>/report.md` (headline F1 figures, a per-class table in the study's
form, a baseline table), `confusion_matrix.png` (row-normalised) and `metrics.json`, so that every
model is judged by the same figures computed the same way (scikit-learn, weighted and macro F1).
With a `CalibrationSummary` it adds the confidence section: ECE before and after the bundle's
calibration, the review threshold's coverage per group, and `reliability.png`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # no display on servers or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support  # noqa: E402

from common.scores import Calibration  # noqa: E402
from training.calibration import (ECE_BINS, REVIEW_PRECISION, Acceptance, acceptance,  # noqa: E402
                                  ece_noise_floor, expected_calibration_error, reliability_table)

REPORT_FILE = "report.md"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
METRICS_FILE = "metrics.json"
RELIABILITY_FILE = "reliability.png"


@dataclass(frozen=True)
class F1Scores:
    weighted: float
    macro: float
    rows: int

    def line(self, name: str) -> str:
        """One printed line, the same in every `make eval-*`."""
        return f"{name}  weighted F1 {self.weighted:.4f}  macro F1 {self.macro:.4f}  (n={self.rows})"


@dataclass(frozen=True)
class ClassScores:
    code: int
    name: str
    support: int
    precision: float
    recall: float
    f1: float


def f1_scores(y_true: Sequence[int], y_pred: Sequence[int], codes: Sequence[int]) -> F1Scores:
    """Weighted and macro F1 over all `codes` (a class never predicted counts as F1 0)."""
    kwargs = {"labels": list(codes), "zero_division": 0}
    return F1Scores(
        weighted=float(f1_score(y_true, y_pred, average="weighted", **kwargs)),
        macro=float(f1_score(y_true, y_pred, average="macro", **kwargs)),
        rows=len(y_true),
    )


def per_class_scores(y_true: Sequence[int], y_pred: Sequence[int],
                     categories: Sequence[tuple[int, str]]) -> list[ClassScores]:
    """Precision, recall, F1 and support for each (code, name), in the given order."""
    codes = [code for code, _ in categories]
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=codes, zero_division=0)
    return [ClassScores(code, name, int(s), float(p), float(r), float(f))
            for (code, name), p, r, f, s in zip(categories, precision, recall, f1, support)]


def plot_confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], codes: Sequence[int],
                          path: Path, title: str) -> None:
    """Row-normalised matrix (each true class sums to 1), so rare classes stay readable."""
    counts = confusion_matrix(y_true, y_pred, labels=list(codes)).astype(float)
    totals = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    size = max(6.0, 0.4 * len(codes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = np.arange(len(codes))
    ax.set_xticks(ticks, [str(c) for c in codes], rotation=90, fontsize=8)
    ax.set_yticks(ticks, [str(c) for c in codes], fontsize=8)
    ax.set_xlabel("predicted prdtypecode")
    ax.set_ylabel("true prdtypecode")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@dataclass(frozen=True)
class CalibrationSummary:
    """How well a model's confidences mean what they say on some labelled rows."""

    calibration: Calibration
    ece_before: float
    ece_after: float
    ece_noise_floor: float  # what a perfectly calibrated model would show on as many rows
    coverage: dict[str, Acceptance]  # group name -> acceptance at the review threshold
    before: dict[str, np.ndarray]    # reliability tables (`training.calibration.reliability_table`)
    after: dict[str, np.ndarray]

    def lines(self) -> list[str]:
        """Printed by every `make eval-*`."""
        c = self.calibration
        return [f"ECE ({ECE_BINS} bins, top label): {self.ece_before:.4f} raw -> {self.ece_after:.4f} calibrated "
                f"(temperature {c.temperature:.3f}; a perfectly calibrated model: {self.ece_noise_floor:.4f} "
                f"on as many rows); review threshold {c.review_threshold:.3f}",
                *(f"  {a.line(name)}" for name, a in self.coverage.items())]


def summarise_calibration(raw: np.ndarray, labels: np.ndarray, calibration: Calibration,
                          groups: Mapping[str, np.ndarray] | None = None) -> CalibrationSummary:
    """`raw`: the model's probabilities [N, C]; `labels`: class indices; `groups`: name -> row mask
    (every row is always reported as "all")."""
    calibrated = calibration.apply(raw) if len(raw) else np.asarray(raw, np.float32)
    masks = {"all": np.ones(len(labels), bool), **(groups or {})}
    return CalibrationSummary(
        calibration, expected_calibration_error(raw, labels), expected_calibration_error(calibrated, labels),
        ece_noise_floor(calibrated),
        {name: acceptance(calibrated[mask], labels[mask], calibration) for name, mask in masks.items() if mask.any()},
        reliability_table(raw, labels), reliability_table(calibrated, labels))


def plot_reliability(summary: CalibrationSummary, path: Path, title: str) -> None:
    """Accuracy against confidence per bin, raw and calibrated, over the diagonal."""
    fig, ax = plt.subplots(figsize=(6, 6))
    edges = summary.before["edges"]
    width = edges[1] - edges[0]
    for table, label, offset in ((summary.before, f"raw (ECE {summary.ece_before:.3f})", 0.0),
                                 (summary.after, f"calibrated (ECE {summary.ece_after:.3f})", width / 2)):
        filled = table["count"] > 0
        ax.bar(edges[:-1][filled] + offset, table["accuracy"][filled], width=width / 2, align="edge",
               alpha=0.8, label=label)
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.axvline(summary.calibration.review_threshold, color="red", linewidth=1,
               label=f"review threshold {summary.calibration.review_threshold:.2f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("top probability (confidence)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _calibration_section(summary: CalibrationSummary) -> list[str]:
    c = summary.calibration
    lines = ["## Confidence", "",
             f"Top-label expected calibration error ({ECE_BINS} equal-width bins): **{summary.ece_before:.4f}** "
             f"for the model's raw probabilities, **{summary.ece_after:.4f}** after the bundle's temperature "
             f"{c.temperature:.3f} (what the service answers). Sampling noise alone gives a perfectly "
             f"calibrated model with these confidences an ECE of {summary.ece_noise_floor:.4f} on as many "
             f"rows (mean of 50 draws of labels from its own probabilities). An answer whose top probability is below "
             f"**{c.review_threshold:.3f}** carries `needs_review` (chosen on held-out train rows for "
             f">= {REVIEW_PRECISION:.0%} correct among the accepted).", "",
             "| group | rows | coverage (accepted) | correct among accepted |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {a.rows} | {a.coverage:.3f} | "
              f"{'n/a' if np.isnan(a.precision) else f'{a.precision:.3f}'} |" for name, a in summary.coverage.items()]
    return lines + ["", f"![reliability diagram]({RELIABILITY_FILE})", ""]


def _calibration_metrics(summary: CalibrationSummary) -> dict:
    return {"temperature": summary.calibration.temperature,
            "review_threshold": summary.calibration.review_threshold,
            "ece_bins": ECE_BINS, "ece_before": summary.ece_before, "ece_after": summary.ece_after,
            "ece_perfectly_calibrated": summary.ece_noise_floor,
            "coverage": {name: {"rows": a.rows, "coverage": a.coverage,
                                "precision": None if np.isnan(a.precision) else a.precision}
                         for name, a in summary.coverage.items()}}


def _baseline_table(scores: dict[str, F1Scores]) -> list[str]:
    lines = ["| model | weighted F1 | macro F1 | rows |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {s.weighted:.4f} | {s.macro:.4f} | {s.rows} |" for name, s in scores.items()]
    return lines


def _class_table(classes: list[ClassScores]) -> list[str]:
    lines = ["| code | category | support | precision | recall | F1 |",
             "|---:|---|---:|---:|---:|---:|"]
    lines += [f"| {c.code} | {c.name} | {c.support} | {c.precision:.2f} | {c.recall:.2f} | {c.f1:.2f} |"
              for c in classes]
    return lines


def provenance(data_root: Path, bundles: Sequence) -> dict:
    """What a figure was measured on: the bundles' versions, the data folder and its fingerprint
    (`training.data.fingerprint`, as bundles record the data they were trained on), and when."""
    from training.data import fingerprint

    return {"evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "bundles": {bundle.name: bundle.version for bundle in bundles},
            "data": {"path": str(data_root), "fingerprint": fingerprint(Path(data_root)), "split": "val"}}


def write_report(
    report_dir: str | Path,
    title: str,
    model_name: str,
    y_true: Sequence[int],
    y_pred: Sequence[int],
    categories: Sequence[tuple[int, str]],
    baselines: Sequence[tuple[str, Sequence[int]]] = (),
    notes: Sequence[str] = (),
    calibration: CalibrationSummary | None = None,
    provenance: dict | None = None,
) -> F1Scores:
    """Write report.md, confusion_matrix.png and metrics.json for one model and its baselines.

    `y_true`, `y_pred` and each baseline's predictions are product type codes on the same rows;
    `categories` lists every (code, name) to report, in table order. `notes` are free lines
    (data split, bundle version...) printed under the title; `provenance` (`provenance()`: the
    bundle versions and the data fingerprint) goes into metrics.json. Returns the model's scores.
    """
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    codes = [code for code, _ in categories]
    model_scores = f1_scores(y_true, y_pred, codes)
    all_scores = {model_name: model_scores}
    for name, predictions in baselines:
        if len(predictions) != len(y_true):
            raise ValueError(f"baseline {name!r} has {len(predictions)} predictions for {len(y_true)} rows")
        all_scores[name] = f1_scores(y_true, predictions, codes)
    classes = per_class_scores(y_true, y_pred, categories)

    plot_confusion_matrix(y_true, y_pred, codes, report_dir / CONFUSION_MATRIX_FILE,
                          f"{model_name}: confusion matrix (row-normalised)")
    lines = [f"# {title}", "", *notes, "" if notes else None,
             f"**{model_name}**: weighted F1 **{model_scores.weighted:.4f}**, "
             f"macro F1 **{model_scores.macro:.4f}** on {model_scores.rows} rows.", "",
             "## Model and baselines", "", *_baseline_table(all_scores), "",
             f"## Per class ({model_name})", "", *_class_table(classes), "",
             *(_calibration_section(calibration) if calibration else []),
             "## Confusion matrix", "", f"![confusion matrix]({CONFUSION_MATRIX_FILE})", ""]
    if calibration:
        plot_reliability(calibration, report_dir / RELIABILITY_FILE, f"{model_name}: reliability")
    (report_dir / REPORT_FILE).write_text(
        "\n".join(line for line in lines if line is not None), encoding="utf-8")
    metrics = {
        **(provenance or {}),
        "model": model_name,
        "weighted_f1": model_scores.weighted,
        "macro_f1": model_scores.macro,
        "rows": model_scores.rows,
        "baselines": {name: {"weighted_f1": s.weighted, "macro_f1": s.macro, "rows": s.rows}
                      for name, s in all_scores.items() if name != model_name},
        "per_class": [c.__dict__ for c in classes],
    }
    if calibration:
        metrics["calibration"] = _calibration_metrics(calibration)
    (report_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n",
                                           encoding="utf-8")
    return model_scores
