"""`make eval-text`: judge the latest text bundle on split == val, against baselines, and report.

    python -m training.evaluate_text [--data PATH] [--models models] [--report reports/text]

The bundle is run by the service's own class (`text_service.model.TextModel` on `preprocess`
output) and its answers calibrated as the service calibrates them (`common.scores.Calibration`),
so the figures are those of the served model, not of the Keras object training had in memory.
Any folder in the challenge's layout works; where it has a split == train, baselines are trained
on it and measured on the same val rows: the study's Keras architecture, TF-IDF + logistic
regression, word + character TF-IDF with a linear SVM on the normalised text, and the same SVM
on the two views the model reads (normalised words, character n-grams of the cleaned text), with
and without the e5 title embeddings beside them.

The bundle is measured under each encoder setting it was trained for (TEXT_ENCODER: tfidf, and
tfidf+e5 with the tower; the report's model is the richest), and on the same val products sent
with their title alone (description dropped, `preprocess(designation, "")`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import scipy.sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC

from common.model_bundle import bundle_size_bytes, read_bundle
from common.scores import Calibration
from text_service.model import TFIDF_E5, TextModel, bundle_encoders
from training.data import PROJECT_ROOT, data_dir
from training.fusion_data import encode_texts
from training.reports import f1_scores, provenance, summarise_calibration, write_report
from training.text_model import INPUT_NAMES, MODEL_NAME, SERVING_SIGNATURE, predict_probabilities, train_study_baseline
from training.train_text import TextSplits, load_text_splits, load_title_only, title_embeddings

TEXT_AND_IMAGE = "text + image"


def study_baseline_predictions(splits: TextSplits) -> np.ndarray:
    """The study's TextVectorization + Embedding + dense/dropout network, trained on train rows."""
    trained = train_study_baseline(splits.train["text"].tolist(), splits.label_indices(splits.train),
                                   len(splits.categories))
    probabilities = predict_probabilities(trained.model, splits.val["text"].tolist())
    return np.asarray(splits.codes)[probabilities.argmax(axis=1)]


def tfidf_logistic_predictions(splits: TextSplits) -> np.ndarray:
    """Word 1-2-gram sublinear TF-IDF with a multinomial logistic regression."""
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    classifier = LogisticRegression(C=20.0, max_iter=1000)
    classifier.fit(vectorizer.fit_transform(splits.train["text"]), splits.train["prdtypecode"])
    return classifier.predict(vectorizer.transform(splits.val["text"]))


def tfidf_svm_predictions(splits: TextSplits) -> np.ndarray:
    """Word 1-2-gram and character 2-5-gram sublinear TF-IDF with a linear SVM."""
    vectorizers = [TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                   TfidfVectorizer(analyzer="char", ngram_range=(2, 5), sublinear_tf=True)]
    train = scipy.sparse.hstack([v.fit_transform(splits.train["text"]) for v in vectorizers]).tocsr()
    val = scipy.sparse.hstack([v.transform(splits.val["text"]) for v in vectorizers]).tocsr()
    return LinearSVC(C=1.0).fit(train, splits.train["prdtypecode"]).predict(val)


def two_view_svm_predictions(splits: TextSplits) -> np.ndarray:
    """The model's two views with a linear SVM: word 1-2-grams of the normalised text and
    character 2-5-grams within words (`char_wb`) of the cleaned text, sublinear TF-IDF, no
    vocabulary cap."""
    words = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, token_pattern=r"\S+")
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, lowercase=False)
    train = scipy.sparse.hstack([words.fit_transform(splits.train["text"]),
                                 chars.fit_transform(splits.train["cleaned"])]).tocsr()
    val = scipy.sparse.hstack([words.transform(splits.val["text"]), chars.transform(splits.val["cleaned"])]).tocsr()
    return LinearSVC(C=0.5).fit(train, splits.train["prdtypecode"]).predict(val)


def two_view_e5_svm_predictions(splits: TextSplits) -> np.ndarray:
    """The two-view SVM with the e5 embeddings of the title appended (the text model's inputs
    under TEXT_ENCODER=tfidf+e5); each TF-IDF view has unit rows, and so has e5's."""
    words = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, token_pattern=r"\S+")
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, lowercase=False)
    train = scipy.sparse.hstack([words.fit_transform(splits.train["text"]), chars.fit_transform(splits.train["cleaned"]),
                                 title_embeddings(splits.train)]).tocsr()
    val = scipy.sparse.hstack([words.transform(splits.val["text"]), chars.transform(splits.val["cleaned"]),
                               title_embeddings(splits.val)]).tocsr()
    return LinearSVC(C=0.5).fit(train, splits.train["prdtypecode"]).predict(val)


BASELINES: dict[str, Callable[[TextSplits], np.ndarray]] = {
    "study architecture (TextVectorization + Embedding + dense/dropout)": study_baseline_predictions,
    "TF-IDF word 1-2-grams + logistic regression": tfidf_logistic_predictions,
    "TF-IDF word 1-2 + char 2-5-grams + linear SVM": tfidf_svm_predictions,
    "TF-IDF normalised words 1-2 + cleaned char_wb 2-5-grams + linear SVM": two_view_svm_predictions,
    "the same two views + e5 of the title + linear SVM": two_view_e5_svm_predictions,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="data folder (default: $RAKUTEN_DATA or ../shared/rakuten)")
    parser.add_argument("--models", type=Path, default=PROJECT_ROOT / "models")
    parser.add_argument("--report", type=Path, default=PROJECT_ROOT / "reports" / "text")
    parser.add_argument("--cache-dir", type=Path, help="preprocessing cache folder (default: .cache/)")
    parser.add_argument("--version", type=int, help="bundle version (default: the latest)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = data_dir(args.data)
    splits = load_text_splits(root, args.cache_dir)
    bundle = read_bundle(args.models, MODEL_NAME, args.version)
    bundle_codes = [label.code for label in bundle.labels]
    if bundle_codes != splits.codes:
        raise SystemExit(f"bundle {bundle.path} labels {bundle_codes} differ from the data's categories")

    if splits.val.empty:
        raise SystemExit(f"{root}: no split == val products with text to evaluate")
    y_true = splits.val["prdtypecode"].to_numpy()
    calibration = Calibration.of(bundle.metadata)
    title_only = load_title_only(splits.val).assign(designation=splits.val["designation"].to_numpy())
    variants, raw, y_pred = [], None, None
    for encoder in bundle_encoders(bundle):
        model = TextModel(bundle, encoder=encoder)
        for rows, sent in ((splits.val, "title + description"), (title_only, "title only")):
            _, probabilities = encode_texts(model, rows)
            predictions = np.asarray(bundle_codes)[calibration.apply(probabilities).argmax(axis=1)]
            name = f"text model, TEXT_ENCODER={encoder}, {sent}"
            print(f1_scores(y_true, predictions, splits.codes).line(name), flush=True)
            variants.append((name, predictions))
            if rows is splits.val:  # the report's model: the bundle under its last (richest) setting
                raw, y_pred, model_name = probabilities, predictions, name
    variants = [(name, predictions) for name, predictions in variants if name != model_name]
    has_image = splits.val["has_image"].astype(bool).to_numpy()
    confidence = summarise_calibration(raw, splits.label_indices(splits.val), calibration,
                                       {"text only": ~has_image, TEXT_AND_IMAGE: has_image})
    print("\n".join(confidence.lines()), flush=True)

    baselines = list(variants)
    if splits.train.empty:
        print("no split == train rows in this folder: baselines skipped", flush=True)
    else:
        for name, predict in BASELINES.items():
            if predict is two_view_e5_svm_predictions and TFIDF_E5 not in bundle_encoders(bundle):
                continue  # the model's own inputs only
            start = time.perf_counter()
            predictions = predict(splits)
            print(f1_scores(y_true, predictions, splits.codes).line(name)
                  + f"  [{time.perf_counter() - start:.0f} s]", flush=True)
            baselines.append((name, predictions))

    size = bundle_size_bytes(bundle.path)
    training_data = bundle.metadata.get("training_data", {})
    write_report(
        args.report,
        title="Text model: evaluation on split == val",
        model_name=f"v{bundle.version}: {model_name}",
        y_true=y_true,
        y_pred=y_pred,
        categories=[(c.code, c.name) for c in splits.categories],
        baselines=baselines,
        notes=[f"- bundle: `models/{MODEL_NAME}/{bundle.version}` ({size / 1e6:.2f} MB), "
               f"created {bundle.metadata.get('created_at', '?')}",
               f"- data fingerprint: `{training_data.get('fingerprint', '?')[:16]}…`; "
               f"trained on split == train ({training_data.get('rows_train', '?')} rows "
               f"+ {training_data.get('rows_early_stopping', '?')} early-stopping rows), "
               f"evaluated on split == val through `TextModel` (`{SERVING_SIGNATURE}` signature, "
               f"inputs {', '.join(f'`{name}`' for name in INPUT_NAMES)})",
               "- the bundle's other settings and title-only rows (description dropped) are on the same val products",
               "- baselines are trained on split == train and evaluated on the same val rows"
               if len(baselines) > len(variants) else "- no split == train rows in the data folder: no baselines"],
        calibration=confidence,
        provenance=provenance(root, [bundle])
    )
    print(f"report written to {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
