"""The serving kit shared by every service: start-up, health, reflection, metrics, errors,
dynamic batching, model bundles and settings."""
