"""The classify form (multipart/form-data) read into a Product, within byte limits.

Parts are streamed and counted as they arrive, so an oversized upload is refused after
`limit + 1` bytes instead of being buffered whole. Only the form's shape is checked here;
what a product may hold (text lengths in characters, image formats, top_k's range) is the
gateway's to say, and its refusals reach the page as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import BodyPartReader, web

from gateway.client import Product
from web.errors import RequestError

TEXT_FIELDS = ("designation", "description", "top_k")
FIELDS = (*TEXT_FIELDS, "image")
DEFAULT_TOP_K = 3
CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class FormLimits:
    max_image_bytes: int
    max_text_bytes: int


def _size(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB" if n >= 1024 * 1024 else f"{n} bytes"


async def _read_part(part: BodyPartReader, name: str, limit: int) -> bytes:
    data = bytearray()
    while chunk := await part.read_chunk(CHUNK_BYTES):
        data += chunk
        if len(data) > limit:
            raise RequestError(413, f"{name}: over the limit of {_size(limit)}")
    return bytes(data)


async def read_product_form(request: web.Request, limits: FormLimits) -> tuple[Product, int]:
    """(product, top_k) from the request, or RequestError naming the field that is wrong."""
    if not request.content_type.startswith("multipart/"):
        raise RequestError(415, f"send multipart/form-data with the fields {', '.join(FIELDS)}; "
                                f"got {request.content_type or 'no content type'}")
    values: dict[str, bytes] = {}
    try:
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                raise RequestError(400, "nested multipart bodies are not accepted")
            name = part.name or ""
            if name not in FIELDS:
                raise RequestError(400, f"unknown field {name!r}: expected {', '.join(FIELDS)}")
            if name in values:
                raise RequestError(400, f"{name}: sent more than once")
            limit = limits.max_image_bytes if name == "image" else limits.max_text_bytes
            values[name] = await _read_part(part, name, limit)
    except (ValueError, AssertionError) as error:  # what aiohttp raises on a malformed body
        raise RequestError(400, f"malformed multipart body: {error}") from None
    texts = {name: _text(name, values.get(name, b"")) for name in TEXT_FIELDS}
    product = Product(designation=texts["designation"], description=texts["description"],
                      image=values.get("image", b""))
    if not (product.designation.strip() or product.description.strip() or product.image):
        raise RequestError(400, "empty form: send a designation, a description or an image")
    return product, _top_k(texts["top_k"])


def _text(name: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestError(400, f"{name}: not UTF-8 text (byte {error.start})") from None


def _top_k(value: str) -> int:
    if not value.strip():
        return DEFAULT_TOP_K
    try:
        return int(value)
    except ValueError:
        raise RequestError(400, f"top_k: expected a whole number, got {value[:20]!r}") from None
