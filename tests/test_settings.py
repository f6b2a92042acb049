"""Settings come from flags and environment variables of the same name; flags win."""

import pydantic
import pytest

from common.settings import ModelServiceSettings, load_settings


def test_defaults_environment_and_flags(monkeypatch):
    assert load_settings(ModelServiceSettings).max_batch_size == 32
    monkeypatch.setenv("MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("MODEL_NAME", "text")
    settings = load_settings(ModelServiceSettings, [])
    assert (settings.max_batch_size, settings.model_name) == (8, "text")
    settings = load_settings(ModelServiceSettings, ["--max-batch-size", "4", "--no-reflection"])
    assert settings.max_batch_size == 4 and settings.reflection is False


def test_bad_values_name_the_setting(monkeypatch):
    monkeypatch.setenv("MAX_BATCH_SIZE", "0")
    with pytest.raises(pydantic.ValidationError, match="max_batch_size"):
        load_settings(ModelServiceSettings, [])
