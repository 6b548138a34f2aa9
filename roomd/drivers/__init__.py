"""Driver registry. A driver module registers itself in one line: `@register`."""

from __future__ import annotations

from typing import TypeVar

from .base import Driver, DriverContext

_REGISTRY: dict[str, type[Driver]] = {}

D = TypeVar("D", bound=type[Driver])


def register(cls: D) -> D:
    _REGISTRY[cls.kind] = cls
    return cls


def driver_class(kind: str) -> type[Driver] | None:
    _load_builtin()
    return _REGISTRY.get(kind)


def known_drivers() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def _load_builtin() -> None:
    # Imported lazily so `roomd validate` does not pay for drivers it does not use twice.
    from . import (  # noqa: F401
        audio_probe,
        bacnet,
        knx,
        modbus,
        nfc,
        pcsc,
        pjlink,
        probe,
        serial_projector,
        snmp,
        x32,
    )


__all__ = ["Driver", "DriverContext", "driver_class", "known_drivers", "register"]
