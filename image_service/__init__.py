"""ImageEncoder: image decoding, the 20% border crop, the EfficientNet-Lite0 backbone and the image head."""
