"""Language detection: each detector selectable, the fast one more right than langdetect on short
product titles, deterministic, bounded, "unknown" without letters, the setting reaching text_service."""

from __future__ import annotations

import pytest

from common.settings import load_settings
from tests.language_titles import TITLES
from text_service import language
from text_service.language import DETECTORS, UNKNOWN_LANGUAGE, detect_language
from text_service.preprocessing import preprocess
from text_service.server import TextServiceSettings

#: py3langid restricted to the catalogue's languages got 0.983 on the titles (langdetect 0.941);
#: the floor leaves room for a model update, not for a detector that guesses.
FAST_ACCURACY_FLOOR = 0.96


def accuracy(detector: str) -> float:
    return sum(detect_language(title, detector) == code for title, code in TITLES) / len(TITLES)


def test_the_title_set_is_large_and_balanced():
    counts = {code: sum(c == code for _, c in TITLES) for code in language.CATALOGUE_LANGUAGES}
    assert len(TITLES) >= 300 and len({title for title, _ in TITLES}) == len(TITLES)
    assert min(counts.values()) >= 60 and max(counts.values()) - min(counts.values()) <= 5


def test_the_default_is_more_right_than_langdetect_on_short_titles():
    fast, reference = accuracy(language.DEFAULT_DETECTOR), accuracy("langdetect")
    assert fast >= FAST_ACCURACY_FLOOR
    assert fast > reference, (fast, reference)


@pytest.mark.parametrize("detector", DETECTORS)
@pytest.mark.parametrize("text, code", [
    ("Notizbuch mit Punktraster und festem Einband für Schule und Büro", "de"),
    ("The quick brown fox jumps over the lazy dog every morning", "en"),
    ("Une table très jolie, idéale pour le salon ou la salle à manger", "fr"),
    ("Zaino da trekking con copertura antipioggia e schienale ventilato", "it"),
    ("Mochila de senderismo con funda para la lluvia y espalda ventilada", "es"),
])
def test_each_detector_finds_the_language_of_a_sentence(detector, text, code):
    assert detect_language(text, detector) == code


@pytest.mark.parametrize("detector", DETECTORS)
def test_same_text_same_answer(detector):
    """langdetect samples at random (seeded here); both must answer the same every time."""
    for title, _ in TITLES[::20]:
        assert len({detect_language(title, detector) for _ in range(5)}) == 1


@pytest.mark.parametrize("detector", DETECTORS)
@pytest.mark.parametrize("text", ["", "   ", "12 / 34 ---", "60 × 33 + 42 = €€ !!!", "_ _ 2020"])
def test_no_letters_is_unknown(detector, text):
    assert detect_language(text, detector) == UNKNOWN_LANGUAGE


def test_the_fast_detector_reads_a_bounded_prefix():
    french = "Une table très jolie, idéale pour le salon ou la salle à manger. " * 10
    assert len(french) > language.MAX_CHARS
    assert detect_language(french + "Notizbuch mit Punktraster und festem Einband. " * 1_000) == "fr"


def test_detectors_are_named_and_an_unknown_name_is_refused():
    assert set(DETECTORS) == {"py3langid", "langdetect"}
    with pytest.raises(ValueError, match="unknown language detector 'cld'"):
        language.load_detector("cld")


def test_preprocess_passes_the_choice_and_only_the_language_changes():
    title = "Album photo 200 pochettes"  # langdetect: "it"
    fast, reference = (preprocess(title, "", detector) for detector in ("py3langid", "langdetect"))
    assert fast.language == "fr" and reference.language == detect_language(title, "langdetect") != "fr"
    assert (fast.text, fast.cleaned) == (reference.text, reference.cleaned)
    assert preprocess(title, "") == fast  # training and serving default to the fast detector


def test_the_setting_is_a_flag_and_an_environment_variable(monkeypatch):
    assert TextServiceSettings().language_detector == language.DEFAULT_DETECTOR
    assert load_settings(TextServiceSettings, ["--language-detector", "langdetect"]).language_detector == "langdetect"
    monkeypatch.setenv("LANGUAGE_DETECTOR", "langdetect")
    assert TextServiceSettings().language_detector == "langdetect"
    with pytest.raises(ValueError, match="language_detector"):
        load_settings(TextServiceSettings, [], language_detector="cld")


def test_the_benchmark_reports_every_detector_on_a_few_products():
    from bench.language import measure

    long_french = "Une table très jolie, idéale pour le salon ou la salle à manger, en chêne massif. " * 4
    products = [("Tapis salon 160x230 gris", ""), ("Table basse", f"<p>{long_french}</p>"), ("", "12 / 34")]
    result = measure(products, ["py3langid", "langdetect"])
    assert (result["products"], result["long_texts"], result["titles"]) == (3, 1, len(TITLES))
    fast = result["detectors"]["py3langid"]
    assert fast["agreement_with_langdetect_200_plus"] == 1.0 and fast["title_accuracy"] >= FAST_ACCURACY_FLOOR
    assert 0 < fast["detect_cpu_p50_ms"] <= fast["detect_cpu_p99_ms"]
