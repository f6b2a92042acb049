"""What multilingual-e5-small embeddings add to the text classifier's TF-IDF views, on split == val.

    python -m training.evaluate_e5_features [--data PATH] [--weights 0.5,1,2]

The baseline is `evaluate_text`'s two-view linear SVM (normalised words 1-2-grams + cleaned
char_wb 2-5-grams, sublinear TF-IDF, C=0.5), fitted on split == train. The same SVM is then fitted
with e5 embeddings ("query: " prefix, the model card's choice for features) appended, scaled by a
weight (each TF-IDF view has unit rows, so the weight sets e5's share), of:
- the title alone;
- the title and the description, HTML dropped, cut at 300 characters.
Embeddings come from `E5Encoder(runtime="onnx")` and are cached in `.cache/` (gitignored: they
are derived from the data) under a key of the texts and the port's code.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time

import numpy as np
import scipy.sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.svm import LinearSVC

from text_service.e5_encoder import E5Encoder, onnx_model_path
from text_service.preprocessing import merge_fields, strip_html
from training.data import data_dir
from training.reports import f1_scores
from training.train_text import CACHE_DIR, TextSplits, load_text_splits

DESCRIPTION_CHARS = 300


def e5_texts(frame, with_description: bool) -> list[str]:
    if not with_description:
        return frame["designation"].tolist()
    return [merge_fields(title, " ".join(strip_html(description).split())[:DESCRIPTION_CHARS])
            for title, description in zip(frame["designation"], frame["description"])]


def cached_embeddings(texts: list[str], encoder: E5Encoder) -> np.ndarray:
    digest = hashlib.sha256(onnx_model_path().name.encode() + encoder.kind.encode())
    for text in texts:
        digest.update(text.encode() + b"\0")
    path = CACHE_DIR / f"e5-embeddings-{digest.hexdigest()[:24]}.npy"
    if path.is_file():
        return np.load(path)
    start = time.perf_counter()
    embeddings = encoder.encode(texts)
    print(f"embedded {len(texts)} texts in {time.perf_counter() - start:.0f} s (cached in {path})", file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, embeddings)
    return embeddings


def tfidf_views(splits: TextSplits) -> tuple[scipy.sparse.csr_matrix, scipy.sparse.csr_matrix]:
    """`evaluate_text.two_view_svm_predictions`' features, train and val."""
    words = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, token_pattern=r"\S+")
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, lowercase=False)
    train = scipy.sparse.hstack([words.fit_transform(splits.train["text"]),
                                 chars.fit_transform(splits.train["cleaned"])]).tocsr()
    val = scipy.sparse.hstack([words.transform(splits.val["text"]), chars.transform(splits.val["cleaned"])]).tocsr()
    return train, val


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="data folder (default: $RAKUTEN_DATA or ../shared/rakuten)")
    parser.add_argument("--weights", default="0.5,1,2", help="scales of the e5 block tried")
    args = parser.parse_args(argv)
    splits = load_text_splits(data_dir(args.data))
    y_train, y_true = splits.train["prdtypecode"].to_numpy(), splits.val["prdtypecode"].to_numpy()
    encoder = E5Encoder(runtime="onnx", kind="query")
    train, val = tfidf_views(splits)

    def score(name: str, x_train, x_val) -> None:
        predictions = LinearSVC(C=0.5).fit(x_train, y_train).predict(x_val)
        print(f1_scores(y_true, predictions, splits.codes).line(name), flush=True)

    score("TF-IDF two views + linear SVM", train, val)
    for with_description in (False, True):
        label = f"title + description[:{DESCRIPTION_CHARS}]" if with_description else "title"
        e_train = cached_embeddings(e5_texts(splits.train, with_description), encoder)
        e_val = cached_embeddings(e5_texts(splits.val, with_description), encoder)
        score(f"e5 ({label}) alone + linear SVM", e_train, e_val)
        for weight in (float(w) for w in args.weights.split(",")):
            score(f"TF-IDF two views + {weight:g} x e5 ({label}) + linear SVM",
                  scipy.sparse.hstack([train, weight * e_train]).tocsr(),
                  scipy.sparse.hstack([val, weight * e_val]).tocsr())
    return 0


if __name__ == "__main__":
    sys.exit(main())
