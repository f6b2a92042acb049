"""A data folder in the challenge's layout, with invented products: for the `make eval-*` and
calibration tests (they must run on any labelled folder, without ../shared).

Products cycle through the three groups (text only, image only, text and image); texts come from
`synthetic_products`, images are small JPEGs tinted by class. Nothing here is Rakuten data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from tests.synthetic_products import LABELS, products

_TINTS = [(200, 40, 40), (40, 160, 220), (230, 210, 60)]


def write_data_folder(root: Path, rows: int = 24, split: str | None = "val", seed: int = 0) -> Path:
    """Write catalog.csv, X_train.csv, categories.csv and images/ under `root`.

    `split`: every row's split (a folder holding only val rows), or None for 80/20 train/val.
    """
    texts, labels = products(rows, seed)
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    catalog, text_rows = [], []
    for i, ((designation, description), label) in enumerate(zip(texts, labels)):
        has_text, has_image = i % 3 != 1, i % 3 != 0
        productid, imageid = 1000 + i, 5000 + i
        catalog.append({"index": i, "productid": productid, "imageid": imageid,
                        "prdtypecode": LABELS[label].code, "has_text": has_text, "has_image": has_image,
                        "split": split or ("val" if i % 5 == 0 else "train")})
        if has_text:
            text_rows.append({"index": i, "designation": designation, "description": description,
                              "productid": productid, "imageid": imageid})
        if has_image:
            noise = rng.integers(0, 60, (96, 96, 3))
            pixels = np.clip(np.asarray(_TINTS[label]) + noise - 30, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "images" / f"image_{imageid}_product_{productid}.jpg", "JPEG")
    pd.DataFrame(catalog).to_csv(root / "catalog.csv", index=False)
    pd.DataFrame(text_rows).to_csv(root / "X_train.csv", index=False)
    pd.DataFrame({"prdtypecode": [label.code for label in LABELS],
                  "name": [label.name for label in LABELS]}).to_csv(root / "categories.csv", index=False)
    return root
