"""`python -m fusion_service [--port 50054 --models-dir models ...]`; `--help` lists the settings."""

import sys

from common.server import main
from fusion_service.server import FusionService, FusionServiceSettings

if __name__ == "__main__":
    main("fusion_service", FusionServiceSettings, FusionService, sys.argv[1:])
