"""The HTTP front's routes: the page, the examples, and `POST /v1/classify` over the gateway.

Every answer under /v1/ is JSON, failures included ({"error": {...}}, web/errors.py), so the page
always has a readable message to show; nothing is ever answered with a stack trace.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import grpc
from aiohttp import web

from gateway.client import Answer, AsyncClassifierClient
from web.errors import RequestError, error_response, grpc_error_response
from web.examples import BY_ID, EXAMPLES
from web.form import FormLimits, read_product_form
from web.settings import WebSettings

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
SETTINGS = web.AppKey("settings", WebSettings)
CLIENT = web.AppKey("client", AsyncClassifierClient)

#: The page loads nothing from elsewhere; the browser is told to refuse it if it ever tried.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html")


async def healthz(request: web.Request) -> web.Response:
    """Liveness of this process only: a gateway that is down shows on the page as a 503."""
    return web.json_response({"status": "ok"})


async def list_examples(request: web.Request) -> web.Response:
    return web.json_response({"examples": [example.summary() for example in EXAMPLES]})


async def example_image(request: web.Request) -> web.Response:
    example = BY_ID.get(request.match_info["id"])
    if example is None or not example.has_image:
        raise web.HTTPNotFound(reason="no such example image")
    return web.Response(body=example.image(), content_type="image/jpeg",
                        headers={"Cache-Control": "public, max-age=3600"})


def answer_json(answer: Answer, round_trip_seconds: float) -> dict:
    """The gateway's answer in plain JSON, plus the time the call took as seen from here."""
    return {"categories": [asdict(category) for category in answer.categories],
            "modalities": answer.modalities, "needs_review": answer.needs_review, "degraded": answer.degraded,
            "degraded_reason": answer.degraded_reason, "language": answer.language,
            "models": answer.models, "timings": answer.timings, "round_trip_seconds": round_trip_seconds}


async def classify(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    try:
        product, top_k = await read_product_form(
            request, FormLimits(settings.max_image_bytes, settings.max_text_bytes))
    except RequestError as error:
        return error_response(error.status, error.message)
    started = time.perf_counter()
    try:
        answer = await request.app[CLIENT].classify(product, top_k=top_k)
    except grpc.RpcError as error:
        log.warning("gateway refused or failed", extra={"code": error.code().name, "details": error.details()})
        return grpc_error_response(error)
    return web.json_response(answer_json(answer, time.perf_counter() - started))


@web.middleware
async def json_errors(request: web.Request, handler) -> web.StreamResponse:
    """API errors as JSON; any unexpected exception as a short 500 (its traceback goes to the log)."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400 or not request.path.startswith("/v1/"):
            raise
        return error_response(error.status, f"{request.method} {request.path}: {error.reason}")
    except Exception:
        log.exception("unhandled error", extra={"path": request.path})
        return error_response(500, "the web front failed on this request; its log has the details")


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)


async def _gateway_client(app: web.Application):
    """One gRPC channel for the app's lifetime, opened inside the server's event loop."""
    settings = app[SETTINGS]
    # A person waits at the page: a gateway that is not there is said at once (503), not after the
    # timeout; calls that meet a closed connection are still retried (common.channels).
    app[CLIENT] = AsyncClassifierClient(settings.gateway_address, timeout=settings.gateway_timeout_seconds,
                                        wait_for_ready=False)
    yield
    await app[CLIENT].close()


def create_app(settings: WebSettings) -> web.Application:
    app = web.Application(middlewares=[json_errors])
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_gateway_client)
    app.on_response_prepare.append(_security_headers)
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/examples", list_examples)
    app.router.add_get("/v1/examples/{id}/image.jpg", example_image)
    app.router.add_post("/v1/classify", classify)
    app.router.add_static("/static/", STATIC)
    return app
