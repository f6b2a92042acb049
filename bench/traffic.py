"""Real request traffic for load runs: products from DATA/traffic in the catalogue's mix.

DATA/traffic holds unlabelled products of the challenge's test set: texts with their images, and
images without a text. Requests are drawn from three pools, in the proportions of the labelled
catalogue (`catalog.csv`: about 84% text only, 10% image only, 6% both) unless a mix is given:
  text+image  a traffic text with its image
  text        a traffic text alone (the traffic sample has no text-only product; the catalogue's
              text-only products are texts like these)
  image       a traffic image that no traffic text refers to
The draw is seeded, so two runs send the same products in the same order.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gateway.client import Product

KINDS = ("text+image", "text", "image")


@dataclass(frozen=True)
class Traffic:
    products: list[Product]
    kinds: list[str]  # the pool each product came from, aligned with products
    mix: dict[str, float]

    def count(self, kind: str) -> int:
        return self.kinds.count(kind)

    def describe(self) -> str:
        return ", ".join(f"{kind} {self.count(kind)} ({self.mix[kind]:.0%})" for kind in KINDS)


def parse_mix(text: str) -> dict[str, float]:
    """'text+image=0.06,text=0.84,image=0.10' -> weights over KINDS (normalised; missing kinds 0)."""
    weights = dict.fromkeys(KINDS, 0.0)
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, value = part.partition("=")
        if kind not in weights:
            raise ValueError(f"mix: unknown kind {kind!r}, use {', '.join(KINDS)}")
        weights[kind] = float(value)
    total = sum(weights.values())
    if total <= 0 or min(weights.values()) < 0:
        raise ValueError(f"mix: weights must be >= 0 and not all 0, got {text!r}")
    return {kind: weight / total for kind, weight in weights.items()}


def catalogue_mix(root: Path) -> dict[str, float]:
    """The share of text+image, text-only and image-only products among the labelled products."""
    counts = dict.fromkeys(KINDS, 0)
    with (root / "catalog.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            text, image = row["has_text"] == "True", row["has_image"] == "True"
            counts["text+image" if text and image else "text" if text else "image"] += 1
    total = sum(counts.values())
    return {kind: n / total for kind, n in counts.items()}


def load_traffic(root: Path, count: int = 1000, mix: dict[str, float] | None = None, seed: int = 0) -> Traffic:
    """`count` products drawn from the traffic pools with the `mix` weights (default: the catalogue's)."""
    traffic = root / "traffic"
    images = {path.name: path for path in sorted((traffic / "images").glob("*.jpg"))}
    with (traffic / "X_test.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not images:
        raise FileNotFoundError(f"no traffic products under {traffic} (X_test.csv and images/)")
    paired = [(row, images[name]) for row in rows
              if (name := f"image_{row['imageid']}_product_{row['productid']}.jpg") in images]
    referenced = {path.name for _, path in paired}
    pools = {"text+image": paired, "text": [(row, None) for row in rows],
             "image": [(None, path) for name, path in images.items() if name not in referenced]}
    mix = mix or catalogue_mix(root)
    kinds = [kind for kind in KINDS if mix[kind] > 0 and pools[kind]]
    weights = np.array([mix[kind] for kind in kinds])
    rng = np.random.default_rng(seed)
    drawn = rng.choice(len(kinds), size=count, p=weights / weights.sum())
    products, chosen = [], []
    for index in drawn:
        kind = kinds[index]
        row, path = pools[kind][rng.integers(len(pools[kind]))]
        products.append(Product(designation=row["designation"] if row else "",
                                description=row["description"] if row else "",
                                image=path.read_bytes() if path else b""))
        chosen.append(kind)
    return Traffic(products, chosen, mix)
