"""ProductClassifier: the public API; fans out to the text and image services, then fusion."""
