"""Time as a dependency, so hold times, backoff and schedules are testable without sleeping."""

from __future__ import annotations

import time
from datetime import UTC, datetime


class Clock:
    """Wall time for timestamps, monotonic time for durations."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


class FakeClock(Clock):
    def __init__(self, start: float = 1_795_000_000.0) -> None:
        self._wall = start
        self._mono = 1000.0

    def monotonic(self) -> float:
        return self._mono

    def time(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._mono += seconds


def iso(ts: float) -> str:
    """ISO-8601 UTC with a Z, second precision unless sub-second matters."""
    dt = datetime.fromtimestamp(ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
