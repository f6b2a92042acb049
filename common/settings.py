"""Service settings from command-line flags and environment variables with the same names.

`--max-batch-size 16` and `MAX_BATCH_SIZE=16` set the same field; a flag wins over the
environment, which wins over the default. pydantic validates types and ranges, so a bad value
stops the service at start-up with a message naming the setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.runtime import RuntimeChoice, RuntimeUnavailable, check_choice
from common.tls import ServerTLS

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def port_field(default: int) -> Any:
    """The gRPC port setting; services pass their port from common/services.py."""
    return Field(default, ge=0, le=65535, description="gRPC port (0: pick a free one)")


def metrics_port_field(default: int) -> Any:
    """The Prometheus /metrics port setting; services pass theirs from common/services.py."""
    return Field(default, ge=0, le=65535, description="Prometheus /metrics port (0: pick a free one)")


class ServiceSettings(BaseSettings):
    """What every service can be told; each service adds its own fields in a subclass."""

    model_config = SettingsConfigDict(
        cli_kebab_case=True, cli_implicit_flags=True, case_sensitive=False, extra="ignore",
        protected_namespaces=(),
    )

    host: str = Field("0.0.0.0", description="address the gRPC server binds")
    port: int = port_field(50050)
    metrics_port: int = metrics_port_field(9100)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log threshold")
    log_format: Literal["json", "text"] = Field("json", description="json lines for collectors, text for people")
    shutdown_grace_seconds: float = Field(10.0, ge=0, description="time in-flight calls get after SIGTERM")
    max_message_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="largest gRPC message accepted")
    reflection: bool = Field(True, description="serve gRPC server reflection")
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate (chain) of this server: serve TLS instead of plaintext")
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file (unencrypted)")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA bundle: clients must present a certificate it signed (mutual TLS)")
    health_port: int | None = Field(
        None, ge=0, le=65535,
        description="plaintext port serving grpc.health.v1 only, for probes that cannot speak TLS (0: pick a free one)")

    def server_tls(self) -> ServerTLS:
        return ServerTLS(self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file)

    @model_validator(mode="after")
    def _check_tls(self):
        """Half a key pair or an unreadable certificate stops the service at start, naming the setting."""
        self.server_tls()
        return self


class ModelServiceSettings(ServiceSettings):
    """Settings of a service that serves a model bundle with dynamic batching."""

    models_dir: Path = Field(PROJECT_ROOT / "models", description="root of the model bundles")
    model_name: str = Field("model", description="bundle folder under models_dir")
    model_poll_seconds: float = Field(10.0, ge=0, description="how often to look for a newer version (0: never)")
    max_batch_size: int = Field(32, ge=1, le=4096, description="most items in one model call")
    max_batch_delay_ms: float = Field(5.0, ge=0, le=10_000, description="longest an item waits for others")
    max_queue_size: int = Field(1024, ge=1, description="items waiting beyond which calls get RESOURCE_EXHAUSTED")
    max_items_per_request: int = Field(256, ge=1, description="most products/images/inputs in one call")
    default_top_k: int = Field(5, ge=1, description="top_k used when a request leaves it at 0")
    runtime: RuntimeChoice = Field(
        "auto", description="inference runtime: auto (ONNX Runtime when the bundle has model.onnx, "
                            "on the GPU when it can; else TensorFlow), onnx or tensorflow")
    intra_op_threads: int = Field(0, ge=0, description="threads inside one model op (0: the node's CPUs)")
    inter_op_threads: int = Field(0, ge=0, description="model ops run side by side (0: 1)")

    @model_validator(mode="after")
    def _check_runtime(self):
        """An explicit runtime that is not installed stops the service at start, saying so."""
        try:
            check_choice(self.runtime)
        except RuntimeUnavailable as error:
            raise ValueError(str(error)) from None
        return self


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def load_settings(cls: type[SettingsT], argv: list[str] | None = None, **overrides) -> SettingsT:
    """Settings from `argv` flags (None: no flags, environment and defaults only) and overrides."""
    if argv is None:
        return cls(**overrides)
    return cls(_cli_parse_args=argv, **overrides)
