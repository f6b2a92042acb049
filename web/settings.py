"""Settings of the web front, from flags and environment variables with the same names.

Same rules as the gRPC services (common/settings.py): `--gateway-address host:port` or
`GATEWAY_ADDRESS=host:port`; a flag wins over the environment, which wins over the default. Its
own class because the gRPC server settings (metrics port, reflection, message size) mean nothing
to an HTTP server.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.services import GATEWAY, WEB_PORT

MiB = 1024 * 1024


class WebSettings(BaseSettings):
    model_config = SettingsConfigDict(cli_kebab_case=True, cli_implicit_flags=True, case_sensitive=False,
                                      extra="ignore", cli_prog_name="python -m web")

    host: str = Field("0.0.0.0", description="address the HTTP server binds")
    port: int = Field(WEB_PORT, ge=0, le=65535, description="HTTP port")
    gateway_address: str = Field(GATEWAY.local_address, description="the gateway's gRPC address (host:port)")
    gateway_timeout_seconds: float = Field(10.0, gt=0, description="deadline of each call to the gateway")
    max_image_bytes: int = Field(10 * MiB, ge=1, description="largest image upload accepted (the gateway's limit)")
    max_text_bytes: int = Field(
        256 * 1024, ge=1, description="largest title or description upload; the gateway checks its own character limits")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log threshold")
    log_format: Literal["json", "text"] = Field("json", description="json lines for collectors, text for people")
    shutdown_grace_seconds: float = Field(5.0, ge=0, description="time in-flight requests get after SIGTERM")
