"""Time as a dependency, so hold times, backoff and schedules are testable without sleeping."""

from __future__ import annotations

import time
from datetime import UTC, datetime


class Clock:
    """Wall time for timestamps, monotonic time for durations."""

    # The system's own clocks, not methods wrapping them: read on every poll, and a Python
    # frame costs more than the read. (`time` last: the name is the module's until then.)
    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)


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


_last_second = -1
_last_prefix = ""


def human_duration(seconds: float) -> str:
    """ "42 s", "3 min 5 s", "2 h 10 min": an age or a wait, for people."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def iso(ts: float) -> str:
    """ISO-8601 UTC with millisecond precision and a Z. Called for every state message, so the
    formatted second is cached (strftime costs ~5 µs)."""
    global _last_second, _last_prefix
    second = int(ts)
    if second != _last_second:
        _last_prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _last_second = second
    return f"{_last_prefix}{int((ts - second) * 1000):03d}Z"
