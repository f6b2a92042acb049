"""Errors on the wire: the serving kit sends a ServiceError's field and reason as gRPC's rich error
model, and `RpcErrorDetails` reads them back from the client's error, whatever the message."""

import asyncio

import grpc
import pytest
from google.rpc.error_details_pb2 import BadRequest

from common.error_details import RpcErrorDetails, field_item
from common.errors import InvalidInput, QueueFull, ServiceError, TooLarge
from common.server import start_server
from common.settings import ServiceSettings
from common.validation import check_product_text
from image_service.preprocessing import ImageLimits, open_image
from rakuten.v1 import text_pb2, text_pb2_grpc

REFUSALS = {
    "field": InvalidInput.at("texts[2].designation", "rejected"),
    "queue": QueueFull("text: queue full (8 waiting, limit 8); retry later"),
    "plain": TooLarge("texts: too many"),
    "bug": KeyError("a bug"),
}


class Refusing(text_pb2_grpc.TextEncoderServicer):
    service_names = ("rakuten.v1.TextEncoder",)

    def register(self, server):
        text_pb2_grpc.add_TextEncoderServicer_to_server(self, server)

    async def start(self):
        pass

    async def stop(self):
        pass

    async def Encode(self, request, context):
        raise REFUSALS[request.texts[0].designation]


@pytest.mark.parametrize("name, code, violations, reason", [
    ("field", grpc.StatusCode.INVALID_ARGUMENT, (BadRequest.FieldViolation(field="texts[2].designation", description="rejected"),), None),
    ("queue", grpc.StatusCode.RESOURCE_EXHAUSTED, (), "QUEUE_FULL"),
    ("plain", grpc.StatusCode.RESOURCE_EXHAUSTED, (), None),
    ("bug", grpc.StatusCode.INTERNAL, (), None),
])
def test_the_interceptor_sends_field_and_reason_as_status_details(port_factory, name, code, violations, reason):
    async def scenario():
        settings = ServiceSettings(host="127.0.0.1", port=port_factory(), reflection=False, shutdown_grace_seconds=0)
        running = await start_server(Refusing(), settings, with_metrics=False)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                stub = text_pb2_grpc.TextEncoderStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Encode(text_pb2.EncodeTextRequest(texts=[text_pb2.TextInput(designation=name)]),
                                      timeout=5)
                return RpcErrorDetails.of(caught.value)
        finally:
            await running.server.stop(0)

    details = asyncio.run(scenario())
    assert details.code == code
    assert details.field_violations == violations and details.reason == reason
    if isinstance(REFUSALS[name], ServiceError):
        assert details.message == REFUSALS[name].message


def test_field_item_reads_an_items_position_from_a_field_path():
    assert field_item("images[2].data", "images") == (2, ".data")
    assert field_item("texts[12]", "texts") == (12, "")
    assert field_item("texts[1].designation", "images") is None
    assert field_item("images", "images") is None


def test_services_name_the_field_at_fault():
    with pytest.raises(InvalidInput) as caught:
        open_image(b"", "images[3].data", ImageLimits())
    assert caught.value.field == "images[3].data" and caught.value.message.startswith("images[3].data: ")
    with pytest.raises(TooLarge) as caught:
        check_product_text("texts[1]", "x" * 11, "", max_designation_chars=10, max_description_chars=10)
    assert caught.value.field == "texts[1].designation" and caught.value.description == "11 characters, the limit is 10"
