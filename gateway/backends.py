"""Open channels to the model services and one call to a stage under the caller's deadline.

Channels are created once and kept open. With a `dns:///` address of a headless Kubernetes
Service, `round_robin` spreads calls over every pod behind it (gRPC keeps connections open, so
a plain ClusterIP would pin each gateway to one pod). A stage call gets what is left of the
deadline; UNAVAILABLE (a pod restarting, a connection at its maximum age) is retried once by
gRPC's retry policy in the channel's service config (`common.channels`), after a backoff, within
the deadline; the gateway never waits for a backend that is down (no wait-for-ready): it
degrades at once. INVALID_ARGUMENT and RESOURCE_EXHAUSTED are raised as
`CallerError` with the status's structured details (the pipeline passes back those whose
BadRequest names one of the caller's items, such as an image with too many pixels); anything
else makes the stage fail so the answer can degrade.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import grpc

from common.channels import RetryPolicy, retrying_options
from common.error_details import RpcErrorDetails
from common.tls import ClientTLS, make_channel

CLIENT_ERRORS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)


def open_channel(address: str, max_message_bytes: int, tls: ClientTLS | None = None,
                 retry_backoff_s: float = 0.05) -> grpc.aio.Channel:
    """A channel to one model service, over TLS (mutual with a client certificate) when `tls` says
    so; one retry of UNAVAILABLE (or of a call cancelled by a server shutting down) after up to
    `retry_backoff_s`."""
    retry = RetryPolicy(max_attempts=2, initial_backoff_s=max(retry_backoff_s, 0.001),
                        max_backoff_s=max(retry_backoff_s, 0.001))
    return make_channel(address, tls, aio=True, options=[
        *retrying_options(retry, load_balancing="round_robin", max_message_bytes=max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ])


class CallerError(Exception):
    """A stage refused the input (INVALID_ARGUMENT, RESOURCE_EXHAUSTED): the caller's request, or
    the stage's own condition (ErrorInfo QUEUE_FULL); `status` says which."""

    def __init__(self, stage: str, error: grpc.aio.AioRpcError, seconds: float):
        super().__init__(error.details())
        self.stage = stage
        self.status = RpcErrorDetails.of(error)
        self.seconds = seconds

    @property
    def failure(self) -> str:
        """The stage's failure as people read it in a degraded answer."""
        return f"{self.stage}: {self.status.code.name}: {self.status.message}"


@dataclass
class StageOutcome:
    """A stage's response, or why it failed; with the time it took."""

    stage: str
    response: Any = None
    failure: str = ""
    seconds: float = 0.0
    timed_out: bool = False  # the failure is the deadline's, not the backend's

    @property
    def ok(self) -> bool:
        return self.response is not None

    @property
    def called(self) -> bool:
        return self.ok or bool(self.failure)


async def call_stage(stage: str, method: Callable[..., Awaitable[Any]], request: Any, deadline: float
                     ) -> StageOutcome:
    """`method(request)` before the monotonic `deadline` (the channel's retry policy included)."""
    started = time.monotonic()
    remaining = deadline - started
    if remaining <= 0:
        return StageOutcome(stage, failure=f"{stage}: no time left before the deadline", timed_out=True)
    try:
        response = await method(request, timeout=remaining)
        return StageOutcome(stage, response=response, seconds=time.monotonic() - started)
    except grpc.aio.AioRpcError as error:
        code = error.code()
        if code in CLIENT_ERRORS:
            raise CallerError(stage, error, time.monotonic() - started) from error
        return StageOutcome(stage, failure=f"{stage}: {code.name}: {error.details()}",
                            seconds=time.monotonic() - started,
                            timed_out=code == grpc.StatusCode.DEADLINE_EXCEEDED)
