"""`python -m gateway [--port 50051 --text-address ...]`; `--help` lists the settings."""

import sys

from common.server import main
from gateway.server import Gateway, GatewaySettings

if __name__ == "__main__":
    main("gateway", GatewaySettings, Gateway, sys.argv[1:])
