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
from training.text_model import (TextModelConfig, config_dict, export_text_bundle,
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
                        help="units of the embedding layer (all ensemble members together)")
    parser.add_argument("--ensemble", type=int, default=defaults.ensemble,
                        help="members trained and merged into one head")
    parser.add_argument("--seed", type=int, default=defaults.fit.seed)
    parser.add_argument("--verbose", type=int, default=2, help="Keras fit verbosity (0, 1 or 2: a line per epoch)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = data_dir(args.data)
    splits = load_text_splits(root)
    defaults = TextModelConfig()
    config = dataclasses.replace(
        defaults,
        word_vocabulary=args.word_vocabulary,
        char_vocabulary=args.char_vocabulary,
        embedding_dim=args.embedding_dim,
        ensemble=args.ensemble,
        fit=dataclasses.replace(defaults.fit, max_epochs=args.epochs, seed=args.seed, verbose=args.verbose),
    )

    start = time.perf_counter()
    reserved = reserved_for_fusion(splits.train)
    trained = train_text_model(splits.train, splits.label_indices(splits.train), len(splits.categories), config,
                               reserved=reserved)
    training_seconds = time.perf_counter() - start

    probabilities = predict_probabilities(trained.model, splits.val)
    predicted = np.asarray(splits.codes)[probabilities.argmax(axis=1)]
    scores = f1_scores(splits.val["prdtypecode"].to_numpy(), predicted, splits.codes)

    bundle = export_text_bundle(
        trained.model,
        args.models,
        labels=[(c.code, c.name) for c in splits.categories],
        training_data={"fingerprint": fingerprint(root), "rows_train": trained.rows_train,
                       "rows_early_stopping": trained.rows_early_stopping,
                       "rows_reserved_for_fusion": int(reserved.sum()),
                       "epochs": trained.member_epochs,
                       "training_seconds": round(training_seconds, 1)},
        metrics={"val_weighted_f1": round(scores.weighted, 4), "val_macro_f1": round(scores.macro, 4),
                 "val_rows": scores.rows},
        hyperparameters=config_dict(config),
        class_priors=class_priors(splits.train["prdtypecode"], splits.codes),
    )
    from training.calibrate import calibrate_text  # it reads texts with this module: import late

    calibrate_text(root, args.models, bundle.version)  # the same step as `make calibrate`
    size = bundle_size_bytes(bundle.path)
    print(f"bundle {bundle.path}  {size / 1e6:.2f} MB ({size} bytes)")
    print(f"trained in {training_seconds:.0f} s, epochs {trained.member_epochs}, "
          f"{trained.rows_train} train rows + {trained.rows_early_stopping} early-stopping rows")
    print(f"text model  weighted F1 {scores.weighted:.4f}  macro F1 {scores.macro:.4f}  (n={scores.rows})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
