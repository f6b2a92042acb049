"""`make train-text`: preprocess (cached), train the text model, evaluate it on val, export a bundle.

    python -m training.train_text [--data PATH] [--models models] [--epochs N] ...

Only products with text are used; the model reads both views of `preprocess` (`text` and
`cleaned`), which are cached together. The model learns from `split == "train"` rows, minus a
stratified hold-out of them that drives EarlyStopping and ReduceLROnPlateau; `split == "val"` is
the reporting split and takes no part in any training decision.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.metadata
import inspect
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.model_bundle import bundle_size_bytes
from text_service import language, preprocessing
from training.class_priors import class_priors
from training.data import (PROJECT_ROOT, Category, data_dir, fingerprint, load_categories,
                           load_products)
from training.pairing import reserved_for_fusion
from training.reports import f1_scores
from training.text_model import (TFIDF, TFIDF_E5, TextModelConfig, config_dict, export_text_bundle,
                                 predict_probabilities, train_text_model)

CACHE_DIR = PROJECT_ROOT / ".cache"
_CACHE_DEPENDENCIES = ("langdetect", "py3langid", "nltk", "stop-words")
CACHE_COLUMNS = ("text", "language", "cleaned")  # the fields of PreprocessedText kept in the cache


def preprocessing_cache_key(root: Path) -> str:
    """Changes whenever the data, the pipeline's source or a library it relies on changes."""
    digest = hashlib.sha256()
    digest.update(fingerprint(root, ("catalog.csv", "X_train.csv", "text_quality.csv")).encode())
    for module in (preprocessing, language):
        digest.update(inspect.getsource(module).encode())
    digest.update(",".join(CACHE_COLUMNS).encode())
    for package in _CACHE_DEPENDENCIES:
        digest.update(f"{package}=={importlib.metadata.version(package)}".encode())
    return digest.hexdigest()[:24]


def load_text_products(root: Path, cache_dir: Path | None = None) -> pd.DataFrame:
    """Labelled products with text, with the columns `text`, `language` and `cleaned` of
    `preprocess(designation, description)` (the model reads `text` and `cleaned`).

    Preprocessing every product takes a while (about 10 ms each with langdetect), so its output is
    cached in `cache_dir` (default `.cache/`, gitignored: it holds derived data texts) under a
    key from `preprocessing_cache_key`, so a stale cache is never read.
    """
    products = load_products(root)
    products = products[products["has_text"].astype(bool)].reset_index(drop=True)
    cache_dir = CACHE_DIR if cache_dir is None else cache_dir
    cache_file = cache_dir / f"text-preprocessed-{preprocessing_cache_key(root)}.csv"
    if cache_file.is_file():
        cached = pd.read_csv(cache_file, keep_default_na=False, dtype={c: str for c in CACHE_COLUMNS})
        cached = cached.set_index("index")
    else:
        start = time.perf_counter()
        results = [preprocessing.preprocess(d, s)
                   for d, s in zip(products["designation"], products["description"])]
        cached = pd.DataFrame({column: [getattr(r, column) for r in results] for column in CACHE_COLUMNS},
                              index=pd.Index(products["index"], name="index"))
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = cache_file.with_suffix(".tmp")
        cached.to_csv(staging)
        staging.replace(cache_file)
        print(f"preprocessed {len(cached)} texts in {time.perf_counter() - start:.0f} s "
              f"(cached in {cache_file})", file=sys.stderr)
    return products.join(cached[list(CACHE_COLUMNS)], on="index")


def load_title_only(products: pd.DataFrame, cache_dir: Path | None = None) -> pd.DataFrame:
    """`preprocess(designation, "")` of each product (the title sent alone), as the columns `text`,
    `language`, `cleaned`, row for row with `products`; cached like `load_text_products`."""
    cache_dir = CACHE_DIR if cache_dir is None else cache_dir
    digest = hashlib.sha256(preprocessing_cache_key(Path("/")).encode())  # the pipeline's code and libraries
    for title in products["designation"]:
        digest.update(str(title).encode() + b"\0")
    cache_file = cache_dir / f"text-title-only-{digest.hexdigest()[:24]}.csv"
    if cache_file.is_file():
        return pd.read_csv(cache_file, keep_default_na=False, dtype={c: str for c in CACHE_COLUMNS})
    results = [preprocessing.preprocess(title, "") for title in products["designation"]]
    frame = pd.DataFrame({column: [getattr(r, column) for r in results] for column in CACHE_COLUMNS})
    cache_dir.mkdir(parents=True, exist_ok=True)
    frame.to_csv(cache_file.with_suffix(".tmp"), index=False)
    cache_file.with_suffix(".tmp").replace(cache_file)
    return frame


def title_embeddings(products: pd.DataFrame) -> np.ndarray:
    """[n, 384] e5 embeddings of `preprocess(...).title` of each product (`e5_title`), as the
    service computes them (E5Encoder on ONNX Runtime, "query: "); cached in `.cache/`."""
    from text_service.e5_encoder import E5Encoder
    from training.evaluate_e5_features import cached_embeddings

    return cached_embeddings([preprocessing.e5_title(t) for t in products["designation"]],
                             E5Encoder(runtime="onnx", kind="query"))


@dataclass(frozen=True)
class TextSplits:
    """Preprocessed training and reporting rows, with the class order every model uses."""

    train: pd.DataFrame
    val: pd.DataFrame
    categories: list[Category]

    @property
    def codes(self) -> list[int]:
        return [c.code for c in self.categories]

    def label_indices(self, frame: pd.DataFrame) -> np.ndarray:
        """Class index i = i-th code of `categories` (ascending code order)."""
        index_of = {code: i for i, code in enumerate(self.codes)}
        return frame["prdtypecode"].map(index_of).to_numpy(dtype=np.int64)


def load_text_splits(root: Path, cache_dir: Path | None = None) -> TextSplits:
    """Rows with text, preprocessed (see `load_text_products`), split into train and val."""
    products = load_text_products(root, cache_dir)
    return TextSplits(train=products[products["split"] == "train"].reset_index(drop=True),
                      val=products[products["split"] == "val"].reset_index(drop=True),
                      categories=load_categories(root))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = TextModelConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="data folder (default: $RAKUTEN_DATA or ../shared/rakuten)")
    parser.add_argument("--models", type=Path, default=PROJECT_ROOT / "models",
                        help="models root; the bundle goes to <models>/text/<next version>/")
    parser.add_argument("--epochs", type=int, default=defaults.fit.max_epochs,
                        help="maximum epochs (early stopping usually ends sooner)")
    parser.add_argument("--word-vocabulary", type=int, default=defaults.word_vocabulary)
    parser.add_argument("--char-vocabulary", type=int, default=defaults.char_vocabulary,
                        help="character n-grams kept from the cleaned text")
    parser.add_argument("--embedding-dim", type=int, default=defaults.embedding_dim,
                        help="units of the embedding layer")
    parser.add_argument("--wide-c", default=",".join(f"{c:g}" for c in defaults.wide_c),
                        help="C of the wide path's linear SVM: a comma list, the best on the early-stopping set kept")
    parser.add_argument("--no-wide", action="store_true", help="the deep path alone")
    parser.add_argument("--text-encoder", choices=(TFIDF, TFIDF_E5), default=TFIDF_E5,
                        help="tfidf+e5: add the e5 tower (the bundle then serves both settings)")
    parser.add_argument("--no-title-only", action="store_true", help="no title-only copies of the training rows")
    parser.add_argument("--kernel-dtype", choices=("float16", "float32"), default=defaults.kernel_dtype)
    parser.add_argument("--seed", type=int, default=defaults.fit.seed)
    parser.add_argument("--verbose", type=int, default=2, help="Keras fit verbosity (0, 1 or 2: a line per epoch)")
    return parser.parse_args(argv)


def val_scores(model, splits: TextSplits, e5: np.ndarray | None, title_only: pd.DataFrame | None = None):
    """Weighted/macro F1 on split == val of the Keras model (e5 None: the tower's input absent)."""
    rows = splits.val if title_only is None else title_only
    probabilities = predict_probabilities(model, rows, e5)
    predicted = np.asarray(splits.codes)[probabilities.argmax(axis=1)]
    return f1_scores(splits.val["prdtypecode"].to_numpy(), predicted, splits.codes)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = data_dir(args.data)
    splits = load_text_splits(root)
    defaults = TextModelConfig()
    with_e5 = args.text_encoder == TFIDF_E5
    base = dataclasses.replace(
        defaults,
        word_vocabulary=args.word_vocabulary,
        char_vocabulary=args.char_vocabulary,
        embedding_dim=args.embedding_dim,
        wide=not args.no_wide,
        e5=with_e5,
        kernel_dtype=args.kernel_dtype,
        fit=dataclasses.replace(defaults.fit, max_epochs=args.epochs, seed=args.seed, verbose=args.verbose),
    )
    title_only = None if args.no_title_only else load_title_only(splits.train)
    e5_train = title_embeddings(splits.train) if with_e5 else None
    e5_val = title_embeddings(splits.val) if with_e5 else None

    start = time.perf_counter()
    reserved = reserved_for_fusion(splits.train)
    config = dataclasses.replace(base, wide_c=tuple(float(value) for value in args.wide_c.split(",")))
    trained = train_text_model(splits.train, splits.label_indices(splits.train), len(splits.categories),
                               config, reserved=reserved, title_only=title_only, e5=e5_train)
    wide_path = {k[5:]: v[0] for k, v in trained.history.items() if k.startswith("wide_")}
    print(f"early-stopping accuracy {trained.history['early_stopping_accuracy'][0]:.4f}, deep path "
          f"{trained.epochs} epochs, wide path {wide_path}", flush=True)
    training_seconds = time.perf_counter() - start

    scores = val_scores(trained.model, splits, e5_val)
    metrics = {"val_weighted_f1": round(scores.weighted, 4), "val_macro_f1": round(scores.macro, 4),
               "val_rows": scores.rows}
    lines = [scores.line(f"text model ({args.text_encoder})")]
    if with_e5:
        without = val_scores(trained.model, splits, None)
        metrics[f"val_weighted_f1_{TFIDF}"] = round(without.weighted, 4)
        lines.append(without.line(f"text model ({TFIDF}: e5 input absent)"))
    bundle = export_text_bundle(
        trained.model,
        args.models,
        labels=[(c.code, c.name) for c in splits.categories],
        training_data={"fingerprint": fingerprint(root), "rows_train": trained.rows_train,
                       "rows_early_stopping": trained.rows_early_stopping,
                       "rows_reserved_for_fusion": int(reserved.sum()),
                       "title_only_copies": title_only is not None,
                       "epochs": trained.epochs,
                       "wide_path": wide_path,
                       "early_stopping_accuracy": trained.history["early_stopping_accuracy"][0],
                       "training_seconds": round(training_seconds, 1)},
        metrics=metrics,
        hyperparameters=config_dict(config),
        class_priors=class_priors(splits.train["prdtypecode"], splits.codes),
    )
    from training.calibrate import calibrate_text  # it reads texts with this module: import late

    calibrate_text(root, args.models, bundle.version)  # the same step as `make calibrate`
    size = bundle_size_bytes(bundle.path)
    print(f"bundle {bundle.path}  {size / 1e6:.2f} MB ({size} bytes)")
    print(f"trained in {training_seconds:.0f} s, epochs {trained.epochs}, "
          f"{trained.rows_train} train rows + {trained.rows_early_stopping} early-stopping rows")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
