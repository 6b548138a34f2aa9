"""What the console shows, read from the site: room tiles, a room's devices and alerts,
incidents. Plain data for the templates; nothing here changes anything."""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..daemon.bookings import Booking
from ..daemon.clock import human_duration, iso
from ..daemon.config import Room
from ..daemon.model import Alert
from ..daemon.site import Poller, Site, room_state
from ..daemon.store import Incident
from ..daemon.units import severity_rank
from ..drivers.base import CommandSpec

_FLOOR = re.compile(r"(\d{1,2})(\d{2})(?!\d)")


def room_group(room: Room, floor_label: Callable[[str, int], str]) -> str:
    """Building and floor for the filter: the room's `group`, else read from its name
    ("City Hall 301" → City Hall, floor 3), else the name itself."""
    if room.config.group:
        return room.config.group
    name = room.config.name or room.id
    match = _FLOOR.search(name)
    if match is None:
        return ""
    building = name[: match.start()].strip(" -·_") or name
    return floor_label(building, int(match.group(1)))


@dataclass
class Tile:
    room: Room
    name: str
    group: str
    status: str  # one of site.ROOM_STATES
    alerts: list[Alert]
    devices_up: int
    devices: int
    current: Booking | None
    next: Booking | None
    check: dict[str, Any] | None

    @property
    def worst(self) -> str | None:
        return min((a.severity for a in self.alerts), key=severity_rank, default=None)


def alerts_by_room(site: Site) -> dict[str, list[Alert]]:
    out: dict[str, list[Alert]] = defaultdict(list)
    for alert in list(site.book.active.values()):
        out[alert.room].append(alert)
    for alerts in out.values():
        alerts.sort(key=lambda a: (severity_rank(a.severity), a.since))
    return out


def room_status(pollers: Iterable[Poller], alerts: list[Alert]) -> str:
    """The room's state as the site computes it (site.room_state), for a tile."""
    return room_state([p.online for p in pollers], (a.severity for a in alerts))


def tiles(
    site: Site,
    current: Callable[[str], Booking | None],
    upcoming: Callable[[str], Booking | None],
    last_check: dict[str, dict[str, Any]],
    floor_label: Callable[[str, int], str],
) -> list[Tile]:
    by_room = alerts_by_room(site)
    out = []
    for room in site.config.rooms:
        pollers = list(site.room_pollers.get(room.id, {}).values())
        alerts = by_room.get(room.id, [])
        check = last_check.get(room.id)
        out.append(
            Tile(
                room=room,
                name=room.config.name or room.id,
                group=room_group(room, floor_label),
                status=room_status(pollers, alerts),
                alerts=alerts,
                devices_up=sum(1 for p in pollers if p.online),
                devices=len(pollers),
                current=current(room.id),
                next=upcoming(room.id),
                check=check,
            )
        )
    return out


def select(tiles_: list[Tile], query: str, group: str, status: str) -> list[Tile]:
    q = query.strip().lower()
    return [
        t
        for t in tiles_
        if (not q or q in t.name.lower() or q in t.room.id.lower() or q in t.group.lower())
        and (not group or t.group == group)
        and (not status or t.status == status)
    ]


@dataclass
class DeviceRow:
    poller: Poller
    age: float | None  # seconds since the last good poll
    specs: list[CommandSpec] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.poller.config.id


def device_rows(site: Site, room_id: str) -> list[DeviceRow]:
    now = site.clock.monotonic()
    rows = []
    for _dev_id, p in sorted(site.room_pollers.get(room_id, {}).items()):
        rows.append(
            DeviceRow(
                poller=p,
                age=None if not p.read_at else max(0.0, now - p.read_at),
                specs=p.driver.command_specs(),
            )
        )
    return rows


def fmt_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return "—" if value is None else str(value)


def fmt_answer(result: Any) -> str:
    """A device's answer to a command, for a person: `projector_power: warming`."""
    if isinstance(result, dict):
        return ", ".join(f"{k}: {fmt_value(v)}" for k, v in result.items()) or "ok"
    return fmt_value(result) if result is not None else "ok"


def fmt_seconds(seconds: float | None) -> str:
    return "—" if seconds is None else human_duration(seconds)


CSV_COLUMNS = (
    "alert",
    "room",
    "device",
    "metric",
    "severity",
    "message",
    "raised",
    "acknowledged",
    "acknowledged_by",
    "escalations",
    "cleared",
    "reason",
    "time_to_acknowledge_s",
    "time_to_clear_s",
)


def _cell(value: Any) -> Any:
    # A cell a spreadsheet would run as a formula (device text can be anything): quoted.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def incidents_csv(rows: list[Incident]) -> bytes:
    buffer = io.StringIO()
    out = csv.writer(buffer)
    out.writerow(CSV_COLUMNS)
    for r in rows:
        out.writerow(
            [
                _cell(v)
                for v in (
                    r.alert,
                    r.room,
                    r.device,
                    r.metric,
                    r.severity,
                    r.message,
                    iso(r.raised),
                    "" if r.acked is None else iso(r.acked),
                    r.acked_by or "",
                    r.escalations,
                    "" if r.cleared is None else iso(r.cleared),
                    r.reason or "",
                    "" if r.to_ack is None else f"{r.to_ack:.1f}",
                    "" if r.to_clear is None else f"{r.to_clear:.1f}",
                )
            ]
        )
    return buffer.getvalue().encode("utf-8-sig")  # with a BOM: Excel reads Chinese right
