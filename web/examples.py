"""Example products for the page, invented here: French listings and pictures drawn by Pillow.

Nothing comes from the Rakuten data. The pictures are simple drawings of what the listing
sells (a pool, a paperback, a trading card), enough for the image path to have something to
look at; one example has no picture, to show a text-only answer.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import cache
from typing import Callable

from PIL import Image, ImageDraw, ImageFont

SIZE = 480


@dataclass(frozen=True)
class Example:
    id: str
    label: str
    designation: str
    description: str
    draw: Callable[[], Image.Image] | None = None

    @property
    def has_image(self) -> bool:
        return self.draw is not None

    def image(self) -> bytes:
        """The picture as a JPEG file, as a seller would upload it; b"" for none."""
        return _jpeg(self.id) if self.draw is not None else b""

    def summary(self) -> dict:
        return {"id": self.id, "label": self.label, "designation": self.designation,
                "description": self.description,
                "image_url": f"/v1/examples/{self.id}/image.jpg" if self.has_image else None}


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _pool() -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), (200, 228, 245))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 250, SIZE, SIZE), fill=(96, 160, 72))                      # lawn
    draw.ellipse((40, 170, 440, 330), fill=(150, 150, 158))                       # wall seen from above
    draw.ellipse((40, 290, 440, 450), fill=(150, 150, 158))                       # wall, front
    draw.rectangle((40, 250, 440, 370), fill=(150, 150, 158))
    draw.ellipse((58, 180, 422, 318), fill=(40, 140, 215))                        # water
    for offset in (0, 26, 52):                                                    # ripples
        draw.arc((130 + offset, 215 + offset // 3, 300 + offset, 270 + offset // 3), 200, 340,
                 fill=(170, 220, 250), width=4)
    for x in (392, 418):                                                          # ladder
        draw.line((x, 150, x, 330), fill=(230, 230, 235), width=7)
    for y in range(170, 330, 34):
        draw.line((392, y, 418, y), fill=(230, 230, 235), width=6)
    return image


def _book() -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), (226, 200, 160))
    draw = ImageDraw.Draw(image)
    draw.rectangle((120, 50, 372, 440), fill=(60, 40, 30))                        # shadow
    draw.rectangle((108, 40, 360, 430), fill=(150, 28, 40))                       # cover
    draw.rectangle((108, 40, 132, 430), fill=(110, 18, 30))                       # spine
    draw.rectangle((150, 70, 340, 74), fill=(230, 190, 80))
    title = _font(26)
    draw.text((152, 92), "LES OMBRES", font=title, fill=(245, 225, 160))
    draw.text((152, 124), "DU PORT", font=title, fill=(245, 225, 160))
    draw.ellipse((196, 200, 296, 300), outline=(230, 190, 80), width=6)           # emblem: a magnifier
    draw.line((282, 286, 330, 334), fill=(230, 190, 80), width=12)
    draw.text((152, 380), "roman policier", font=_font(18), fill=(240, 220, 200))
    return image


def _card() -> Image.Image:
    hue = Image.linear_gradient("L").resize((512, 512)).rotate(35).crop((141, 96, 371, 416))
    saturation = Image.new("L", hue.size, 150)
    value = Image.new("L", hue.size, 250)
    foil = Image.merge("HSV", (hue, saturation, value)).convert("RGB")         # holographic rainbow
    image = Image.new("RGB", (SIZE, SIZE), (40, 44, 60))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((110, 40, 370, 440), radius=18, fill=(245, 205, 40))   # yellow border
    image.paste(foil, (125, 55))
    draw.rectangle((140, 70, 340, 96), fill=(255, 255, 255))                      # name bar
    draw.text((148, 74), "Dresseur rare", font=_font(18), fill=(30, 30, 30))
    centre, outer, inner = (240, 210), 70, 28
    points = []
    for i in range(10):                                                            # a star
        radius = outer if i % 2 == 0 else inner
        angle = math.pi / 2 + i * math.pi / 5
        points.append((centre[0] + radius * math.cos(angle), centre[1] - radius * math.sin(angle)))
    draw.polygon(points, fill=(255, 250, 220), outline=(200, 120, 20))
    for y in (310, 340, 370):                                                      # attack lines
        draw.rectangle((145, y, 335, y + 14), fill=(255, 255, 255))
    return image


EXAMPLES = (
    Example("piscine", "Piscine hors-sol", "Piscine tubulaire ronde 300 x 76 cm",
            "<p>Piscine hors-sol avec <b>pompe de filtration</b>, bâche de protection et échelle de "
            "sécurité. Liner bleu renforcé, montage sans outils.</p>", _pool),
    Example("roman", "Roman policier", "Roman policier - Les Ombres du port, édition de poche",
            "Un commissaire enquête sur une disparition dans le vieux port de Marseille. Préface de "
            "l'auteur, 320 pages, tome 2 de la série.", _book),
    Example("carte", "Carte à collectionner", "Carte à collectionner holographique rare - booster dresseur",
            "Carte de collection en excellent état, sortie d'un booster scellé. Livrée sous pochette "
            "protectrice.", _card),
    Example("verres", "Verres à vin (sans image)", "Lot de 6 verres à vin en cristal 35 cl",
            "Verres à pied soufflés bouche, passent au lave-vaisselle. Idéal pour les grandes occasions."),
)

BY_ID = {example.id: example for example in EXAMPLES}


@cache
def _jpeg(example_id: str) -> bytes:
    """Drawn once per process: the same bytes every time, so the browser may cache them."""
    buffer = io.BytesIO()
    BY_ID[example_id].draw().save(buffer, "JPEG", quality=90)
    return buffer.getvalue()
