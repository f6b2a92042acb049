"""`make calibrate`: fit each bundle's temperature and review threshold on held-out train rows.

    python -m training.calibrate [--data PATH] [--models models] [--only text,image,fusion]

Writes the `calibration` section of the latest (or `--*-version`) bundle's metadata.json,
without retraining; the trainers call the same functions on the bundles they export. The rows
are split == train rows the model never fitted, never split == val:

| model | held-out rows |
|---|---|
| text | the early-stopping set (the reserved fusion pairs plus a stratified share), rebuilt from the bundle's recorded seed and fraction |
| image | the reserved fusion pairs' images (plus the early-stopping images, when the head used some) |
| fusion | the reserved fusion pairs (the head's normalisation statistics come from them; no weight is fitted) |

The fusion bundle also gets the review threshold of late fusion (the gateway's weighted average
of the calibrated text and image scores), in its calibration and in `gateway_settings`
(`late_fusion_review_threshold`, applied by `make up`). Run text and image before fusion.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from common.model_bundle import BundleInfo, read_bundle, update_metadata
from common.scores import CALIBRATION_KEY
from image_service.model import ImageModel
from text_service.model import TextModel
from training.calibration import fit_calibration, review_threshold
from training.data import PROJECT_ROOT, data_dir, fingerprint, load_categories
from training.fitting import FitConfig, early_stopping_split
from training.fusion_data import CACHE_DIR, encode_texts, fused_probabilities, load_fusion_inputs
from training.image_model import PROBABILITIES_OUTPUT, TTA_NONE, FeatureCache, combine_tta, image_products, tta_views
from training.pairing import reserved_for_fusion
from training.train_text import load_text_splits

MODELS = ("text", "image", "fusion")
LATE_THRESHOLD = "late_fusion_review_threshold"


def _record(bundle: BundleInfo, section: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    update_metadata(bundle, {CALIBRATION_KEY: section, **(extra or {})})
    print(f"{bundle.name} v{bundle.version}: temperature {section['temperature']:.3f}, review threshold "
          f"{section['review_threshold']:.3f}; on {section['held_out_rows']} held-out rows ECE "
          f"{section['held_out_ece_before']:.4f} -> {section['held_out_ece_after']:.4f}, coverage "
          f"{section['held_out_coverage']:.3f}", flush=True)
    return section


def calibrate_text(root: Path, models: Path, version: int | None = None, cache_dir: Path | None = None) -> dict:
    bundle = read_bundle(models, "text", version)
    splits = load_text_splits(root, cache_dir)
    fit = {**dataclasses.asdict(FitConfig()), **bundle.metadata.get("hyperparameters", {}).get("fit", {})}
    labels = splits.label_indices(splits.train)
    _, rows = early_stopping_split(labels, fit["early_stopping_fraction"], fit["seed"],
                                   reserved_for_fusion(splits.train))
    expected = bundle.metadata.get("training_data", {}).get("rows_early_stopping")
    if expected is not None and expected != len(rows):
        raise SystemExit(f"{bundle.path} held out {expected} early-stopping rows, this data gives {len(rows)}: "
                         "not the data it was trained on")
    _, raw = encode_texts(TextModel(bundle), splits.train.iloc[rows])
    return _record(bundle, fit_calibration(raw, labels[rows], f"{len(rows)} early-stopping rows of split == train"))


def calibrate_image(root: Path, models: Path, version: int | None = None, cache_dir: Path = CACHE_DIR) -> dict:
    bundle = read_bundle(models, "image", version)
    codes = [c.code for c in load_categories(root)]
    products = image_products(root)
    train = products[products["split"] == "train"].reset_index(drop=True)
    train["label"] = train["prdtypecode"].map({code: i for i, code in enumerate(codes)})
    reserved = reserved_for_fusion(train)
    held, described = [train[reserved]], f"{int(reserved.sum())} reserved fusion images"
    hyperparameters = bundle.metadata.get("hyperparameters", {})
    if hyperparameters.get("early_stopping_fraction"):
        fitted = train[~reserved]
        _, rows = early_stopping_split(fitted["label"].to_numpy(), hyperparameters["early_stopping_fraction"],
                                       hyperparameters.get("seed", 0))
        held.append(fitted.iloc[rows])
        described += f" + {len(rows)} early-stopping images"
    held = pd.concat(held)
    cache = FeatureCache(fingerprint(root), dict(zip(products["index"], products["image_path"])), cache_dir)
    tta = bundle.metadata.get("test_time_augmentation", TTA_NONE)
    features = combine_tta([cache.features(view, held["index"]) for view in tta_views(tta)], tta)
    raw = ImageModel(bundle).predict_features(features)[PROBABILITIES_OUTPUT]
    return _record(bundle, fit_calibration(raw, held["label"].to_numpy(), f"{described} of split == train"))


def calibrate_fusion(root: Path, models: Path, version: int | None = None, cache_dir: Path = CACHE_DIR) -> dict:
    from fusion_service.model import FusionModel

    bundle = read_bundle(models, "fusion", version)
    trained_on = bundle.metadata.get("training_data", {})
    inputs = load_fusion_inputs(root, models, trained_on.get("text_bundle"), trained_on.get("image_bundle"),
                                cache_dir)
    text, image = inputs.train.pairs()
    section = fit_calibration(fused_probabilities(FusionModel(bundle), text, image), text.labels,
                              f"the {len(text.index)} reserved fusion pairs of split == train")
    weight = float(bundle.metadata.get("late_fusion_text_weight", 0.5))
    late = weight * inputs.text_calibration.apply(text.probabilities) + \
        (1 - weight) * inputs.image_calibration.apply(image.probabilities)
    section[LATE_THRESHOLD] = review_threshold(late, text.labels)
    gateway = {**bundle.metadata.get("gateway_settings", {}), LATE_THRESHOLD: section[LATE_THRESHOLD]}
    print(f"late fusion (text weight {weight:.2f}, calibrated scores): review threshold {section[LATE_THRESHOLD]:.3f}")
    return _record(bundle, section, {"gateway_settings": gateway})


CALIBRATE = {"text": calibrate_text, "image": calibrate_image, "fusion": calibrate_fusion}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="data folder (default: $RAKUTEN_DATA or ../shared/rakuten)")
    parser.add_argument("--models", type=Path, default=PROJECT_ROOT / "models")
    parser.add_argument("--only", default=",".join(MODELS), help="comma-separated models, in this order")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose among {', '.join(MODELS)}")
    root = data_dir(args.data)
    for name in MODELS:
        if name in chosen:
            CALIBRATE[name](root, args.models, cache_dir=args.cache_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
