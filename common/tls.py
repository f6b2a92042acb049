"""TLS and mutual TLS on every gRPC hop, from certificate paths; the one way this project opens
a client channel (gateway to model services, `ClassifierClient`, the tests' health waits).

Paths are checked when the settings are read: a file that cannot be read, a file that holds no
PEM certificate, a key that does not match its certificate or half a pair stops the process at
start with a message naming the setting, rather than failing every handshake later.

A server reloads its certificate, key and client CA when the files change (cert-manager renews
them in place in Kubernetes): gRPC asks `CertificateReloader` before each new handshake, which
compares the files' modification times and sizes and rereads them only when they changed.
Connections already open keep the certificate they were made with. A renewal caught half
written (a key that does not match its certificate yet) is skipped, logged, and tried again at
the next handshake, so the server keeps serving with the last good pair.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import grpc

AnyPath = Path | str

log = logging.getLogger(__name__)


class TLSConfigError(ValueError):
    """A TLS setting is inconsistent or names an unusable file (a ValueError, so pydantic reports it)."""


def _read(name: str, path: AnyPath) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise TLSConfigError(f"{name}: cannot read {path}: {error.strerror or error}") from None


def _check_ca(name: str, path: AnyPath) -> None:
    _read(name, path)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(path))
    except ssl.SSLError as error:
        raise TLSConfigError(f"{name}: {path} holds no PEM certificate ({error.reason or error})") from None


def _check_pair(naming: str, cert: AnyPath | None, key: AnyPath | None) -> None:
    """Both or neither; readable; and the key is the certificate's (unencrypted: gRPC takes no passphrase)."""
    cert_name, key_name = naming.format("cert"), naming.format("key")
    if (cert is None) != (key is None):
        given, missing = (cert_name, key_name) if cert is not None else (key_name, cert_name)
        raise TLSConfigError(f"{given} is set but {missing} is not: give both")
    if cert is None:
        return
    _read(cert_name, cert)
    _read(key_name, key)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(str(cert), str(key), password=b"")
    except ssl.SSLError as error:
        raise TLSConfigError(f"{cert_name} {cert} and {key_name} {key} are not a PEM certificate and its "
                             f"unencrypted private key ({error.reason or error})") from None


@dataclass(frozen=True)
class ServerTLS:
    """TLS on a server's port when `cert_file` is set; with `client_ca_file`, mutual TLS: clients
    must present a certificate that CA signed, or the handshake fails."""

    cert_file: AnyPath | None = None
    key_file: AnyPath | None = None
    client_ca_file: AnyPath | None = None
    #: How messages name the settings: "tls_{}_file" -> tls_cert_file, tls_key_file, tls_client_ca_file.
    naming: str = field(default="tls_{}_file", compare=False, repr=False)

    def __post_init__(self):
        _check_pair(self.naming, self.cert_file, self.key_file)
        if self.client_ca_file is not None:
            if self.cert_file is None:
                raise TLSConfigError(f"{self.naming.format('client_ca')} needs {self.naming.format('cert')} "
                                     f"and {self.naming.format('key')}: mutual TLS is TLS first")
            _check_ca(self.naming.format("client_ca"), self.client_ca_file)

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    @property
    def mode(self) -> str:
        return "mtls" if self.client_ca_file is not None else "tls" if self.enabled else "plaintext"

    def certificate_configuration(self) -> grpc.ServerCertificateConfiguration:
        """The files as they are now, checked as at start (a half-written renewal raises)."""
        _check_pair(self.naming, self.cert_file, self.key_file)
        ca = self.client_ca_file
        if ca is not None:
            _check_ca(self.naming.format("client_ca"), ca)
        return grpc.ssl_server_certificate_configuration(
            [(_read(self.naming.format("key"), self.key_file), _read(self.naming.format("cert"), self.cert_file))],
            root_certificates=_read(self.naming.format("client_ca"), ca) if ca is not None else None)

    def credentials(self) -> grpc.ServerCredentials:
        """Credentials that follow the files: renewed certificates are used from the next handshake."""
        reloader = CertificateReloader(self)
        return grpc.dynamic_ssl_server_credentials(
            reloader.initial, reloader, require_client_authentication=self.client_ca_file is not None)


class CertificateReloader:
    """gRPC's certificate-configuration fetcher: a new configuration when the files changed, else None."""

    def __init__(self, tls: ServerTLS):
        self.tls = tls
        self._lock = threading.Lock()
        self._seen = self._stamp()
        self.initial = tls.certificate_configuration()
        self.reloads = 0

    def _stamp(self) -> tuple:
        stamps = []
        for path in (self.tls.cert_file, self.tls.key_file, self.tls.client_ca_file):
            try:
                stat = os.stat(path) if path is not None else None
            except OSError:
                stat = None
            stamps.append((stat.st_mtime_ns, stat.st_size, stat.st_ino) if stat else None)
        return tuple(stamps)

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            stamp = self._stamp()
            if stamp == self._seen:
                return None
            try:
                configuration = self.tls.certificate_configuration()
            except TLSConfigError as error:
                log.warning("renewed TLS files not usable yet; serving the previous certificate",
                            extra={"error": str(error)})
                return None
            self._seen = stamp
            self.reloads += 1
            log.info("TLS certificate reloaded", extra={"cert_file": str(self.tls.cert_file)})
            return configuration


@dataclass(frozen=True)
class ClientTLS:
    """Dial over TLS when `ca_file` (the CA that signed the server's certificate) is set; with
    `cert_file` and `key_file`, present that client certificate (mutual TLS)."""

    ca_file: AnyPath | None = None
    cert_file: AnyPath | None = None
    key_file: AnyPath | None = None
    #: Name to verify in the server's certificate instead of the address's host (tests, a shared certificate).
    server_name: str = ""
    #: How messages name the settings: "{}_file" -> ca_file; the gateway's "backend_tls_{}_file", the CLI's "--tls-{}".
    naming: str = field(default="{}_file", compare=False, repr=False)

    def __post_init__(self):
        ca_name = self.naming.format("ca")
        if self.ca_file is None:
            if self.cert_file is not None or self.key_file is not None or self.server_name:
                raise TLSConfigError(f"{self.naming.format('cert')}, {self.naming.format('key')} and a server "
                                     f"name override need {ca_name}, the CA that signed the server's certificate")
            return
        _check_ca(ca_name, self.ca_file)
        _check_pair(self.naming, self.cert_file, self.key_file)

    @property
    def enabled(self) -> bool:
        return self.ca_file is not None

    def credentials(self) -> grpc.ChannelCredentials:
        mutual = self.cert_file is not None
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.naming.format("ca"), self.ca_file),
            private_key=_read(self.naming.format("key"), self.key_file) if mutual else None,
            certificate_chain=_read(self.naming.format("cert"), self.cert_file) if mutual else None)

    def channel_options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def make_channel(address: str, tls: ClientTLS | None = None, options: Sequence[tuple[str, object]] = (),
                 *, aio: bool = False) -> grpc.Channel | grpc.aio.Channel:
    """A plaintext channel, or a TLS one when `tls` is enabled; `aio` for grpc.aio callers."""
    factory = grpc.aio if aio else grpc
    if tls is None or not tls.enabled:
        return factory.insecure_channel(address, options=list(options))
    return factory.secure_channel(address, tls.credentials(), options=[*options, *tls.channel_options()])
