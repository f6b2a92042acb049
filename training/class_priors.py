"""Class priors of a bundle: the share of each code among the labels its model was trained on.

Training writes them into metadata.json (`class_priors`, {code: share}); every model service
exports them as `model_class_prior{model,code}` and the monitoring compares the class mix the
gateway serves with them (docs/metrics.md, "Class drift").

The rows counted are those the training run used, fitted or early-stopping, of the split
`train` (catalog.csv):

| bundle | rows |
|---|---|
| text | products with text |
| image | products with an image and no text (those with both are the fusion head's) |
| fusion | products with both (the real pairs) |

Bundles written before the priors existed get them once, from the same data, with

    python -m training.class_priors [--data ../shared/rakuten] [--models models]

which refuses a bundle whose recorded training row count differs from the rows it finds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from common.model_bundle import METADATA_FILE, read_bundle, versions

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def class_priors(labels: Iterable[int], codes: Sequence[int]) -> dict[str, float]:
    """{code: share} over every code (0.0 for a code absent from `labels`), in code order."""
    values = np.asarray(list(labels), dtype=np.int64)
    if values.size == 0:
        raise ValueError("no training labels to compute class priors from")
    unknown = sorted(set(values.tolist()) - set(int(c) for c in codes))
    if unknown:
        raise ValueError(f"training labels {unknown} are not among the bundle's codes")
    return {str(int(code)): round(float(np.mean(values == int(code))), 6) for code in codes}


def training_labels(catalog: pd.DataFrame, model: str) -> np.ndarray:
    """The product type codes of the rows `model`'s training used (see the module's table)."""
    train = catalog[catalog["split"] == "train"]
    text, image = train["has_text"].astype(bool), train["has_image"].astype(bool)
    rows = {"text": text, "image": image & ~text, "fusion": text & image}[model]
    return train.loc[rows, "prdtypecode"].to_numpy()


def recorded_rows(metadata: dict, model: str) -> int:
    """The training row count the bundle's metadata states."""
    data = metadata["training_data"]
    if model == "fusion":
        return int(data["real_pairs"])
    return int(data["rows_train"]) + int(data["rows_early_stopping"])


def backfill(catalog: pd.DataFrame, models: Path, force: bool = False) -> list[str]:
    """Add `class_priors` to every text, image and fusion bundle that lacks it; one line per bundle."""
    lines = []
    for model in ("text", "image", "fusion"):
        for version in versions(models, model):
            bundle = read_bundle(models, model, version)
            if "class_priors" in bundle.metadata and not force:
                lines.append(f"{bundle.path}: has class_priors, left as is")
                continue
            labels = training_labels(catalog, model)
            expected = recorded_rows(bundle.metadata, model)
            if len(labels) != expected:
                raise SystemExit(f"{bundle.path}: trained on {expected} rows, the data has {len(labels)}: "
                                 "not the data it was trained on")
            metadata = {**bundle.metadata, "class_priors": class_priors(labels, [l.code for l in bundle.labels])}
            (bundle.path / METADATA_FILE).write_text(json.dumps(metadata, indent=2, ensure_ascii=False) + "\n",
                                                     encoding="utf-8")
            lines.append(f"{bundle.path}: class_priors from {len(labels)} training labels")
    return lines


def main(argv: list[str] | None = None) -> int:
    from training.data import data_dir

    parser = argparse.ArgumentParser(prog="python -m training.class_priors", description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="data folder (default: $RAKUTEN_DATA or ../shared/rakuten)")
    parser.add_argument("--models", type=Path, default=PROJECT_ROOT / "models")
    parser.add_argument("--force", action="store_true", help="recompute priors a bundle already has")
    args = parser.parse_args(argv)
    catalog = pd.read_csv(data_dir(args.data) / "catalog.csv")
    for line in backfill(catalog, args.models, args.force):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
