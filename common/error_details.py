"""A `ServiceError` on the wire: gRPC's rich error model, so clients decide on data, not on text.

The server sends a google.rpc.Status in the trailers (`grpc-status-details-bin`, grpcio-status):
a `BadRequest` field violation naming the field at fault (`images[2].data`) and, for a condition
of the server such as a full queue, an `ErrorInfo` with its reason. The message stays for people;
a program reads `RpcErrorDetails`, whatever the message says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from common.errors import ServiceError

#: ErrorInfo.domain of this project's reasons.
DOMAIN = "rakuten.serving"

_ITEM = re.compile(r"^(\w+)\[(\d+)\](.*)$")


def _packed(message) -> any_pb2.Any:
    detail = any_pb2.Any()
    detail.Pack(message)
    return detail


def to_status(error: ServiceError) -> grpc.Status:
    """The status a client receives for `error`: code, message and structured details."""
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    if error.field is not None:
        status.details.append(_packed(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=error.field, description=error.description)])))
    if error.reason is not None:
        status.details.append(_packed(error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN)))
    return rpc_status.to_status(status)


@dataclass(frozen=True)
class RpcErrorDetails:
    """What a failed call's status says: its code and message, and its structured details."""

    code: grpc.StatusCode
    message: str
    field_violations: tuple[error_details_pb2.BadRequest.FieldViolation, ...] = ()
    reason: str | None = None  # ErrorInfo.reason, when its domain is ours

    @classmethod
    def of(cls, error: grpc.aio.AioRpcError | grpc.RpcError) -> "RpcErrorDetails":
        violations, reason = [], None
        try:
            status = rpc_status.from_call(error)
        except ValueError:  # details that contradict the code or message: none to trust
            status = None
        for detail in status.details if status is not None else ():
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations += bad_request.field_violations
            elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                if info.domain == DOMAIN:
                    reason = info.reason
        return cls(error.code(), error.details() or "", tuple(violations), reason)


def field_item(field: str, collection: str) -> tuple[int, str] | None:
    """`images[2].data` in collection `images` -> (2, '.data'); None for a field of no item of it."""
    match = _ITEM.match(field)
    if match is None or match.group(1) != collection:
        return None
    return int(match.group(2)), match.group(3)
