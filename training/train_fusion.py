"""`make train-fusion`: the fusion head from the served text and image bundles, and the late-fusion weight.

    python -m training.train_fusion [--data PATH] [--models models]

The head is the study's architecture set to the product of the two encoders' experts
(`training.fusion_model.product_of_experts_head`): their output layers are read back from what
their bundles serve on split == train, and its normalisation statistics are those of the real
train pairs (products with a text and an image, which neither encoder was fitted on:
`training.pairing`). The late-fusion text weight is chosen on the same real train pairs. Both
fusions, and each encoder alone, are then measured on the real pairs of split == val; the better
fusion is recorded in the bundle's metadata as the gateway's setting (`gateway_settings`, read by
`make up`, documented for Kubernetes). Val rows are never fitted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from common.model_bundle import bundle_size_bytes
from training.calibrate import calibrate_fusion
from training.class_priors import class_priors
from training.data import PROJECT_ROOT, data_dir, fingerprint
from training.fusion_data import Encoded, FusionInputs, load_fusion_inputs
from training.fusion_model import (
    FusionConfig,
    choose_late_fusion_weight,
    export_fusion_bundle,
    late_fusion,
    output_layer,
    predict_fusion,
    product_of_experts_head,
)
from training.reports import F1Scores, f1_scores

TEXT_ONLY, IMAGE_ONLY, LATE, HEAD = "text only", "image only", "late fusion", "fusion head"
#: How `evaluate_fusion` and the metadata name the two fusions, and the gateway setting for each.
GATEWAY_MODE = {HEAD: "head", LATE: "late"}


def compare_on_val_pairs(inputs: FusionInputs, fusion_probabilities: np.ndarray,
                         text_weight: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(true codes, predicted codes per method) on the real val pairs, in `GATEWAY_MODE` terms."""
    codes = np.asarray(inputs.codes)
    text, image = inputs.val.pairs()
    predictions = {
        TEXT_ONLY: text.probabilities,
        IMAGE_ONLY: image.probabilities,
        LATE: late_fused(inputs, text, image, text_weight),
        HEAD: fusion_probabilities,
    }
    return codes[text.labels], {name: codes[p.argmax(axis=1)] for name, p in predictions.items()}


def late_fused(inputs: FusionInputs, text: Encoded, image: Encoded, text_weight: float) -> np.ndarray:
    """Late fusion as the gateway computes it: of the calibrated scores the text and image services answer."""
    return late_fusion(inputs.text_calibration.apply(text.probabilities),
                       inputs.image_calibration.apply(image.probabilities), text_weight)


def score_table(y_true: np.ndarray, predictions: dict[str, np.ndarray], codes: list[int]) -> dict[str, F1Scores]:
    return {name: f1_scores(y_true, predicted, codes) for name, predicted in predictions.items()}


def print_table(scores: dict[str, F1Scores]) -> None:
    print(f"{'on paired split == val':<24}{'weighted F1':>12}{'macro F1':>10}{'n':>6}")
    for name, s in scores.items():
        print(f"{name:<24}{s.weighted:>12.4f}{s.macro:>10.4f}{s.rows:>6}")
    gain = scores[HEAD].weighted - scores[TEXT_ONLY].weighted
    late_gain = scores[LATE].weighted - scores[TEXT_ONLY].weighted
    print(f"gain over text only: fusion head {100 * gain:+.1f} points, late fusion {100 * late_gain:+.1f} points")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="data folder (default: $RAKUTEN_DATA or ../shared/rakuten)")
    parser.add_argument("--models", type=Path, default=PROJECT_ROOT / "models")
    parser.add_argument("--image-weight", type=float, default=1.0,
                        help="weight of the image logits in the head (1: the plain product of experts)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = data_dir(args.data)
    inputs = load_fusion_inputs(root, args.models)
    start = time.perf_counter()
    text_layer = output_layer(inputs.train.text.embeddings, inputs.train.text.probabilities)
    image_layer = output_layer(inputs.train.image.embeddings, inputs.train.image.probabilities)
    real_text, real_image = inputs.train.pairs()
    config = FusionConfig()
    model = product_of_experts_head(text_layer, image_layer, real_text.embeddings, real_image.embeddings,
                                    config, args.image_weight)
    text_weight = choose_late_fusion_weight(inputs.text_calibration.apply(real_text.probabilities),
                                            inputs.image_calibration.apply(real_image.probabilities),
                                            real_text.labels)
    seconds = time.perf_counter() - start

    val_text, val_image = inputs.val.pairs()
    y_true, predictions = compare_on_val_pairs(
        inputs, predict_fusion(model, val_text.embeddings, val_image.embeddings), text_weight)
    scores = score_table(y_true, predictions, inputs.codes)
    print_table(scores)
    served = max((HEAD, LATE), key=lambda name: (scores[name].weighted, name == HEAD))

    metadata = {
        "training_data": {
            "fingerprint": fingerprint(root),
            "text_bundle": inputs.text_bundle.version, "image_bundle": inputs.image_bundle.version,
            "real_pairs": len(real_text.index), "training_seconds": round(seconds, 1)},
        "hyperparameters": {**config.to_dict(), "hidden_units": int(model.get_layer("hidden").units),
                            "initialisation": "product of experts", "image_weight": args.image_weight,
                            "late_fusion_weight_grid": "0..1 step 0.05"},
        "metrics": {name: {"val_weighted_f1": round(s.weighted, 4), "val_macro_f1": round(s.macro, 4),
                           "val_rows": s.rows} for name, s in scores.items()},
        "late_fusion_text_weight": text_weight,
        "class_priors": class_priors(np.asarray(inputs.codes)[real_text.labels], inputs.codes),
        # What the gateway should serve: the fusion measured better on paired val (make up applies it).
        "gateway_settings": {"fusion_mode": GATEWAY_MODE[served], "late_fusion_text_weight": text_weight},
    }
    bundle = export_fusion_bundle(model, args.models, inputs.categories, metadata)
    calibrate_fusion(root, args.models, bundle.version)  # the same step as `make calibrate`
    size = bundle_size_bytes(bundle.path)
    print(f"late fusion text weight {text_weight:.2f} (chosen on the {len(real_text.index)} real train pairs); "
          f"the gateway serves: {served}")
    print(f"bundle {bundle.path}  {size / 1e6:.2f} MB ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
