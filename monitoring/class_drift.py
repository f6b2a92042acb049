"""The class-drift figure of the monitoring, and the simulation that sets its alert threshold.

The recording rules (monitoring/rules.yml, group rakuten-answers) compare the class mix the
gateway served over the last hour with the class priors of the text bundle serving
(`model_class_prior{model="text"}`) by the population stability index

    PSI = sum over classes of (p - q) * ln(p / q)

where q is the prior and p the served share, smoothed towards the prior so that a class with no
answer in the hour is no infinite term: p = (n + A q) / (N + A), n the class's answers, N all
answers, A = 27 pseudo-answers (one per class). `psi` and `smoothed_share` below compute the same.

    python -m monitoring.class_drift [--data ../shared/rakuten] [--models models] [--hours 4000]

draws hours of served answers at several rates: the true classes from the full challenge's class
frequencies (Y_train_full_labels.csv, 84,916 products: the catalogue's mix), each passed through
the text model's errors (per class recall and precision of reports/text/metrics.json, the errors
spread over the classes in proportion to their false positives), and prints the PSI of steady
traffic (no drift) against those of shifted mixes. docs/metrics.md keeps the figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from common.model_bundle import read_bundle

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PSEUDO_ANSWERS = 27.0  # the rules' smoothing: one pseudo-answer per class, spread as the priors
FLOOR = 1e-6  # the rules' clamp_min: a prior of 0 stays a finite term
RATES_PER_SECOND = (0.5, 1.0, 10.0, 60.0)
THRESHOLD = 0.06  # RakutenClassMixDrift; the alert also needs MIN_ANSWERS in the hour
MIN_ANSWERS = 3600


def smoothed_share(counts: np.ndarray, prior: np.ndarray, pseudo: float = PSEUDO_ANSWERS) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    return (counts + pseudo * prior) / (counts.sum(axis=-1, keepdims=True) + pseudo)


def psi(served: np.ndarray, prior: np.ndarray) -> np.ndarray:
    p, q = np.maximum(served, FLOOR), np.maximum(prior, FLOOR)
    return ((served - prior) * np.log(p / q)).sum(axis=-1)


def full_set_priors(data: Path, codes: list[int]) -> np.ndarray:
    with open(data / "Y_train_full_labels.csv", newline="") as file:
        labels = np.array([int(row["prdtypecode"]) for row in csv.DictReader(file)])
    return np.array([np.mean(labels == code) for code in codes])


def text_model_errors(report: Path, codes: list[int]) -> np.ndarray:
    """confusion[t, c] = P(predicted c | true t): recall on the diagonal, the rest of each row
    spread over the other classes in proportion to their false positives (an approximation of
    the confusion matrix from per-class recall and precision)."""
    per_class = {row["code"]: row for row in json.loads(report.read_text())["per_class"]}
    recall = np.array([per_class[c]["recall"] for c in codes])
    true_positives = recall * np.array([per_class[c]["support"] for c in codes])
    precision = np.array([per_class[c]["precision"] for c in codes])
    false_positives = np.where(precision > 0, true_positives / np.maximum(precision, 1e-12) - true_positives, 0.0)
    confusion = np.zeros((len(codes), len(codes)))
    for t in range(len(codes)):
        others = false_positives.copy()
        others[t] = 0.0
        confusion[t] = (1.0 - recall[t]) * others / others.sum()
        confusion[t, t] = recall[t]
    return confusion


def shifted_mixes(true_mix: np.ndarray, image_mix: np.ndarray, codes: list[int]) -> dict[str, np.ndarray]:
    """Traffic that should raise the alert (and a few that should not), as true-class mixes."""
    def scaled(factors: dict[int, float]) -> np.ndarray:
        mix = true_mix * np.array([factors.get(c, 1.0) for c in codes])
        return mix / mix.sum()

    uniform = np.full(len(codes), 1.0 / len(codes))
    return {
        "pool season: 2583 x1.5": scaled({2583: 1.5}),
        "pool season: 2583 x2": scaled({2583: 2.0}),
        "book sellers join: 10, 2403, 2705 x2": scaled({10: 2.0, 2403: 2.0, 2705: 2.0}),
        "toys at Christmas: 1280, 1281, 1300 x2": scaled({1280: 2.0, 1281: 2.0, 1300: 2.0}),
        "one class gone: 2583 x0": scaled({2583: 0.0}),
        "20% of traffic uniform": 0.8 * true_mix + 0.2 * uniform,
        "50% of traffic uniform": 0.5 * true_mix + 0.5 * uniform,
        "image training mix (balanced)": image_mix,
    }


def simulate(true_mix: np.ndarray, confusion: np.ndarray, prior: np.ndarray, answers: int, hours: int,
             rng: np.random.Generator) -> np.ndarray:
    """PSI of `hours` simulated hours of `answers` served answers each."""
    served_mix = true_mix @ confusion
    counts = rng.multinomial(answers, served_mix / served_mix.sum(), size=hours)
    return psi(smoothed_share(counts, prior), prior)


def main(argv: list[str] | None = None) -> int:
    from training.data import data_dir

    parser = argparse.ArgumentParser(prog="python -m monitoring.class_drift", description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="data folder (default: $RAKUTEN_DATA or ../shared/rakuten)")
    parser.add_argument("--models", type=Path, default=PROJECT_ROOT / "models")
    parser.add_argument("--report", type=Path, default=PROJECT_ROOT / "reports" / "text" / "metrics.json")
    parser.add_argument("--hours", type=int, default=4000, help="simulated hours per case")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    text, image = read_bundle(args.models, "text"), read_bundle(args.models, "image")
    codes = [label.code for label in text.labels]
    prior = np.array([text.class_priors[c] for c in codes])
    image_prior = np.array([image.class_priors[c] for c in codes])
    true_mix = full_set_priors(data_dir(args.data), codes)
    confusion = text_model_errors(args.report, codes)
    rng = np.random.default_rng(args.seed)

    print(f"reference: text bundle {text.version} class_priors; PSI of other priors against it: "
          f"full challenge set {psi(true_mix, prior):.4f}, image bundle {image.version} "
          f"{psi(image_prior, prior):.4f}")
    print(f"no drift, infinite traffic: served mix (full-set mix through the text model's errors) "
          f"PSI {psi(true_mix @ confusion, prior):.4f}; without the model's errors {psi(true_mix, prior):.4f}")
    print(f"simulated hours per case: {args.hours}; alert: PSI > {THRESHOLD} with >= {MIN_ANSWERS} answers")
    rates = [(r, int(r * 3600)) for r in RATES_PER_SECOND]
    print(f"{'case':<42}" + "".join(f"{f'{r:g}/s ({n} /h)':>22}" for r, n in rates))

    def row(name: str, mix: np.ndarray, null: bool) -> None:
        cells = []
        for _, answers in rates:
            values = simulate(mix, confusion, prior, answers, args.hours, rng)
            firing = np.mean(values > THRESHOLD) if answers >= MIN_ANSWERS else 0.0
            summary = (f"p99.9 {np.quantile(values, 0.999):.3f}" if null else f"p50 {np.median(values):.3f}")
            cells.append(f"{summary} {100 * firing:3.0f}%")
        print(f"{name:<42}" + "".join(f"{c:>22}" for c in cells))

    row("no drift (catalogue mix)", true_mix, null=True)
    for name, mix in shifted_mixes(true_mix, image_prior, codes).items():
        row(name, mix, null=False)
    print("cells: PSI quantile over the simulated hours, and the share of hours above the threshold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
