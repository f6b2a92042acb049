"""One server interceptor for every unary call: metrics, and exceptions mapped to gRPC status.

Domain code raises `ServiceError` subclasses (InvalidInput, TooLarge, ...); the client sees that
status with the message as details, and its field and reason as the rich error model's details
(`common.error_details`). Anything unexpected is logged with its traceback and becomes
INTERNAL with a short message, and the server keeps running. Streaming calls (health Watch,
reflection) pass through untouched.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from common import metrics
from common.error_details import to_status
from common.errors import ServiceError

log = logging.getLogger(__name__)


def _split_method(full_method: str) -> tuple[str, str]:
    """'/rakuten.v1.TextEncoder/Encode' -> ('rakuten.v1.TextEncoder', 'Encode')."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service or "unknown", method or "unknown"


class ServingInterceptor(grpc.aio.ServerInterceptor):
    """Counts, times and maps errors of every unary-unary handler."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        service, method = _split_method(handler_call_details.method)
        behavior = handler.unary_unary

        async def observed(request, context: grpc.aio.ServicerContext):
            metrics.GRPC_STARTED.labels(service, method).inc()
            in_flight = metrics.GRPC_IN_FLIGHT.labels(service, method)
            in_flight.inc()
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return await behavior(request, context)
            except ServiceError as error:
                code = error.code
                status = to_status(error)
                await context.abort(status.code, status.details, status.trailing_metadata)
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as error:
                code = grpc.StatusCode.INTERNAL
                log.exception("unhandled error", extra={"grpc_method": f"{service}/{method}"})
                await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}")
            finally:
                in_flight.dec()
                metrics.GRPC_LATENCY.labels(service, method).observe(time.perf_counter() - started)
                metrics.GRPC_HANDLED.labels(service, method, code.name).inc()

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
