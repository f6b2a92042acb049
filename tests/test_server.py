"""The serving kit's server, in process, with a fake servable: health while loading and
draining, error mapping to status codes, metrics and reflection."""

import asyncio
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from common.errors import InvalidInput, TooLarge
from common.server import start_server
from common.settings import ServiceSettings
from rakuten.v1 import text_pb2, text_pb2_grpc

SERVICE = "rakuten.v1.TextEncoder"


class FakeTextService(text_pb2_grpc.TextEncoderServicer):
    """Answers by the designation: 'bad' -> InvalidInput, 'big' -> TooLarge, 'crash' -> a bug."""

    service_names = (SERVICE,)

    def __init__(self):
        self.loaded = asyncio.Event()
        self.stopped = False

    def register(self, server):
        text_pb2_grpc.add_TextEncoderServicer_to_server(self, server)

    async def start(self):
        await self.loaded.wait()

    async def stop(self):
        self.stopped = True

    async def Encode(self, request, context):
        word = request.texts[0].designation
        if word == "bad":
            raise InvalidInput("texts[0].designation: bad on purpose")
        if word == "big":
            raise TooLarge("texts: too many on purpose")
        if word == "crash":
            raise KeyError("a bug")
        return text_pb2.EncodeTextResponse(results=[text_pb2.TextEncoding(language="fr")])


def status(channel, service=""):
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service)).status


def encode(channel, designation):
    stub = text_pb2_grpc.TextEncoderStub(channel)
    return stub.Encode(text_pb2.EncodeTextRequest(texts=[text_pb2.TextInput(designation=designation)]), timeout=5)


def test_server_lifecycle_errors_metrics_and_reflection(port_factory):
    settings = ServiceSettings(host="127.0.0.1", port=port_factory(), metrics_port=0, shutdown_grace_seconds=1)
    servable = FakeTextService()
    port = settings.port

    async def in_thread(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def scenario():
        starting = asyncio.ensure_future(start_server(servable, settings))
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        # The port answers health before the model is loaded: NOT_SERVING.
        for _ in range(100):
            try:
                assert await in_thread(status, channel, SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
                break
            except grpc.RpcError:
                await asyncio.sleep(0.05)
        else:
            pytest.fail("server never answered health checks")
        servable.loaded.set()
        running = await starting
        assert await in_thread(status, channel, SERVICE) == health_pb2.HealthCheckResponse.SERVING
        assert await in_thread(status, channel, "") == health_pb2.HealthCheckResponse.SERVING

        assert (await in_thread(encode, channel, "ok")).results[0].language == "fr"
        for word, code, text in [("bad", grpc.StatusCode.INVALID_ARGUMENT, "texts[0].designation: bad on purpose"),
                                 ("big", grpc.StatusCode.RESOURCE_EXHAUSTED, "too many on purpose"),
                                 ("crash", grpc.StatusCode.INTERNAL, "internal error: KeyError")]:
            with pytest.raises(grpc.RpcError) as caught:
                await in_thread(encode, channel, word)
            assert caught.value.code() == code and text in caught.value.details()
        assert (await in_thread(encode, channel, "ok")).results, "the server survives a bug"

        database = ProtoReflectionDescriptorDatabase(channel)
        assert {SERVICE, "grpc.health.v1.Health"} <= set(await in_thread(database.get_services))

        url = f"http://127.0.0.1:{running.metrics_port}/metrics"
        body = (await in_thread(lambda: urllib.request.urlopen(url, timeout=5).read())).decode()
        assert 'grpc_server_handled_total{grpc_code="INTERNAL",grpc_method="Encode",grpc_service="rakuten.v1.TextEncoder"}' in body
        assert 'grpc_server_handling_seconds_bucket{grpc_method="Encode",grpc_service="rakuten.v1.TextEncoder",le="0.001"}' in body

        await running.shutdown()
        assert servable.stopped
        channel.close()

    asyncio.run(scenario())
