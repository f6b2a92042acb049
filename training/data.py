"""Reads the challenge data folder (../shared/rakuten layout) into one table of labelled products.

The folder is a setting: `RAKUTEN_DATA` in the environment (or `make ... DATA=path`), default
`../shared/rakuten` from the project root. Nothing from it is ever copied into the project.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = PROJECT_ROOT.parent / "shared" / "rakuten"


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The data folder: the argument, else $RAKUTEN_DATA, else ../shared/rakuten."""
    chosen = Path(path or os.environ.get("RAKUTEN_DATA") or DEFAULT_DATA_DIR)
    if not (chosen / "catalog.csv").is_file():
        raise FileNotFoundError(
            f"{chosen} is not a Rakuten data folder (no catalog.csv); set RAKUTEN_DATA or DATA=path"
        )
    return chosen


@dataclass(frozen=True)
class Category:
    code: int
    name: str


def load_categories(root: Path) -> list[Category]:
    """The 27 product type codes with their French names, in ascending code order."""
    frame = pd.read_csv(root / "categories.csv")
    return [Category(int(c), str(n)) for c, n in sorted(zip(frame.prdtypecode, frame.name))]


def load_products(root: Path) -> pd.DataFrame:
    """One row per labelled product: catalog columns plus designation, description and image_path.

    Descriptions that `text_quality.csv` marks as not recovered are treated as missing (empty), as
    the data README asks. `image_path` is empty where the product has no image here.
    """
    catalog = pd.read_csv(root / "catalog.csv")
    texts = pd.read_csv(root / "X_train.csv", index_col=0, keep_default_na=False,
                        dtype={"designation": str, "description": str})
    texts.index.name = "index"
    quality_path = root / "text_quality.csv"
    if quality_path.is_file():
        quality = pd.read_csv(quality_path, index_col=0)
        incomplete = quality.index[~quality["description_complete"].astype(bool)]
        texts.loc[texts.index.intersection(incomplete), "description"] = ""
    frame = catalog.join(texts[["designation", "description"]], on="index")
    frame["designation"] = frame["designation"].fillna("")
    frame["description"] = frame["description"].fillna("")
    has_image = frame["has_image"].astype(bool)
    frame["image_path"] = ""
    frame.loc[has_image, "image_path"] = [
        str(root / "images" / f"image_{i}_product_{p}.jpg")
        for i, p in zip(frame.loc[has_image, "imageid"], frame.loc[has_image, "productid"])
    ]
    return frame


def fingerprint(root: Path, names: tuple[str, ...] = ("catalog.csv", "X_train.csv")) -> str:
    """SHA-256 over the files a model was trained from, recorded in its bundle's metadata."""
    digest = hashlib.sha256()
    for name in names:
        path = root / name
        if path.is_file():
            digest.update(name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()
