"""Serves the highest version of a model bundle and swaps in newer ones without a restart.

A loader turns a bundle on disk into a ready model (loaded *and* warmed up) in a worker thread;
requests keep using the current model until the new one is ready, then the reference is swapped
in one assignment. A version that fails to load is logged, counted and not retried, and the
previous version keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Callable, Generic, TypeVar

from common import metrics
from common.errors import NotReady
from common.model_bundle import BundleInfo, read_bundle, versions

Model = TypeVar("Model")

log = logging.getLogger(__name__)


class ModelRepository(Generic[Model]):
    """The model in service for one bundle name, kept up to date with the folder."""

    def __init__(self, models_dir: str | Path, name: str, loader: Callable[[BundleInfo], Model],
                 poll_seconds: float = 10.0):
        self.models_dir = Path(models_dir)
        self.name = name
        self.poll_seconds = poll_seconds
        self._loader = loader
        self._current: tuple[BundleInfo, Model] | None = None
        self._failed_versions: set[int] = set()
        self._watcher: asyncio.Task | None = None

    @property
    def ready(self) -> bool:
        return self._current is not None

    def current(self) -> tuple[BundleInfo, Model]:
        """The bundle and model serving now; UNAVAILABLE until the first load finished."""
        if self._current is None:
            raise NotReady(f"model {self.name!r} is not loaded yet")
        return self._current

    async def load_latest(self) -> bool:
        """Load the highest version if it is newer than the one serving; True if it swapped."""
        candidates = [v for v in versions(self.models_dir, self.name) if v not in self._failed_versions]
        if not candidates:
            if self._current is None:
                raise FileNotFoundError(f"no loadable version of {self.name!r} under {self.models_dir}")
            return False
        newest = candidates[-1]
        if self._current is not None and newest <= self._current[0].version:
            return False
        try:
            bundle = read_bundle(self.models_dir, self.name, newest)
            model = await asyncio.get_running_loop().run_in_executor(None, self._loader, bundle)
        except Exception:
            self._failed_versions.add(newest)
            metrics.MODEL_LOADS.labels(self.name, "failure").inc()
            log.exception("model version failed to load", extra={"model": self.name, "version": newest})
            if self._current is None:
                raise
            return False
        previous = self._current
        self._current = (bundle, model)
        metrics.MODEL_LOADS.labels(self.name, "success").inc()
        metrics.MODEL_VERSION.labels(self.name, str(bundle.version)).set(1)
        if previous is not None:
            metrics.MODEL_VERSION.remove(self.name, str(previous[0].version))
        runtime = _runtime_labels(model)
        if runtime is not None:
            metrics.MODEL_RUNTIME.clear()  # one model per service: only the serving one's runtime
            metrics.MODEL_RUNTIME.labels(self.name, *runtime).set(1)
        log.info("model version serving", extra={"model": self.name, "version": bundle.version,
                                                 "path": str(bundle.path),
                                                 "runtime": "/".join(runtime) if runtime else None})
        return True

    def start_watching(self) -> None:
        """Poll the folder every `poll_seconds` for a newer version (no-op when 0)."""
        if self.poll_seconds > 0 and self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch(), name=f"watch-{self.name}")

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            try:
                await self._watcher
            except asyncio.CancelledError:
                pass
            self._watcher = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.load_latest()
            except Exception:  # keep watching: the next poll may find a good version
                log.exception("model poll failed", extra={"model": self.name})


def _runtime_labels(model: object) -> tuple[str, str] | None:
    """(runtime, device) of a model that runs through a runner (`common.runtime`)."""
    runner = getattr(model, "runner", None)
    if runner is None or not hasattr(runner, "runtime"):
        return None
    return runner.runtime, getattr(runner, "device", "cpu")
