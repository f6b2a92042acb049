"""Exceptions that carry their gRPC status, so domain code says *what* is wrong, not how to abort.

The server interceptor turns a `ServiceError` into its status with the message as details;
any other exception becomes INTERNAL with a short message (the traceback goes to the log).
"""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """An error with the gRPC status a client should see."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, item: int | None = None):
        super().__init__(message)
        self.message = message
        # The position of the request item the error is about, when it is about one: a stream
        # answers that item with the error and goes on with the others.
        self.item = item


class InvalidInput(ServiceError):
    """The request is malformed: the message names the field, e.g. `texts[3].designation: ...`."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class TooLarge(ServiceError):
    """The request, or the queue it would join, exceeds a configured limit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NotReady(ServiceError):
    """No model is loaded yet, or the service is draining: try another replica or later."""

    code = grpc.StatusCode.UNAVAILABLE


class NotFound(ServiceError):
    """A named model or version that this service does not hold."""

    code = grpc.StatusCode.NOT_FOUND


class Unavailable(ServiceError):
    """The backends needed to answer are down or failing; the message says which and why."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    """The caller's deadline left too little time to answer."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
