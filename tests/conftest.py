"""Shared fixtures. Tests use synthetic data only: they must pass without ../shared."""

from __future__ import annotations

import os

import pytest

from ops.service_process import free_port

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture
def port_factory():
    return free_port
