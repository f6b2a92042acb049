"""`python -m image_service [--port 50053 --models-dir models ...]`; `--help` lists the settings."""

import sys

from common.server import main
from image_service.server import ImageService, ImageServiceSettings

if __name__ == "__main__":
    main("image_service", ImageServiceSettings, ImageService, sys.argv[1:])
