"""The study's text pipeline, step by step, and its worked example."""

import pytest

from text_service import preprocessing as pp


def test_study_worked_example():
    result = pp.preprocess("Une table très jolie!", "+Dimensions : 60 x 33 cm")
    assert result.text == "tabl tres jol dimens cm"
    assert result.language == "fr"


def test_merge_fields_keeps_title_first_and_skips_empty_parts():
    assert pp.merge_fields("Titre", "Desc") == "Titre Desc"
    assert pp.merge_fields("Titre", "") == "Titre"
    assert pp.merge_fields("", "  Desc ") == "Desc"
    assert pp.merge_fields("", "") == ""


def test_strip_html_unescapes_twice_and_drops_tags():
    assert pp.strip_html("id&amp;eacute;es <b>en</b> gras<br>") == "idées  en  gras "
    assert pp.strip_html("&#43;Dimensions") == "+Dimensions"


def test_keep_letters_drops_digits_and_punctuation():
    assert pp.keep_letters("jolie! +Dimensions : 60 x 33 cm") == "jolie Dimensions x cm"
    assert pp.keep_letters("l'été_2020") == "l été"


def test_fold_accents():
    assert pp.fold_accents("très élégant façade") == "tres elegant facade"
    assert pp.fold_accents("Größe") == "Große"


@pytest.mark.parametrize("word", ["une", "the", "und", "les", "and"])
def test_stop_words_cover_french_english_german(word):
    assert word in pp.stop_words()


def test_units_are_not_stop_words():
    """Units name product kinds (the study's frequent words: cm, mm); the list must keep them."""
    assert not {"cm", "mm", "kg", "ml"} & pp.stop_words()


def test_normalize_words_drops_one_letter_and_stop_words_then_stems():
    assert pp.normalize_words("Une table très jolie Dimensions x cm") == ["tabl", "tres", "jol", "dimens", "cm"]
    assert pp.normalize_words("a b c") == []


def test_stem_uses_the_accented_form():
    assert pp.stem("très") == "tres"
    assert pp.stem("piscines") == "piscin"


def test_preprocess_handles_html_description_and_empty_input():
    result = pp.preprocess("Filtre pour piscine", "<p>Cartouche &eacute;l&eacute;gante</p>")
    assert result.text == "filtr piscin cartouch eleg"
    assert pp.preprocess("", "").text == ""


def test_cleaned_view_keeps_digits_and_punctuation_for_character_ngrams():
    result = pp.preprocess("Une table très jolie!", "+Dimensions : 60&nbsp;x 33 <b>cm</b>")
    assert result.cleaned == "une table tres jolie! +dimensions : 60 x 33 cm"
    assert pp.clean("  A\tB\n  Été ") == "a b ete"
