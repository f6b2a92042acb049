"""`python -m web [--port 8080 --gateway-address localhost:50051]`; `--help` lists the settings."""

from __future__ import annotations

import logging
import sys

from aiohttp import web

from common.logs import configure_logging
from common.settings import load_settings
from web.app import create_app
from web.settings import WebSettings


def main(argv: list[str]) -> None:
    settings = load_settings(WebSettings, argv)
    configure_logging("web", settings.log_level, settings.log_format)
    url = f"http://{settings.host}:{settings.port}/"
    logging.getLogger(__name__).info(f"listening on {url}, gateway {settings.gateway_address}",
                                     extra={"url": url, "gateway": settings.gateway_address})
    # run_app stops on SIGTERM and SIGINT, letting requests in flight finish within the grace period.
    web.run_app(create_app(settings), host=settings.host, port=settings.port,
                shutdown_timeout=settings.shutdown_grace_seconds, print=None)


if __name__ == "__main__":
    main(sys.argv[1:])
