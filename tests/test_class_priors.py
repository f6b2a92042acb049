"""Class priors of a bundle: the shares of its training labels, and the one-off backfill of
bundles written before them (synthetic catalog, fake bundles: no data folder, no TensorFlow)."""

import json

import pandas as pd
import pytest

from common.model_bundle import read_bundle, write_bundle
from training.class_priors import backfill, class_priors, training_labels


def test_class_priors_are_shares_over_every_code():
    assert class_priors([10, 10, 2583, 10], [10, 2583, 2705]) == {"10": 0.75, "2583": 0.25, "2705": 0.0}
    with pytest.raises(ValueError, match="not among"):
        class_priors([40], [10, 2583])
    with pytest.raises(ValueError, match="no training labels"):
        class_priors([], [10])


def catalog():
    # (code, has_text, has_image, split)
    rows = [(10, 1, 0, "train")] * 3 + [(2583, 1, 1, "train")] * 2 + [(2705, 0, 1, "train")] * 4 \
        + [(10, 1, 1, "val")] * 5
    return pd.DataFrame(rows, columns=["prdtypecode", "has_text", "has_image", "split"])


def test_each_model_counts_the_rows_its_training_used():
    data = catalog()
    assert sorted(training_labels(data, "text")) == [10, 10, 10, 2583, 2583]
    assert sorted(training_labels(data, "image")) == [2705] * 4  # pairs are the fusion head's
    assert sorted(training_labels(data, "fusion")) == [2583, 2583]


def fake_bundle(root, name, training_data):
    labels = [{"code": c, "name": str(c)} for c in (10, 2583, 2705)]
    return write_bundle(root, name, lambda folder: None, {"labels": labels, "training_data": training_data})


def test_backfill_adds_priors_and_refuses_other_data(tmp_path):
    fake_bundle(tmp_path, "text", {"rows_train": 4, "rows_early_stopping": 1})
    fake_bundle(tmp_path, "fusion", {"real_pairs": 2})
    lines = backfill(catalog(), tmp_path)
    assert len(lines) == 2 and "from 5 training labels" in lines[0]
    assert read_bundle(tmp_path, "text").class_priors == {10: 0.6, 2583: 0.4, 2705: 0.0}
    assert json.loads((tmp_path / "fusion" / "1" / "metadata.json").read_text())["class_priors"]["2583"] == 1.0
    assert "left as is" in backfill(catalog(), tmp_path)[0]
    fake_bundle(tmp_path, "image", {"rows_train": 3, "rows_early_stopping": 0})
    with pytest.raises(SystemExit, match="trained on 3 rows, the data has 4"):
        backfill(catalog(), tmp_path)
