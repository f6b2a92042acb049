"""Shared fixtures. Tests use synthetic data only: they must pass without ../shared."""

from __future__ import annotations

import asyncio
import os
import threading
from collections import Counter

import pytest

from ops.service_process import free_port

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_FUZZ_COUNTS = pytest.StashKey[Counter]()


@pytest.fixture
def port_factory():
    return free_port


@pytest.fixture(scope="session")
def synthetic_models(tmp_path_factory):
    """The synthetic text, image and fusion bundles (16-value embeddings), built once for the
    tests that serve all three."""
    from tests.synthetic_bundles import build_synthetic_bundles

    root = tmp_path_factory.mktemp("synthetic-models")
    build_synthetic_bundles(root)
    return root


@pytest.fixture(scope="module")
def background_loop():
    """`run(coroutine)` on an event loop in a daemon thread: in-process grpc.aio servers that
    blocking test clients call. Stop the servers before the module ends."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-event-loop", daemon=True)
    thread.start()

    def run(coroutine, timeout: float = 120.0):
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout)

    yield run
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture(scope="session")
def fuzz_counts(request) -> Counter:
    """Inputs the fuzz suite sent, by (service, status code name): listed in the terminal summary."""
    return request.config.stash.setdefault(_FUZZ_COUNTS, Counter())


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    counts = config.stash.get(_FUZZ_COUNTS, None)
    if not counts:
        return
    terminalreporter.write_sep("-", "fuzz: inputs tried per service")
    for service in sorted({service for service, _ in counts}):
        outcomes = ", ".join(f"{code} {n}" for (name, code), n in sorted(counts.items()) if name == service)
        total = sum(n for (name, _), n in counts.items() if name == service)
        terminalreporter.write_line(f"{service:<20} {total:>6}  ({outcomes})")
    terminalreporter.write_line(f"{'total':<20} {sum(counts.values()):>6}")
