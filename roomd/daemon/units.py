"""Small value types shared by config and profiles: durations, severities."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_FACTOR = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """'500ms', '10s', '5m', '2h', '1d' or a bare number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 500ms, 10s, 5m or 2h")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _FACTOR[match.group(2) or "s"]
    raise ValueError(
        f"invalid duration {value!r}: expected a number with ms, s, m, h or d, e.g. 10s"
    )


def format_duration(seconds: float) -> str:
    if seconds and seconds < 1:
        return f"{round(seconds * 1000)}ms"
    for unit, factor in (("h", 3600), ("m", 60)):
        if seconds >= factor and seconds % factor == 0:
            return f"{int(seconds // factor)}{unit}"
    return f"{seconds:g}s"


Duration = Annotated[float, BeforeValidator(parse_duration)]

Severity = Literal["I", "II", "III", "IV"]
SEVERITIES: tuple[Severity, ...] = ("I", "II", "III", "IV")


def severity_rank(severity: str) -> int:
    """0 for grade I (very serious) to 3 for IV; anything else after them."""
    return SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES)
