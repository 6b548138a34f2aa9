"""The site's state, and a reading's way through it: readings → rules → alert state → sinks.

`Site` holds what the daemon knows (rooms, each device's last readings and availability, the
alert book) and is the one place a reading turns into alert transitions, retained state and
metrics. The poll engine hands it readings and failures; services (meetings, checks, sign-ins,
commands) read it and add room-level readings and events through it, and listen to its
transitions. It knows nothing of how devices are polled or how services decide.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..drivers.base import DeviceConfig, Driver, Readings
from .alerts import AlertBook
from .clock import Clock, iso
from .config import ROOM_DEVICE, Room, SiteConfig
from .model import Transition
from .shards import shard_of
from .sinks.mqtt import MqttSink
from .sinks.mqtt import dumps as _dumps
from .sinks.prometheus import Metrics
from .store import Pending, Store, epoch

if TYPE_CHECKING:
    from .engine import Polled

log = logging.getLogger("roomd")

STATE_HEARTBEAT = 300.0  # seconds: re-publish a device's state at least this often
_NUMBER, _AT_ONCE = object(), object()  # what moved since the last published state


def _is_number(value: object) -> bool:
    kind = type(value)
    return kind is float or kind is int or (kind is not bool and isinstance(value, float | int))


ROOM_STATES = ("ready", "degraded", "not_ready", "offline", "waiting")
_MAJOR = frozenset(("I", "II"))


def room_state(online: list[bool | None], severities: Iterable[str]) -> str:
    """What a technician reads first: offline (no device answers), not ready (a grade I/II
    alert, which a failed check raises), degraded (any other alert or a device down), ready;
    waiting before every device has been polled once."""
    if online and all(o is None for o in online):
        return "waiting"
    if online and not any(online):
        return "offline"
    grades = set(severities)
    if grades & _MAJOR:
        return "not_ready"
    if grades or not all(online):
        return "degraded"
    return "ready"


@dataclass(eq=False, slots=True)
class Poller:
    """One device: its config and driver, and what the site knows of it."""

    room: Room
    config: DeviceConfig
    driver: Driver
    online: bool | None = None
    readings: Readings = field(default_factory=dict)
    published: tuple[bool | None, Readings] | None = None
    error: str = ""
    deadbands: dict[str, float] = field(default_factory=dict)
    published_at: float = 0.0
    read_at: float = 0.0  # monotonic time of the last good poll: the age of the readings
    failures: int = 0
    polls: int = 0
    polled: Polled | None = None  # the engine's handle
    observe: Callable[[float], None] = field(default=lambda seconds: None, repr=False)
    state_topic: str = ""  # built on first publish
    info_seen: bool = False  # the device has said what it is (driver.info)
    room_id: str = field(init=False)  # the room's and device's ids, read on every poll
    dev_id: str = field(init=False)

    def __post_init__(self) -> None:
        self.room_id, self.dev_id = self.room.id, self.config.id

    @property
    def parked(self) -> bool:
        """Stopped after an authentication failure, until a reload (the engine's state)."""
        return self.polled is not None and self.polled.parked

    @property
    def key(self) -> tuple[str, str]:
        return (self.room.id, self.config.id)


class Site:
    def __init__(
        self,
        config: SiteConfig,
        clock: Clock,
        store: Store,
        book: AlertBook,
        metrics: Metrics,
        mqtt: MqttSink,
    ) -> None:
        self.config = config  # the property below: keeps what polls read at hand
        self.clock = clock
        self.store = store
        self.book = book
        self.metrics = metrics
        self.mqtt = mqtt
        self.pollers: dict[tuple[str, str], Poller] = {}
        self.room_pollers: dict[str, dict[str, Poller]] = {}
        self.attendees: dict[str, int] = {}
        self.sealed_rooms: set[str] = set()
        # The last room-level readings (device `_room`), for the check report.
        self.room_values: dict[str, Readings] = {}
        self._room_published: dict[str, dict[str, Any]] = {}
        # Services that react to alert transitions (meetings: failover, no-show...).
        self.transition_listeners: list[Callable[[list[Transition]], None]] = []
        # Told the room's id when a device's published state or the room's summary changed
        # (the console's live pages).
        self.room_listeners: list[Callable[[str], None]] = []
        # Told once per device when it first says what it is (make, model, firmware).
        self.info_listeners: list[Callable[[Poller], None]] = []
        # Prometheus reads each device's readings when scraped (nothing copied per poll).
        metrics.devices = lambda: [
            (p.room.id, p.config.id, p.online, p.readings) for p in list(self.pollers.values())
        ]
        metrics.rooms = self.room_samples

    def room_samples(self) -> list[tuple[str, int, bool, list[tuple[str, str, float, bool]]]]:
        """Per room, for the scrape: state code, in a meeting, effective limits."""
        severities: dict[str, list[str]] = {}
        for alert in list(self.book.active.values()):
            severities.setdefault(alert.room, []).append(alert.severity)
        out = []
        for room in self.config.rooms:
            pollers = list(self.room_pollers.get(room.id, {}).values())
            online = [p.online for p in pollers]
            state = room_state(online, severities.get(room.id, ()))
            # Limits of what the room's devices measure only: a 5,000-device site would
            # otherwise expose every profile threshold for every room.
            measured = {m for p in pollers for m in p.readings}
            limits = [
                (metric, bound, float(value), t.inclusive)
                for metric, t in room.thresholds.items()
                if t.enabled and metric in measured
                for bound, value in (("min", t.min), ("max", t.max))
                if value is not None
            ]
            in_meeting = room.id in self.book.meeting_rooms
            out.append((room.id, ROOM_STATES.index(state), in_meeting, limits))
        return out

    @property
    def config(self) -> SiteConfig:
        return self._config

    @config.setter
    def config(self, config: SiteConfig) -> None:
        self._config = config
        # Read on most polls; a pydantic model's attributes are slow to reach (__getattr__).
        self._state_min_interval = config.mqtt.state_min_interval

    def room_mean(self, room_id: str, metric: str) -> float | None:
        """The mean of a numeric reading over the room's online devices (None: no device
        reports it now): the room's CO₂ for forecasts and the ventilation estimate."""
        values = [
            float(v)
            for p in list(self.room_pollers.get(room_id, {}).values())
            if p.online and isinstance(v := p.readings.get(metric), int | float)
        ]
        return sum(values) / len(values) if values else None

    def owns_room(self, room_id: str) -> bool:
        return room_id in self.room_pollers or self.config.room(room_id) is not None

    def answers_for(self, room_id: str) -> bool:
        """Whether this instance answers for a room (one of a sharded site's shards does,
        whether or not the room exists)."""
        shard = self.config.shard
        if shard is None:
            return True
        return shard_of(room_id, shard[1], self.config.shard_map) == shard[0]

    def readings(self, p: Poller, readings: Readings, took: float = -1.0) -> None:
        """A poll's readings (`took`: how long it took), or readings pushed between polls."""
        room_id, dev_id = p.room_id, p.dev_id
        if took >= 0:
            p.observe(took)
        p.polls += 1
        now = p.read_at = self.clock.monotonic()
        if p.online is not True:
            if p.online is False:
                log.info("%s/%s back online after %d failed polls", room_id, dev_id, p.failures)
            p.online, p.failures, p.error = True, 0, ""
            self.emit(self.book.observe(room_id, dev_id, {"online": 1}))
        before = p.published
        p.readings = readings
        transitions = self.book.observe(room_id, dev_id, readings)
        if transitions:
            self.emit(transitions)
        if before is None or before[0] is not True or now - p.published_at > STATE_HEARTBEAT:
            self.publish_device(p)
        else:  # against the published state: a held-back move stays due
            moved = self._moved(before[1], readings, p.deadbands)
            # Pushed readings (a command's effect, a notification) are not held back.
            if moved is _AT_ONCE or (
                moved and (took < 0 or now - p.published_at >= self._state_min_interval)
            ):
                self.publish_device(p)

    @staticmethod
    def _moved(last: Readings, readings: Readings, deadbands: dict[str, float]) -> object:
        """What moved since the last published state: None (nothing past its deadband),
        _NUMBER (a measured value past its deadband: published at most every
        state_min_interval) or _AT_ONCE (a text state, a number with no deadband, or the set
        of readings changed). Called on most polls: type checks, not isinstance."""
        if len(last) != len(readings):
            return _AT_ONCE
        moved = None
        # Subscripts, not .get(): a method call each costs more than the rare KeyError.
        for metric, value in readings.items():
            try:
                before = last[metric]
                if value == before:
                    continue
                band = deadbands[metric]
            except KeyError:  # a reading new to the set, or one that is not noise
                return _AT_ONCE
            kind = type(value)
            if (kind is not type(before) or (kind is not float and kind is not int)) and not (
                _is_number(value) and _is_number(before)  # an int that became a float, numpy's
            ):
                return _AT_ONCE
            if moved is None and abs(value - before) >= band:  # type: ignore[operator]
                moved = _NUMBER
        return moved

    def pushed(self, p: Poller, partial: Readings) -> None:
        """Readings that arrived between polls (a command's effect, a notification)."""
        if p.online:
            self.readings(p, {**p.readings, **partial})

    def failed(self, p: Poller, error: str) -> None:
        room_id, dev_id = p.room.id, p.config.id
        p.failures += 1
        p.error = error
        if p.online is not False:
            log.warning("%s/%s offline: %s", room_id, dev_id, error)
            p.online = False
        self.metrics.poll_errors.labels(p.driver.kind).inc()
        transitions = self.book.observe(room_id, dev_id, {"online": 0}, detail=error)
        if transitions:
            self.emit(transitions)
        if p.published is None or p.published[0] is not False:
            self.publish_device(p)

    def publish_device(self, p: Poller) -> None:
        # The room's summary depends on its devices' availability, not their readings: it is
        # looked at again when that changed (alert transitions and sign-ins do it themselves).
        availability_changed = p.published is None or p.published[0] != p.online
        p.published = (p.online, p.readings)  # readings dicts are replaced, never changed
        p.published_at = self.clock.monotonic()
        payload: dict[str, Any] = {
            "online": bool(p.online),
            "readings": p.readings,
            "ts": iso(self.clock.time()),
        }
        if not p.online and p.error:
            payload["error"] = p.error
        if p.driver.info:
            payload["info"] = p.driver.info
            if not p.info_seen:
                p.info_seen = True
                for info_listener in self.info_listeners:
                    info_listener(p)
        if not p.state_topic:
            p.state_topic = f"{self.mqtt.base}/{p.room.id}/{p.config.id}/state"
        self.mqtt.publish_state(p.state_topic, payload)
        for listener in self.room_listeners:
            listener(p.room_id)
        if availability_changed:
            self.publish_room(p.room_id)

    def room_summary(self, room_id: str) -> dict[str, Any]:
        devices: dict[str, str] = {}
        for did, p in self.room_pollers.get(room_id, {}).items():
            rid = room_id
            if not p.online:
                devices[did] = "offline"
            elif self.book.device_has_alerts(rid, did):
                devices[did] = "degraded"
            else:
                devices[did] = "online"
        active = self.book.room_count(room_id)
        ok = active == 0 and all(s == "online" for s in devices.values())
        summary: dict[str, Any] = {"ok": ok, "active_alerts": active, "devices": devices}
        if room_id in self.attendees:
            summary["attendees"] = self.attendees[room_id]
        return summary

    def publish_room(self, room_id: str) -> None:
        pollers = self.room_pollers.get(room_id, {})
        if any(p.online is None for p in pollers.values()):
            return  # not every device has reported yet: "offline" would be a guess
        summary = self.room_summary(room_id)
        if self._room_published.get(room_id) == summary:
            return
        self._room_published[room_id] = summary
        self.mqtt.publish_state(
            f"{self.mqtt.base}/{room_id}/state", {**summary, "ts": iso(self.clock.time())}
        )

    def emit(self, transitions: list[Transition], extra: list[Pending] | None = None) -> None:
        """Persist transitions with their MQTT messages in one transaction, then publish."""
        if not transitions and not extra:
            return
        messages = self.mqtt.messages_for(transitions) + (extra or [])
        self.store.commit(transitions, messages)
        self.mqtt.kick()
        rooms = set()
        for t in transitions:
            a = t.alert
            rooms.add(a.room)
            if (t.kind == "acknowledged" and t.reason != "again") or t.kind == "cleared":
                self._response_time(t)
            if t.kind == "raised":
                log.warning("alert %s [%s] %s", a.id, a.severity, a.message)
            else:
                who = a.extra.get("acknowledged_by") if t.kind == "acknowledged" else None
                why = t.reason or (f"by {who}" if who else "")
                log.info("alert %s %s%s", a.id, t.kind, f" ({why})" if why else "")
        if transitions:
            self.metrics.set_room_alerts({r: self.book.room_count(r) for r in rooms})
            for room in rooms:
                self.publish_room(room)
                for room_listener in self.room_listeners:
                    room_listener(room)
            for listener in self.transition_listeners:
                listener(transitions)

    def _response_time(self, t: Transition) -> None:
        a = t.alert
        took = max(0.0, epoch(a.ts) - epoch(a.since))
        histogram = (
            self.metrics.time_to_ack if t.kind == "acknowledged" else self.metrics.time_to_clear
        )
        histogram.labels(self.config.site, a.severity).observe(took)

    def room_reading(self, room_id: str, readings: Readings, detail: str = "") -> None:
        """A reading about the room itself (device `_room`): rules, metrics."""
        self.room_values.setdefault(room_id, {}).update(readings)
        transitions = self.book.observe(room_id, ROOM_DEVICE, readings, detail=detail)
        if transitions:
            self.emit(transitions)
        self.metrics.update(room_id, ROOM_DEVICE, readings)

    def room_event(self, room_id: str, event: dict[str, Any]) -> None:
        self.emit([], [self.mqtt.event(room_id, event)])

    def note_alert(self, alert_id: str, extra: dict[str, Any]) -> None:
        """Add facts to an active alert (e.g. the failover it caused) and re-announce it."""
        alert = self.book.active.get(alert_id)
        if alert is None:
            return
        alert.extra.update(extra)
        alert.ts = iso(self.clock.time())
        self.emit([Transition("updated", alert)])

    def publish_check(self, room: Room, report: dict[str, Any], pages: bool = True) -> None:
        """A check report: stored with its messages (retained checks/latest, events), the
        metric, and the "room not ready" alert (II at levels 0–2, I at level 3) when `pages`."""
        base = f"{self.mqtt.base}/{room.id}"
        latest = (f"{base}/checks/latest", _dumps(report), True, 1)
        event = self.mqtt.event(room.id, {"type": "check", **report})
        self.store.record_check(report, [latest, event])
        self.mqtt.kick()
        level = str(report["level"])
        self.metrics.check_passed.labels(self.config.site, room.id, level).set(
            1 if report["passed"] else 0
        )
        for listener in self.room_listeners:
            listener(room.id)
        if report["passed"]:
            self.room_reading(room.id, {"room_ready": "ready"})
        elif pages:
            value = "not_ready_final" if report["level"] >= 3 else "not_ready"
            failed = ", ".join(report["failed"][:6])
            more = f" and {len(report['failed']) - 6} more" if len(report["failed"]) > 6 else ""
            detail = f"{report['level_name']} check failed: {failed}{more}"
            self.room_reading(room.id, {"room_ready": value}, detail)
        log.log(
            logging.INFO if report["passed"] else logging.WARNING,
            "%s: %s check %s%s",
            room.id,
            report["level_name"],
            "passed" if report["passed"] else "FAILED: ",
            "" if report["passed"] else "; ".join(report["failed"]),
        )
