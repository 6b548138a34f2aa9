"""What a check is made of, shared by the daemon's checks and the drivers that add items."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class CheckItem:
    """One line of a check report: what was expected, what was measured, pass or fail."""

    item: str
    expected: str
    measured: str
    passed: bool
    duration_s: float = 0.0
    detail: str = ""
    device: str = ""


@dataclass
class CheckContext:
    """What a driver's self-test may use: the level, the meeting, and its own fresh readings."""

    level: int
    keep_on: bool  # the meeting is near: leave switched-on equipment on
    expect_source: bool  # a projector must show a >= 1920x1080 signal
    readings: Callable[[], dict[str, Any]]
    # Wait until a reading satisfies the predicate (the poller keeps polling); its last value.
    wait_for: Callable[[str, Callable[[Any], bool], float], Awaitable[Any]]
