"""`python -m text_service [--port 50052 --models-dir models ...]`; `--help` lists the settings."""

import sys

from common.server import main
from text_service.server import TextService, TextServiceSettings

if __name__ == "__main__":
    main("text_service", TextServiceSettings, TextService, sys.argv[1:])
