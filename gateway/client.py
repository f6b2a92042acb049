"""A client for the ProductClassifier API: a class for other Python services, and a command line.

    python -m gateway.client --designation "Piscine tubulaire 300 x 76 cm" --image photo.jpg
    python -m gateway.client --designation "..." --description "..." --top-k 5 --json
    python -m gateway.client classify-file X_test.csv --images images/ --out predictions.csv

The class keeps one channel open for its lifetime: make one and reuse it.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import grpc
from google.protobuf import json_format

from common.channels import retrying_options
from common.services import GATEWAY
from common.tls import ClientTLS, TLSConfigError, make_channel
from rakuten.v1 import classifier_pb2, classifier_pb2_grpc, common_pb2


@dataclass
class Product:
    designation: str = ""
    description: str = ""
    image: bytes = b""
    id: str = ""

    def proto(self) -> classifier_pb2.Product:
        return classifier_pb2.Product(id=self.id, designation=self.designation, description=self.description,
                                      image=self.image)


@dataclass
class Category:
    code: int
    name: str
    score: float


@dataclass
class Answer:
    """A classification, in plain Python types."""

    categories: list[Category]
    modalities: list[str]
    degraded: bool
    degraded_reason: str
    language: str
    models: dict[str, int]
    timings: dict[str, float]
    id: str = ""
    needs_review: bool = False
    raw: classifier_pb2.Classification = field(default=None, repr=False)

    @classmethod
    def from_proto(cls, message: classifier_pb2.Classification) -> "Answer":
        return cls(
            categories=[Category(s.code, s.name, s.score) for s in message.top_k],
            modalities=[common_pb2.Modality.Name(m).removeprefix("MODALITY_").lower() for m in message.modalities],
            degraded=message.degraded, degraded_reason=message.degraded_reason, language=message.language,
            models={m.name: m.version for m in message.models},
            timings={t.stage: t.seconds for t in message.timings}, id=message.id,
            needs_review=message.needs_review, raw=message)


@dataclass
class StreamAnswer:
    """One product's outcome in a stream: its answer, or its error (status code name and message)."""

    id: str
    answer: Answer | None
    error_code: str = ""
    error_message: str = ""

    @classmethod
    def from_proto(cls, message: classifier_pb2.ClassifyStreamResponse) -> "StreamAnswer":
        if message.HasField("error"):
            code = next((c.name for c in grpc.StatusCode if c.value[0] == message.error.code), str(message.error.code))
            return cls(message.id, None, code, message.error.message)
        return cls(message.id, Answer.from_proto(message.classification))


class ClassifierClient:
    """Calls the gateway; raises grpc.RpcError with the server's status and message on failure.

    `tls` for a gateway that serves TLS: `ClientTLS(ca_file=...)`, plus `cert_file` and `key_file`
    under mutual TLS. A call that meets a closed connection (a gateway draining, a connection at
    its maximum age) is sent again by gRPC's retry policy (`common.channels`); with
    `wait_for_ready` (the default) a call made while the gateway restarts waits for it within its
    deadline instead of failing at once.
    """

    def __init__(self, address: str = GATEWAY.local_address, timeout: float = 10.0,
                 max_message_bytes: int = 32 * 1024 * 1024, tls: ClientTLS | None = None,
                 wait_for_ready: bool = True):
        self.timeout = timeout
        self.wait_for_ready = wait_for_ready
        self._channel = make_channel(address, tls,
                                     options=retrying_options(max_message_bytes=max_message_bytes))
        self._stub = classifier_pb2_grpc.ProductClassifierStub(self._channel)

    def classify(self, product: Product, top_k: int = 3, timeout: float | None = None) -> Answer:
        request = classifier_pb2.ClassifyRequest(product=product.proto(), top_k=top_k)
        response = self._stub.Classify(request, timeout=timeout or self.timeout,
                                       wait_for_ready=self.wait_for_ready)
        return Answer.from_proto(response.classification)

    def classify_batch(self, products: list[Product], top_k: int = 3, timeout: float | None = None) -> list[Answer]:
        request = classifier_pb2.ClassifyBatchRequest(products=[p.proto() for p in products], top_k=top_k)
        response = self._stub.ClassifyBatch(request, timeout=timeout or self.timeout,
                                            wait_for_ready=self.wait_for_ready)
        return [Answer.from_proto(c) for c in response.classifications]

    def classify_stream(self, products: Iterable[Product], top_k: int = 3,
                        timeout: float | None = None) -> Iterator[StreamAnswer]:
        """Every product through ClassifyStream; answers as they come (match them by id). `products`
        is read only as fast as the gateway takes them. No deadline unless `timeout` (the whole
        stream); each group of products has the gateway's own."""
        requests = (classifier_pb2.ClassifyRequest(product=p.proto(), top_k=top_k) for p in products)
        call = self._stub.ClassifyStream(requests, timeout=timeout, wait_for_ready=self.wait_for_ready)
        try:
            for response in call:
                yield StreamAnswer.from_proto(response)
        finally:
            call.cancel()

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "ClassifierClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClassifierClient:
    """ClassifierClient for asyncio programs (grpc.aio): calls never block the event loop.

    Make it inside the running loop and reuse it; raises grpc.aio.AioRpcError (a grpc.RpcError)
    with the server's status and message on failure.
    """

    def __init__(self, address: str = GATEWAY.local_address, timeout: float = 10.0,
                 max_message_bytes: int = 32 * 1024 * 1024, tls: ClientTLS | None = None,
                 wait_for_ready: bool = True):
        self.timeout = timeout
        self.wait_for_ready = wait_for_ready
        self._channel = make_channel(address, tls, aio=True,
                                     options=retrying_options(max_message_bytes=max_message_bytes))
        self._stub = classifier_pb2_grpc.ProductClassifierStub(self._channel)

    async def classify(self, product: Product, top_k: int = 3, timeout: float | None = None) -> Answer:
        request = classifier_pb2.ClassifyRequest(product=product.proto(), top_k=top_k)
        response = await self._stub.Classify(request, timeout=timeout or self.timeout,
                                             wait_for_ready=self.wait_for_ready)
        return Answer.from_proto(response.classification)

    async def classify_batch(self, products: list[Product], top_k: int = 3,
                             timeout: float | None = None) -> list[Answer]:
        request = classifier_pb2.ClassifyBatchRequest(products=[p.proto() for p in products], top_k=top_k)
        response = await self._stub.ClassifyBatch(request, timeout=timeout or self.timeout,
                                                  wait_for_ready=self.wait_for_ready)
        return [Answer.from_proto(c) for c in response.classifications]

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncClassifierClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


def render(answer: Answer) -> str:
    """The answer as a person reads it."""
    lines = []
    for rank, category in enumerate(answer.categories, 1):
        bar = "#" * round(category.score * 30)
        lines.append(f"{rank}. {category.code:>5}  {category.name:<32} {category.score:6.1%}  {bar}")
    used = " + ".join(answer.modalities)
    lines.append(f"based on: {used}" + (f"   language: {answer.language}" if answer.language else ""))
    if answer.needs_review:
        lines.append("NEEDS REVIEW: the top score is below the model's review threshold")
    if answer.degraded:
        lines.append(f"DEGRADED: {answer.degraded_reason}")
    lines.append("models: " + ", ".join(f"{name} v{version}" for name, version in answer.models.items()))
    lines.append("time: " + ", ".join(f"{stage} {seconds * 1000:.1f} ms" for stage, seconds in answer.timings.items()))
    return "\n".join(lines)


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """--address and the TLS flags, shared by every command of the client."""
    parser.add_argument("--address", default=GATEWAY.local_address, help="gateway host:port")
    parser.add_argument("--tls-ca", type=Path, help="PEM CA of the gateway's certificate: connect over TLS")
    parser.add_argument("--tls-cert", type=Path, help="PEM client certificate, for a gateway under mutual TLS")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    parser.add_argument("--tls-server-name", default="", help="name to verify in the gateway's certificate")


def connection_tls(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ClientTLS:
    try:
        return ClientTLS(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name, naming="--tls-{}")
    except TLSConfigError as error:
        parser.error(str(error))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["classify-file"]:
        from gateway import classify_file

        return classify_file.main(argv[1:])
    if argv[:1] == ["classify"]:
        argv = argv[1:]
    parser = argparse.ArgumentParser(
        prog="python -m gateway.client [classify]", description="Classify one product.",
        epilog="python -m gateway.client classify-file --help: a CSV file of products through ClassifyStream")
    add_connection_arguments(parser)
    parser.add_argument("--designation", default="", help="product title")
    parser.add_argument("--description", default="", help="product description (HTML allowed)")
    parser.add_argument("--image", type=Path, help="path of the product image (JPEG, PNG, WebP, GIF)")
    parser.add_argument("--top-k", type=int, default=3, help="number of categories (1-27)")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
    parser.add_argument("--json", action="store_true", help="print the raw answer as JSON")
    args = parser.parse_args(argv)
    tls = connection_tls(parser, args)
    product = Product(args.designation, args.description, args.image.read_bytes() if args.image else b"")
    with ClassifierClient(args.address, timeout=args.timeout, tls=tls) as client:
        try:
            answer = client.classify(product, top_k=args.top_k)
        except grpc.RpcError as error:
            print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(json_format.MessageToDict(answer.raw, preserving_proto_field_name=True,
                                                   always_print_fields_with_no_presence=True),
                         ensure_ascii=False, indent=2))
    else:
        print(render(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
