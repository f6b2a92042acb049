"""`make eval-fusion`: text only, image only, late fusion and the fusion head on the paired val products.

    python -m training.evaluate_fusion [--data PATH] [--models models] [--report reports/fusion]

Every figure comes from the committed bundles run as serving runs them: the text and image
bundles the fusion bundle was trained on (its metadata names their versions), the fusion bundle
through `fusion_service.model.FusionModel`, each calibrated as its service calibrates it
(`common.scores.Calibration`), and late fusion with the text weight recorded at training time
(the gateway's formula, on the calibrated text and image scores). The rows are the products of
split == val that have both a text and an image. The report's model is the fusion the gateway
serves (`gateway_settings`).

One more baseline row, where the folder has train pairs, shows why the head is built as a
product of experts: the same architecture fitted from random weights, as the study did, on the
real train pairs plus class-conditional pairs recombined from them (the text of one product and
the image of another of the same class).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from common.model_bundle import bundle_size_bytes, read_bundle
from common.scores import CALIBRATION_KEY, Calibration
from fusion_service.model import FusionModel
from training.calibrate import LATE_THRESHOLD
from training.data import PROJECT_ROOT, data_dir
from training.fitting import FitConfig
from training.fusion_data import FusionInputs, fused_probabilities, load_fusion_inputs
from training.fusion_model import MODEL_NAME, FusionConfig, predict_fusion, train_fusion_model
from training.pairing import class_conditional_pairs
from training.reports import f1_scores, provenance, summarise_calibration, write_report
from training.train_fusion import (GATEWAY_MODE, HEAD, LATE, TEXT_ONLY, compare_on_val_pairs, late_fused,
                                   print_table, score_table)


STUDY_HEAD = "study head, fitted"


def served_calibration(bundle_metadata: dict, served: str) -> Calibration:
    """The fusion head's calibration, or for late fusion (already of calibrated scores) its threshold."""
    calibration = Calibration.of(bundle_metadata)
    if served == HEAD:
        return calibration
    late = bundle_metadata.get(CALIBRATION_KEY, {}).get(LATE_THRESHOLD, 0.0)
    return Calibration(1.0, float(late))


def study_head_probabilities(inputs: FusionInputs, per_class: int = 200, seed: int = 0) -> np.ndarray:
    """The study's head fitted from scratch on the real train pairs and class-conditional pairs."""
    text, image = inputs.train.pairs()
    text_rows, image_rows, labels = class_conditional_pairs(text.labels, image.labels, per_class, seed)
    model, _ = train_fusion_model(np.concatenate([text.embeddings, text.embeddings[text_rows]]),
                                  np.concatenate([image.embeddings, image.embeddings[image_rows]]),
                                  np.concatenate([text.labels, labels]), len(inputs.categories),
                                  FusionConfig(), FitConfig(seed=seed))
    val_text, val_image = inputs.val.pairs()
    return predict_fusion(model, val_text.embeddings, val_image.embeddings)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="data folder (default: $RAKUTEN_DATA or ../shared/rakuten)")
    parser.add_argument("--models", type=Path, default=PROJECT_ROOT / "models")
    parser.add_argument("--report", type=Path, default=PROJECT_ROOT / "reports" / "fusion")
    parser.add_argument("--cache-dir", type=Path, default=PROJECT_ROOT / ".cache",
                        help="preprocessing and feature cache folder")
    parser.add_argument("--version", type=int, help="fusion bundle version (default: the latest)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = data_dir(args.data)
    bundle = read_bundle(args.models, MODEL_NAME, args.version)
    trained_on = bundle.metadata.get("training_data", {})
    inputs = load_fusion_inputs(root, args.models, trained_on.get("text_bundle"), trained_on.get("image_bundle"),
                                args.cache_dir)
    text_weight = float(bundle.metadata["late_fusion_text_weight"])
    served_mode = bundle.metadata.get("gateway_settings", {}).get("fusion_mode", "head")
    served = next(name for name, mode in GATEWAY_MODE.items() if mode == served_mode)

    text, image = inputs.val.pairs()
    if not len(text.index):
        raise SystemExit(f"{root}: no split == val products with both a text and an image to evaluate")
    head = fused_probabilities(FusionModel(bundle), text, image)
    y_true, predictions = compare_on_val_pairs(inputs, head, text_weight)
    scores = score_table(y_true, predictions, inputs.codes)
    print_table(scores)
    raw = head if served == HEAD else late_fused(inputs, text, image, text_weight)
    confidence = summarise_calibration(raw, text.labels, served_calibration(bundle.metadata, served))
    print("\n".join(confidence.lines()), flush=True)
    if len(inputs.train.paired_index()):
        study = np.asarray(inputs.codes)[study_head_probabilities(inputs).argmax(axis=1)]
        study_scores = f1_scores(y_true, study, inputs.codes)
        print(f"{STUDY_HEAD:<24}{study_scores.weighted:>12.4f}{study_scores.macro:>10.4f}{study_scores.rows:>6}")
        predictions[STUDY_HEAD] = study
    else:
        print("no split == train pairs in this folder: the fitted study head is skipped", flush=True)

    size = bundle_size_bytes(bundle.path)
    write_report(
        args.report,
        title="Fusion: evaluation on the paired products of split == val",
        model_name=f"{served} (served)",
        y_true=y_true,
        y_pred=predictions[served],
        categories=[(c.code, c.name) for c in inputs.categories],
        baselines=[(name, predicted) for name, predicted in predictions.items() if name != served],
        notes=[f"- fusion bundle `models/{MODEL_NAME}/{bundle.version}` ({size / 1e6:.3f} MB) on text bundle "
               f"v{inputs.text_bundle.version} and image bundle v{inputs.image_bundle.version}; "
               f"the gateway serves the {served} (`fusion_mode={served_mode}`)",
               f"- rows: the {len(y_true)} products of split == val with both a text and an image; "
               f"the head's normalisation statistics and the late-fusion weight come from the "
               f"{trained_on.get('real_pairs', '?')} real split == train pairs, which neither encoder fitted",
               "- the fusion head is the product of the two encoders' experts "
               "(`training.fusion_model.product_of_experts_head`); the last row is the same architecture "
               "fitted from random weights on the real and class-conditional train pairs",
               f"- late fusion: {text_weight:.2f} x text + {1 - text_weight:.2f} x image probabilities, "
               "the weight chosen on the training pairs",
               f"- gain over text only, in points of weighted F1: "
               + ", ".join(f"{name} {100 * (scores[name].weighted - scores[TEXT_ONLY].weighted):+.1f}"
                           for name in (HEAD, LATE))],
        calibration=confidence,
        provenance=provenance(root, [bundle, inputs.text_bundle, inputs.image_bundle])
    )
    print(f"report written to {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
