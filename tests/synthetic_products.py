"""Invented product listings for tests: three categories with words of their own, in French.

Nothing here comes from the Rakuten data.
"""

from __future__ import annotations

import numpy as np

from common.model_bundle import Label

LABELS = [Label(1160, "Carte Collection"), Label(2583, "Autour de la piscine"), Label(2705, "Livre neuf")]

_WORDS = {
    1160: ["carte", "pokémon", "holographique", "rare", "booster", "dresseur", "magic", "deck", "collection"],
    2583: ["piscine", "pompe", "filtration", "bâche", "chlore", "skimmer", "échelle", "hors-sol", "liner"],
    2705: ["roman", "policier", "édition", "poche", "auteur", "chapitre", "illustré", "préface", "tome"],
}
_FILLER = ["pour", "avec", "le", "la", "de", "très", "grand", "nouveau", "lot", "cm"]


def products(count: int, seed: int = 0) -> tuple[list[tuple[str, str]], list[int]]:
    """(designation, description) pairs and their label indices into LABELS."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(count):
        index = int(rng.integers(len(LABELS)))
        words = _WORDS[LABELS[index].code]
        title = " ".join(rng.choice(words, 3)).capitalize()
        description = " ".join(rng.choice(words + _FILLER, 8)) if rng.random() < 0.6 else ""
        texts.append((title, f"<p>{description}</p>" if description else ""))
        labels.append(index)
    return texts, labels
