"""Exceptions that carry their gRPC status, so domain code says *what* is wrong, not how to abort.

The server interceptor turns a `ServiceError` into its status with the message as details, and
with what a program decides on as structured details (`common.error_details`): the request field
it is about (`field`), and for a condition of the server rather than of the input, its `reason`.
Any other exception becomes INTERNAL with a short message (the traceback goes to the log).
"""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """An error with the gRPC status a client should see."""

    code = grpc.StatusCode.INTERNAL
    #: A condition of the server that a client may act on (google.rpc.ErrorInfo reason), if any.
    reason: str | None = None

    def __init__(self, message: str, item: int | None = None, field: str | None = None,
                 description: str | None = None):
        super().__init__(message)
        self.message = message
        # The position of the request item the error is about, when it is about one: a stream
        # answers that item with the error and goes on with the others.
        self.item = item
        # The request field at fault, e.g. `images[2].data` (a google.rpc.BadRequest field
        # violation), and what is wrong with it, without the field's name.
        self.field = field
        self.description = message if description is None else description

    @classmethod
    def at(cls, field: str, description: str, item: int | None = None):
        """An error about one request field; its message reads `field: description`."""
        return cls(f"{field}: {description}", item, field=field, description=description)


class InvalidInput(ServiceError):
    """The request is malformed: the message names the field, e.g. `texts[3].designation: ...`."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class TooLarge(ServiceError):
    """The request, or the queue it would join, exceeds a configured limit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class QueueFull(TooLarge):
    """The batcher's queue is full: the server's load, not the caller's input.

    It stays RESOURCE_EXHAUSTED, marked by its ErrorInfo reason, rather than UNAVAILABLE: the
    channels' retry policy (`common.channels`) resends UNAVAILABLE at once, which would multiply
    the load on a saturated service; the gateway degrades instead, and a direct caller decides.
    """

    reason = "QUEUE_FULL"


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
