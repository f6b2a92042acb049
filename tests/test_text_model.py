"""Text model, bundle export, report writer and the two CLIs, on synthetic data only.

Classes are told apart by invented words, so a tiny model learns them in a few epochs; nothing
here reads ../shared/rakuten. Rows are `PreprocessedText`: the invented words are the normalised
`text`, and `cleaned` adds a reference number of the class's own.
"""

from __future__ import annotations

import dataclasses
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras import layers  # noqa: E402
from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402

from common.model_bundle import bundle_size_bytes, read_bundle  # noqa: E402
from text_service.preprocessing import PreprocessedText  # noqa: E402
from training import evaluate_text, train_text  # noqa: E402
from training.fitting import FitConfig, early_stopping_split  # noqa: E402
from training.reports import CONFUSION_MATRIX_FILE, METRICS_FILE, REPORT_FILE, write_report  # noqa: E402
from training.text_model import (E5_DIM, EMBEDDING_LAYER, HIDDEN_LAYER, WIDE_LAYER,  # noqa: E402
                                 CharNgramsWithinWords, StoredDense, model_encoders,
                                 StudyBaselineConfig, TextModelConfig, config_dict, export_text_bundle,
                                 predict_embeddings, predict_probabilities, text_inputs,
                                 train_study_baseline, train_text_model)

CLASS_WORDS = [
    ["zorblax", "quintrel", "vormiak", "glendup"],
    ["plinduro", "brastoni", "kelvimor", "tazzune"],
    ["okrumba", "ferlidax", "numbrolt", "wispato"],
    ["yandrik", "moltazze", "crovinel", "bexturn"],
]
FILLER = ["produit", "qualite", "couleur", "livraison", "format", "modele"]
CODES = [10, 40, 1280, 2583]
NAMES = ["Classe un", "Classe deux", "Classe trois", "Classe quatre"]
SMALL = TextModelConfig(word_vocabulary=500, char_vocabulary=300, embedding_dim=16,
                        fit=FitConfig(learning_rate=1e-2, batch_size=16, max_epochs=25, seed=1))


def synthetic_texts(rows: int, seed: int) -> tuple[list[str], np.ndarray]:
    """`rows` texts cycling over the classes: two class words among three filler words."""
    rng = np.random.default_rng(seed)
    labels = np.arange(rows) % len(CLASS_WORDS)
    texts = [" ".join(rng.permutation(list(rng.choice(CLASS_WORDS[y], 2, replace=False))
                                      + list(rng.choice(FILLER, 3)))) for y in labels]
    return texts, labels


def reference(label: int, rng) -> str:
    """A reference number of the class's own (digits: only the cleaned view keeps them)."""
    return f"ref {CODES[label]}-{int(rng.integers(100, 999))}"


def synthetic_rows(rows: int, seed: int, text_signal: bool = True) -> tuple[list[PreprocessedText], np.ndarray]:
    """Both views of `synthetic_texts`; without `text_signal` the normalised text is filler only
    and the class shows in the cleaned view's reference number alone."""
    texts, labels = synthetic_texts(rows, seed)
    rng = np.random.default_rng(seed + 100)
    prepared = []
    for text, label in zip(texts, labels):
        if not text_signal:
            text = " ".join(rng.choice(FILLER, 4))
        prepared.append(PreprocessedText(text=text, language="fr", cleaned=f"{text} {reference(label, rng)}"))
    return prepared, labels


@pytest.fixture(scope="module")
def trained():
    rows, labels = synthetic_rows(160, seed=0)
    return train_text_model(rows, labels, len(CLASS_WORDS), SMALL)


@pytest.fixture(scope="module")
def bundle(trained, tmp_path_factory):
    return export_text_bundle(
        trained.model, tmp_path_factory.mktemp("models"), labels=list(zip(CODES, NAMES)),
        training_data={"fingerprint": "synthetic", "rows_train": trained.rows_train,
                       "rows_early_stopping": trained.rows_early_stopping},
        metrics={"val_weighted_f1": 1.0, "val_macro_f1": 1.0, "val_rows": 40},
        hyperparameters=config_dict(SMALL))


def test_early_stopping_split_is_stratified_and_disjoint():
    labels = np.repeat(np.arange(4), 25)
    fit_rows, early_rows = early_stopping_split(labels, 0.1, seed=0)
    assert not set(fit_rows) & set(early_rows)
    assert len(fit_rows) + len(early_rows) == 100
    assert sorted(np.unique(labels[early_rows])) == [0, 1, 2, 3]
    assert np.array_equal(early_rows, early_stopping_split(labels, 0.1, seed=0)[1])


def test_model_learns_synthetic_classes(trained):
    rows, labels = synthetic_rows(40, seed=1)
    predicted = predict_probabilities(trained.model, rows).argmax(axis=1)
    assert (predicted == labels).mean() >= 0.9
    assert trained.rows_train + trained.rows_early_stopping == 160
    # the 16 hidden units and the 4 wide logits, so the probabilities are linear in the embedding
    assert trained.model.get_layer(EMBEDDING_LAYER).output.shape[-1] == 16 + len(CLASS_WORDS)
    assert 1 <= trained.epochs == len(trained.history["loss"])
    assert "val_loss" in trained.history
    assert set(trained.model.input) == {"text", "cleaned"}


def test_the_character_branch_reads_the_cleaned_view():
    rows, labels = synthetic_rows(160, seed=5, text_signal=False)
    config = TextModelConfig(word_vocabulary=50, char_vocabulary=400, embedding_dim=16,
                             fit=FitConfig(learning_rate=1e-2, batch_size=16, max_epochs=25, seed=1))
    model = train_text_model(rows, labels, len(CLASS_WORDS), config).model
    test_rows, test_labels = synthetic_rows(40, seed=6, text_signal=False)
    assert (predict_probabilities(model, test_rows).argmax(axis=1) == test_labels).mean() >= 0.9


def test_char_ngrams_within_words_match_scikit_learn_char_wb():
    analyzer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), lowercase=False).build_analyzer()
    split = CharNgramsWithinWords((2, 3, 4, 5))
    texts = ["une table 60x33 cm", "a", "", "  très  ok  ", "tabouret éco-conçu h=45cm"]
    for text, grams in zip(texts, split(tf.constant(texts)).to_list()):
        assert sorted(g.decode("utf-8") for g in grams) == sorted(analyzer(text)), text


def test_text_inputs_accepts_rows_frames_and_mappings(trained):
    rows, _ = synthetic_rows(3, seed=7)
    expected = text_inputs(rows)
    frame = pd.DataFrame({"text": [r.text for r in rows], "cleaned": [r.cleaned for r in rows], "other": 1})
    for form in (frame, {"text": expected["text"], "cleaned": list(expected["cleaned"])}):
        converted = text_inputs(form)
        assert set(converted) == {"text", "cleaned"}
        for name in converted:
            assert list(converted[name]) == list(expected[name])
    with pytest.raises(ValueError, match="no \\['cleaned'\\]"):
        predict_probabilities(trained.model, [r.text for r in rows])  # the model needs both views


def e5_vectors(labels: np.ndarray, seed: int) -> np.ndarray:
    """Stand-ins for e5 title embeddings: unit vectors around one direction per class."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(CLASS_WORDS), E5_DIM))
    vectors = centres[labels] + 0.5 * rng.normal(size=(len(labels), E5_DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def title_rows(rows: list[PreprocessedText]) -> list[PreprocessedText]:
    """The same products with their title alone: the first class word of each text."""
    titles = []
    for row in rows:
        word = next(w for w in row.text.split() if any(w in words for words in CLASS_WORDS))
        titles.append(PreprocessedText(text=word, language="fr", cleaned=word))
    return titles


def test_e5_tower_title_only_copies_and_the_model_without_e5():
    """One model serves both encoder settings (e5 present or zeroed) and titles sent alone."""
    rows, labels = synthetic_rows(200, seed=5)
    e5 = e5_vectors(labels, seed=5)
    config = dataclasses.replace(SMALL, e5=True, e5_dropout=0.5)
    trained = train_text_model(rows, labels, len(CLASS_WORDS), config, title_only=title_rows(rows), e5=e5)
    assert model_encoders(trained.model) == ["tfidf", "tfidf+e5"]
    test_rows, test_labels = synthetic_rows(80, seed=6)
    for inputs, vectors in ((test_rows, e5_vectors(test_labels, seed=5)), (test_rows, None),
                            (title_rows(test_rows), None)):
        predicted = predict_probabilities(trained.model, inputs, vectors).argmax(axis=1)
        assert (predicted == test_labels).mean() >= 0.9
    # the e5 input alone carries the class too: the tower is used, not ignored
    filler = [PreprocessedText(text="produit", language="fr", cleaned="produit")] * len(test_labels)
    vectors = e5_vectors(test_labels, seed=5)
    assert (predict_probabilities(trained.model, filler, vectors).argmax(axis=1) == test_labels).mean() >= 0.6


def test_big_kernels_are_stored_as_float16(trained):
    hidden = trained.model.get_layer(HIDDEN_LAYER)
    assert isinstance(hidden, StoredDense) and hidden.kernel.dtype == "float16"
    assert trained.model.get_layer(WIDE_LAYER).kernel.dtype == "float16"


def test_bundle_signature_serves_embedding_and_probabilities(trained, bundle):
    signature = tf.saved_model.load(str(bundle.path)).signatures["serving_default"]
    rows, _ = synthetic_rows(5, seed=2)
    inputs = {name: tf.constant(values) for name, values in text_inputs(rows).items()}
    outputs = signature(**inputs)
    assert outputs["embedding"].dtype == tf.float32
    assert outputs["embedding"].shape == (5, 16 + len(CODES))
    np.testing.assert_allclose(outputs["embedding"].numpy(), predict_embeddings(trained.model, rows), atol=1e-5)
    probabilities = outputs["probabilities"].numpy()
    assert probabilities.shape == (5, len(CLASS_WORDS))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probabilities, predict_probabilities(trained.model, rows), atol=1e-5)
    with pytest.raises(TypeError):
        signature(text=inputs["text"])  # both views are required


def test_bundle_stores_each_weight_once(trained, bundle):
    """tf.saved_model.save, not keras.export.ExportArchive, which wrote every variable twice."""
    weights = sum(np.asarray(w).nbytes for w in trained.model.weights)
    variables = bundle_size_bytes(bundle.path / "variables")
    assert weights <= variables < 1.3 * weights + 100_000


def test_bundle_metadata_has_required_fields(bundle):
    metadata = read_bundle(bundle.path.parent.parent, "text").metadata
    assert bundle.version == 1
    assert metadata["labels"][0] == {"code": 10, "name": "Classe un"}
    assert [label["code"] for label in metadata["labels"]] == CODES
    for name in ("text", "cleaned"):
        assert metadata["inputs"][name]["dtype"] == "string"
        assert metadata["inputs"][name]["shape"] == [-1]
        assert f"preprocess(designation, description).{name}" in metadata["inputs"][name]["description"]
    assert metadata["outputs"]["embedding"] == {"dtype": "float32", "shape": [-1, 16 + len(CODES)]}
    assert metadata["outputs"]["probabilities"]["shape"] == [-1, len(CODES)]
    assert metadata["embedding_dim"] == 16 + len(CODES)
    assert {"fingerprint", "rows_train", "rows_early_stopping"} <= set(metadata["training_data"])
    assert {"val_weighted_f1", "val_macro_f1", "val_rows"} <= set(metadata["metrics"])
    assert {"tensorflow", "keras"} <= set(metadata["framework"])
    assert metadata["hyperparameters"]["embedding_dim"] == 16
    assert {"name", "version", "created_at"} <= set(metadata)


def test_study_baseline_trains():
    texts, labels = synthetic_texts(120, seed=3)  # it reads the normalised text only
    config = StudyBaselineConfig(vocabulary=200, sequence_length=8, token_embedding_dim=8,
                                 hidden_units=16, fit=FitConfig(learning_rate=1e-2, batch_size=16,
                                                                max_epochs=25))
    baseline = train_study_baseline(texts, labels, len(CLASS_WORDS), config)
    probabilities = predict_probabilities(baseline.model, texts)
    assert probabilities.shape == (120, len(CLASS_WORDS))
    assert (probabilities.argmax(axis=1) == labels).mean() >= 0.8


def test_report_writer_writes_table_matrix_and_metrics(tmp_path):
    y_true = [10, 10, 40, 40, 1280, 2583]
    y_pred = [10, 40, 40, 40, 1280, 10]
    scores = write_report(tmp_path / "report", "Synthetic", "model", y_true, y_pred,
                          list(zip(CODES, NAMES)), baselines=[("always 10", [10] * 6)])
    report = (tmp_path / "report" / REPORT_FILE).read_text(encoding="utf-8")
    assert "| code | category | support | precision | recall | F1 |" in report
    assert "| 40 | Classe deux | 2 | 0.67 | 1.00 | 0.80 |" in report
    assert "| always 10 |" in report
    assert (tmp_path / "report" / CONFUSION_MATRIX_FILE).read_bytes().startswith(b"\x89PNG")
    metrics = json.loads((tmp_path / "report" / METRICS_FILE).read_text(encoding="utf-8"))
    assert metrics["weighted_f1"] == pytest.approx(scores.weighted)
    assert metrics["rows"] == 6
    assert set(metrics["baselines"]) == {"always 10"}
    assert [row["code"] for row in metrics["per_class"]] == CODES


def write_synthetic_data_folder(root, rows_per_class: int = 30) -> None:
    """The challenge layout (catalog, X_train, categories) filled with invented products."""
    texts, labels = synthetic_texts(rows_per_class * len(CODES), seed=4)
    index = np.arange(len(texts)) + 1000
    split = np.where(np.arange(len(texts)) % 5 == 0, "val", "train")
    pd.DataFrame({"index": index, "productid": index, "imageid": index,
                  "prdtypecode": np.asarray(CODES)[labels], "has_text": True, "has_image": False,
                  "split": split}).to_csv(root / "catalog.csv", index=False)
    pd.DataFrame({"index": index, "designation": [t.split(" ", 2)[0] for t in texts],
                  "description": [f"<p>{t}</p>" for t in texts], "productid": index,
                  "imageid": index}).to_csv(root / "X_train.csv", index=False)
    pd.DataFrame({"prdtypecode": CODES, "name": NAMES}).to_csv(root / "categories.csv", index=False)


def test_train_and_evaluate_clis_end_to_end(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    data.mkdir()
    write_synthetic_data_folder(data)
    monkeypatch.setattr(train_text, "CACHE_DIR", tmp_path / "cache")
    models, report = tmp_path / "models", tmp_path / "report"

    assert train_text.main(["--data", str(data), "--models", str(models), "--epochs", "15",
                            "--word-vocabulary", "300", "--char-vocabulary", "500", "--embedding-dim", "16",
                            "--text-encoder", "tfidf", "--verbose", "0"]) == 0
    caches = list((tmp_path / "cache").glob("text-preprocessed-*.csv"))
    assert len(caches) == 1
    assert list(pd.read_csv(caches[0]).columns) == ["index", "text", "language", "cleaned"]
    assert "text model (tfidf)  weighted F1" in capsys.readouterr().out
    metadata = read_bundle(models, "text").metadata
    assert metadata["training_data"]["rows_train"] + metadata["training_data"]["rows_early_stopping"] == 96
    # class_priors: the shares of the 96 training labels, as the backfill computes them from catalog.csv
    from training.class_priors import class_priors, training_labels
    assert metadata["class_priors"] == class_priors(training_labels(pd.read_csv(data / "catalog.csv"), "text"), CODES)
    assert abs(sum(metadata["class_priors"].values()) - 1) < 1e-5

    assert evaluate_text.main(["--data", str(data), "--models", str(models), "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "text model, TEXT_ENCODER=tfidf, title + description  weighted F1" in out and "(n=24)" in out
    assert "text model, TEXT_ENCODER=tfidf, title only  weighted F1" in out
    assert "logistic regression  weighted F1" in out
    assert "cleaned char_wb 2-5-grams + linear SVM  weighted F1" in out
    assert {REPORT_FILE, CONFUSION_MATRIX_FILE, METRICS_FILE} <= {p.name for p in report.iterdir()}
