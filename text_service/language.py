"""Which language a product text is in: one function, detectors behind it, the choice a setting.

The model never reads the language (there is no translation step); it is returned to callers so
they can see what the model was given. The study used `langdetect`, which costs about 10 ms a
product and is often wrong on short titles ("FIFA 21 PS4" -> de). The default is `py3langid`
(langid.py's naive Bayes model over byte n-grams, shipped inside the wheel, nothing downloaded)
restricted to the catalogue's languages and reading at most `MAX_CHARS` characters: about
0.08 ms of CPU a product (langdetect 4.4 ms), agrees with langdetect on 99% of texts of 200+
characters and is right more often on short titles (figures in README, `make bench-language`). `langdetect` stays selectable
(`--language-detector langdetect`) as the study's reference.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Literal, get_args

UNKNOWN_LANGUAGE = "unknown"

#: The languages the catalogue's texts are written in (about 81% French); py3langid picks among
#: these only, so a short title cannot come out as Indonesian or Norwegian.
CATALOGUE_LANGUAGES = ("fr", "en", "de", "it", "es")

#: How many characters of a text py3langid reads: a title and the start of a description say
#: the language, a 50,000-character description would cost 100 times more. langdetect keeps its
#: own bound (10,000 characters), so the reference stays as the study ran it.
MAX_CHARS = 500

LanguageDetector = Literal["py3langid", "langdetect"]
DETECTORS: tuple[str, ...] = get_args(LanguageDetector)
DEFAULT_DETECTOR: LanguageDetector = "py3langid"

_LETTER = re.compile(r"[^\W\d_]")


@functools.cache
def load_detector(name: LanguageDetector) -> Callable[[str], str]:
    """The detector `name` as a function text -> ISO 639-1 code, its model loaded once (about 2 s
    for py3langid: a service calls this at start so no request pays for it)."""
    if name == "py3langid":
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        identifier = LanguageIdentifier.from_model_file(MODEL_FILE)
        identifier.set_languages(CATALOGUE_LANGUAGES)
        return lambda text: identifier.classify(text[:MAX_CHARS])[0]
    if name == "langdetect":
        import langdetect

        factory = langdetect.DetectorFactory()
        factory.load_profile(langdetect.PROFILES_DIRECTORY)
        factory.seed = 0  # langdetect samples n-grams at random: a fixed seed, same text same answer

        def detect(text: str) -> str:
            detector = factory.create()
            detector.append(text)
            try:
                return detector.detect()
            except langdetect.LangDetectException:
                return UNKNOWN_LANGUAGE
        return detect
    raise ValueError(f"unknown language detector {name!r}, expected one of {', '.join(DETECTORS)}")


def detect_language(text: str, detector: LanguageDetector = DEFAULT_DETECTOR) -> str:
    """ISO 639-1 code of `text` from `detector`, or "unknown" for a text without letters.
    Deterministic: the same text always gets the same answer."""
    if not _LETTER.search(text):
        return UNKNOWN_LANGUAGE
    return load_detector(detector)(text)
