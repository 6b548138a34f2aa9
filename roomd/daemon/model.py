"""The records that flow from rules to sinks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .units import Severity

AlertState = Literal["active", "acknowledged", "cleared"]
TransitionKind = Literal["raised", "cleared", "acknowledged", "updated", "escalated"]


@dataclass(slots=True)
class Alert:
    id: str
    room: str
    device: str
    metric: str
    rule: str
    limit: float | str | None
    value: float | str | bool | None
    unit: str
    severity: Severity
    state: AlertState
    since: str
    ts: str
    message: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        extra = out.pop("extra")
        out.update(extra)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Alert:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data and k != "extra"}
        extra = {k: v for k, v in data.items() if k not in cls.__dataclass_fields__}
        return cls(**known, extra=extra)


@dataclass(slots=True)
class Transition:
    kind: TransitionKind
    alert: Alert
    reason: str = ""
