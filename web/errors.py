"""Failures as HTTP answers a page can show: a status, a short title and the reason, never a trace.

gRPC statuses from the gateway map as grpc-gateway maps them (INVALID_ARGUMENT → 400,
UNAVAILABLE → 503, DEADLINE_EXCEEDED → 504, ...), with one difference: RESOURCE_EXHAUSTED is 413,
not 429, because the gateway raises it for a product over its limits (common.errors.TooLarge);
an overloaded backend reaches callers as UNAVAILABLE, or as a degraded answer.
"""

from __future__ import annotations

from http import HTTPStatus

import grpc
from aiohttp import web

#: Longest reason shown: a gRPC message is a sentence, anything longer is cut.
MAX_MESSAGE_CHARS = 500

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.CANCELLED: 503,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

TITLES = {
    400: "The product was refused",
    401: "Not authenticated",
    403: "Not allowed",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "The product is too large",
    415: "Unsupported upload",
    500: "The classifier failed",
    501: "Not supported by the gateway",
    503: "The classifier is unavailable; try again in a moment",
    504: "The classifier did not answer in time",
}


class RequestError(Exception):
    """A request the web front refuses itself (a bad form), with the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str, code: str | None = None) -> web.Response:
    """{"error": {"status", "code", "title", "message"}}: what the page shows."""
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS - 1] + "…"
    title = TITLES.get(status, "The request failed")
    body = {"status": status, "code": code or _http_code(status), "title": title, "message": message}
    return web.json_response({"error": body}, status=status)


def grpc_error_response(error: grpc.RpcError) -> web.Response:
    """The gateway's status and message as an HTTP error answer."""
    code = error.code()
    status = HTTP_STATUS.get(code, 500)
    message = error.details() or f"the gateway answered {code.name} without a message"
    return error_response(status, message, code.name)


def _http_code(status: int) -> str:
    """A name for errors that did not come from gRPC: the HTTP reason in capitals (BAD_REQUEST)."""
    try:
        return HTTPStatus(status).name
    except ValueError:
        return "ERROR"
