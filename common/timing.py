"""Per-stage timings returned in responses (`StageTiming`), measured with a monotonic clock."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from rakuten.v1 import common_pb2


class StageTimer:
    """Collects how long named stages took, in the order they ran."""

    def __init__(self) -> None:
        self._started = time.perf_counter()
        self.stages: list[tuple[str, float]] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.stages.append((name, time.perf_counter() - started))

    def protos(self, total_name: str = "total") -> list[common_pb2.StageTiming]:
        """The stages plus the total since the timer was made."""
        timings = [common_pb2.StageTiming(stage=name, seconds=seconds) for name, seconds in self.stages]
        timings.append(common_pb2.StageTiming(stage=total_name, seconds=time.perf_counter() - self._started))
        return timings
