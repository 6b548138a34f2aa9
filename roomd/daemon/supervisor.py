"""The daemon: sinks first, then one poller per device; readings → rules → alerts → sinks.

One device's failure is its own: a poller catches everything its driver raises, reports the
device offline once (on the transition, like Home Assistant's coordinator), retries with
capped, jittered backoff, and never touches another poller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import resource
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from ..drivers import driver_class
from ..drivers.audio_probe import AudioProbeDriver
from ..drivers.base import (
    CommandError,
    DeviceAuthError,
    DeviceConfig,
    DeviceError,
    Driver,
    DriverContext,
    Readings,
)
from ..drivers.nfc import CardReaderDriver
from ..drivers.x32 import MixerDriver
from .alerts import AlertBook
from .attendance import Attendance
from .authz import Authorizer, Principal, Refused
from .checks import RoomChecker, audio_devices, room_soundcheck
from .clock import Clock, iso
from .config import ROOM_DEVICE, ConfigError, Room, SiteConfig, load_config
from .inbound import BadCommand, LogLimiter, parse_command
from .instances import Instances
from .meetings import MeetingPlanner
from .model import Transition
from .sinks.homeassistant import DeviceInfo, PublishedTopics, discovery_configs
from .sinks.mqtt import MqttSink
from .sinks.mqtt import dumps as _dumps
from .sinks.prometheus import HttpServer, Metrics
from .store import Pending, SigninRow, Store
from .systemd import SdNotifier

log = logging.getLogger("roomd")
_limited = LogLimiter(log)

RETRY_CAP = 60.0  # seconds: longest wait between retries of an offline device
STATE_HEARTBEAT = 300.0  # seconds: re-publish a device's state at least this often


def backoff(attempt: int, poll: float, cap: float = RETRY_CAP) -> float:
    """Equal-jitter exponential backoff: never zero (no retry storm), never above `cap`."""
    ceiling = min(cap, max(poll, 0.5) * 2 ** min(attempt - 1, 16))
    return random.uniform(ceiling / 2, ceiling)


@dataclass(eq=False)
class Poller:
    room: Room
    config: DeviceConfig
    driver: Driver
    online: bool | None = None
    readings: Readings = field(default_factory=dict)
    published: tuple[bool | None, Readings] | None = None
    error: str = ""
    deadbands: dict[str, float] = field(default_factory=dict)
    published_at: float = 0.0
    failures: int = 0
    polls: int = 0
    parked: bool = False  # stopped after an authentication failure, until a reload
    task: asyncio.Task[None] | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.room.id, self.config.id)


class Daemon:
    def __init__(self, config: SiteConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or Clock()
        self.store = Store(config.state_dir)
        self.book = AlertBook(self.clock, self.store.active_alerts())
        self.metrics = Metrics(config.site)
        self.mqtt = MqttSink(config.mqtt, config.site, self.store, self.clock, self._on_command)
        self.http = HttpServer(config.http.host, config.http.port, self.metrics, self.health)
        self.context = DriverContext()
        self.pollers: dict[tuple[str, str], Poller] = {}
        self.room_pollers: dict[str, dict[str, Poller]] = {}
        self._room_published: dict[str, dict[str, Any]] = {}
        self._attendees: dict[str, int] = {}
        self._announced: dict[str, float] = {}  # alert id → monotonic time last announced
        self._stopping = asyncio.Event()
        self._fd_warned = False
        self._tasks: asyncio.TaskGroup | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.ready = asyncio.Event()
        self.systemd = SdNotifier()
        self._ha_topics = PublishedTopics(config.state_dir)
        if config.homeassistant.enabled:
            self.mqtt.extra_topics[f"{config.homeassistant.prefix}/status"] = self._on_ha_status
        self.attendance = Attendance(
            Attendance.load_secret(config.signins.secret_file, config.state_dir)
        )
        self._load_rosters(config)
        self.sealed_rooms: set[str] = set()
        self.checker = RoomChecker(self)
        self.meetings = MeetingPlanner(self)
        self.mqtt.on_bookings = self._on_bookings
        self.mqtt.on_rejected = lambda kind: self.metrics.input_rejected.labels(
            config.site, kind
        ).inc()
        self.authz = Authorizer(config.authorization, config.mqtt.username)
        self.mqtt.retained_snapshot = self.retained_snapshot
        self.instances = Instances(
            publish=lambda msg: self.mqtt.publish_now(f"{self.mqtt.base}/_daemon/instances", msg),
            conflict=self._instance_conflict,
            rooms=lambda: [r.id for r in self.config.rooms],
            monotonic=self.clock.monotonic,
        )
        self.mqtt.extra_topics[f"{self.mqtt.base}/_daemon/instances"] = self.instances.heard
        self.mqtt.on_connected.append(self.instances.announce)

    # ---- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until stop(). Sinks start before sources."""
        cfg = self.config
        for warning in startup_warnings(cfg):
            log.warning("%s", warning)
        problem = raise_descriptor_limit(sum(len(r.devices) for r in cfg.rooms))
        if problem:
            log.warning("%s", problem)
        await self.http.start()
        await self.mqtt.start()
        self.metrics.outbox.set_function(lambda: self.store.outbox_depth)
        # list(): one C-level copy, safe while the scrape runs in its thread.
        self.metrics.count_alerts_at_scrape(
            lambda: Counter(a.severity for a in list(self.book.active.values()))
        )
        self.metrics.mqtt_connected.set_function(lambda: 1 if self.mqtt.connected.is_set() else 0)
        log.info(
            "roomd %s: %d rooms, %d devices; metrics on http://%s:%d/metrics",
            cfg.site,
            len(cfg.rooms),
            sum(len(r.devices) for r in cfg.rooms),
            self.http.host,
            self.http.port,
        )
        try:
            async with asyncio.TaskGroup() as tg:
                self._tasks = tg
                tg.create_task(self.mqtt.run_drainer(), name="mqtt-outbox")
                tg.create_task(self._housekeeping_loop(), name="housekeeping")
                self._apply(cfg, first=True)
                tg.create_task(self.meetings.run(), name="meetings")
                self._publish_discovery()
                self.ready.set()
                self.systemd.notify("READY=1", f"STATUS={self.status_line()}")
                tg.create_task(self._systemd_loop(), name="systemd-watchdog")
                await self._stopping.wait()
                raise _Stop
        except* _Stop:
            pass
        finally:
            self.systemd.notify("STOPPING=1", "STATUS=stopping")
            self._tasks = None
            await self.meetings.cancel()
            for poller in self.pollers.values():
                with contextlib.suppress(Exception):
                    await poller.driver.close()
            for shared in self.context.shared.values():
                with contextlib.suppress(Exception):
                    shared.close()
            await self.mqtt.stop()
            await self.http.stop()
            self.store.close()
            self.systemd.close()
            log.info("roomd stopped")

    def stop(self) -> None:
        self._stopping.set()

    def reload(self) -> bool:
        """Re-read the config file. Invalid → keep running on the old one."""
        self.systemd.notify("RELOADING=1")
        try:
            new = load_config(self.config.path)
        except ConfigError as exc:
            for issue in exc.issues:
                log.error("reload rejected: %s", issue)
            self.systemd.notify("READY=1", "STATUS=reload rejected; running the previous config")
            return False
        if new.site != self.config.site or new.mqtt != self.config.mqtt:
            log.warning("reload: site and mqtt changes take effect on restart")
        self._apply(new, first=False)
        self.config = new
        self.authz = Authorizer(new.authorization, new.mqtt.username)  # rules and keys, anew
        self._load_rosters(new)
        self.meetings.configure(new)
        self._publish_discovery()
        log.info("config reloaded from %s", new.path)
        self.systemd.notify("READY=1", f"STATUS={self.status_line()}")
        return True

    def _apply(self, cfg: SiteConfig, first: bool) -> None:
        self.metrics.set_room_alerts({r.id: self.book.room_count(r.id) for r in cfg.rooms})
        wanted: dict[tuple[str, str], tuple[Room, DeviceConfig]] = {
            (room.id, dev.id): (room, dev) for room in cfg.rooms for dev in room.devices
        }
        for room in cfg.rooms:  # room-level readings: attendance, bookings, check results
            self.book.set_rules(room.id, ROOM_DEVICE, room.thresholds)
        # Devices that left the config: stop them and clear their alerts with a reason.
        for key in [k for k in self.pollers if k not in wanted]:
            self.room_pollers.get(key[0], {}).pop(key[1], None)
            self._stop_poller(self.pollers.pop(key), "device removed from config")
        if first:
            configured = set(wanted)
            orphans = {
                (a.room, a.device)
                for a in self.book.active.values()
                if (a.room, a.device) not in configured
            }
            for room_id, dev_id in orphans:
                self.emit(self.book.clear_where("device removed from config", room_id, dev_id))
        for key, (room, dev) in wanted.items():
            existing = self.pollers.get(key)
            if existing is not None and existing.config == dev and not existing.parked:
                existing.room = room
                self._set_rules(existing)
                continue  # unchanged: keeps polling without a gap
            if existing is not None:
                self._stop_poller(existing, "")
            self._start_poller(room, dev, cfg.poll_jitter)

    def _start_poller(self, room: Room, dev: DeviceConfig, jitter: float) -> None:
        cls = driver_class(dev.driver)
        assert cls is not None, "validated in config"
        poller = Poller(room=room, config=dev, driver=cls(dev, self.context))
        poller.driver.push = lambda partial: self._pushed(poller, partial)
        if isinstance(poller.driver, CardReaderDriver):
            poller.driver.on_card = lambda uid, at: self._on_card(poller, uid, at)
        self._set_rules(poller)
        for warning in poller.driver.config_warnings(room.device_thresholds(dev)):
            log.warning("%s/%s: config: %s", room.id, dev.id, warning)
        self.pollers[poller.key] = poller
        self.room_pollers.setdefault(room.id, {})[dev.id] = poller
        assert self._tasks is not None
        poller.task = self._tasks.create_task(
            self._poll_loop(poller, jitter), name=f"poll:{room.id}/{dev.id}"
        )

    def _set_rules(self, p: Poller) -> None:
        thresholds = p.driver.expand_thresholds(p.room.device_thresholds(p.config))
        self.book.set_rules(p.room.id, p.config.id, thresholds)
        p.deadbands = {m: t.deadband for m, t in thresholds.items() if t.deadband}

    def _stop_poller(self, poller: Poller, reason: str) -> None:
        if poller.task is not None:
            poller.task.cancel()
        self._spawn(poller.driver.close())
        if reason:
            self.emit(self.book.clear_where(reason, poller.room.id, poller.config.id))
            self.metrics.forget_device(poller.room.id, poller.config.id)
            topic = f"{self.mqtt.base}/{poller.room.id}/{poller.config.id}/state"
            self.mqtt.publish_state(
                topic,
                {"online": False, "readings": {}, "removed": True, "ts": iso(self.clock.time())},
            )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- polling -----------------------------------------------------------------------------

    async def _poll_loop(self, p: Poller, jitter: float) -> None:
        poll = p.config.poll
        observe = self.metrics.poll_observer(p.driver.kind)
        # Spread the first polls over the interval, so 5,000 devices do not fire at once.
        await asyncio.sleep(random.uniform(0, poll))
        loop = asyncio.get_running_loop()
        # A backstop for drivers whose wire operations are not all bounded by their own timeout.
        guard = None if p.driver.self_timed else p.config.timeout * 4 + 1.0
        next_at = loop.time()
        while True:
            started = time.perf_counter()
            try:
                if guard is None:
                    readings = await p.driver.poll()
                else:
                    async with asyncio.timeout(guard):
                        readings = await p.driver.poll()
            except DeviceAuthError as exc:
                self._failed(p, f"authentication failed: {exc}")
                p.parked = True
                log.error(
                    "%s/%s: %s; not retrying until the config is reloaded",
                    p.room.id,
                    p.config.id,
                    exc,
                )
                with contextlib.suppress(Exception):
                    await p.driver.close()
                await asyncio.Event().wait()  # parked: a reload starts a new poller
            except (DeviceError, TimeoutError) as exc:
                self._failed(p, str(exc) or "no reply (poll timed out)")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a driver bug must not kill the daemon
                log.exception("%s/%s: driver error", p.room.id, p.config.id)
                self._failed(p, f"driver error: {type(exc).__name__}: {exc}")
            else:
                observe(time.perf_counter() - started)
                self._succeeded(p, readings)
                next_at += p.driver.next_interval(poll) * (1 + random.uniform(-jitter, jitter))
                delay = next_at - loop.time()
                if delay < 0:  # we fell behind (slow device): do not try to catch up
                    next_at, delay = loop.time(), 0
                await asyncio.sleep(delay)
                continue
            with contextlib.suppress(Exception):
                await p.driver.close()
            await asyncio.sleep(backoff(p.failures, poll))
            next_at = loop.time()

    def _succeeded(self, p: Poller, readings: Readings) -> None:
        room_id, dev_id = p.room.id, p.config.id
        p.polls += 1
        if p.online is not True:
            if p.online is False:
                log.info("%s/%s back online after %d failed polls", room_id, dev_id, p.failures)
            p.online, p.failures, p.error = True, 0, ""
            self.metrics.set_up(room_id, dev_id, True)
            self.emit(self.book.observe(room_id, dev_id, {"online": 1}))
        changed = readings != p.readings
        p.readings = readings
        transitions = self.book.observe(room_id, dev_id, readings)
        if transitions:
            self.emit(transitions)
        if changed:
            self.metrics.update(room_id, dev_id, readings)
        if (
            p.published is None
            or p.published[0] is not True
            or (changed and self._moved(p, readings))
            or self.clock.monotonic() - p.published_at > STATE_HEARTBEAT
        ):
            self._publish_device(p)

    @staticmethod
    def _moved(p: Poller, readings: Readings) -> bool:
        """Has any reading moved past its deadband since the last published state?"""
        assert p.published is not None
        last = p.published[1]
        if last.keys() != readings.keys():
            return True
        deadbands = p.deadbands
        for metric, value in readings.items():
            before = last[metric]
            if value == before:
                continue
            band = deadbands.get(metric)
            if (
                band is None
                or not isinstance(value, float | int)
                or not isinstance(before, float | int)
                or isinstance(value, bool)
                or abs(value - before) >= band
            ):
                return True
        return False

    def _pushed(self, p: Poller, partial: Readings) -> None:
        """Readings that arrived between polls (a command's effect, a notification)."""
        if p.online:
            self._succeeded(p, {**p.readings, **partial})

    def _failed(self, p: Poller, error: str) -> None:
        room_id, dev_id = p.room.id, p.config.id
        p.failures += 1
        p.error = error
        if p.online is not False:
            log.warning("%s/%s offline: %s", room_id, dev_id, error)
            p.online = False
            self.metrics.set_up(room_id, dev_id, False)
        self.metrics.poll_errors.labels(p.driver.kind).inc()
        transitions = self.book.observe(room_id, dev_id, {"online": 0}, detail=error)
        if transitions:
            self.emit(transitions)
        if p.published is None or p.published[0] is not False:
            self._publish_device(p)

    # ---- publishing --------------------------------------------------------------------------

    def _publish_device(self, p: Poller) -> None:
        p.published = (p.online, dict(p.readings))
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
        self.mqtt.publish_state(f"{self.mqtt.base}/{p.room.id}/{p.config.id}/state", payload)
        self._publish_room(p.room.id)

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
        if room_id in self._attendees:
            summary["attendees"] = self._attendees[room_id]
        return summary

    def _publish_room(self, room_id: str) -> None:
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
            if t.kind == "raised":
                log.warning("alert %s [%s] %s", a.id, a.severity, a.message)
            else:
                log.info("alert %s %s%s", a.id, t.kind, f" ({t.reason})" if t.reason else "")
        if transitions:
            self.metrics.set_room_alerts({r: self.book.room_count(r) for r in rooms})
            for room in rooms:
                self._publish_room(room)
            self.meetings.on_transitions(transitions)

    # ---- sign-in -----------------------------------------------------------------------------

    def _load_rosters(self, cfg: SiteConfig) -> None:
        for room in cfg.rooms:
            if room.config.roster is not None:
                n = self.attendance.load_roster(room.id, room.config.roster)
                log.info("%s: roster of %d cards from %s", room.id, n, room.config.roster)

    def current_meeting(self, room_id: str) -> str:
        """The meeting a sign-in belongs to: the booking running (or starting within 30 min);
        without one, one per room and UTC day."""
        now = self.clock.time()
        booking = self.meetings.meeting_for_signin(room_id, now)
        if booking is not None:
            return booking.id
        return f"{room_id}-{time.strftime('%Y%m%d', time.gmtime(now))}"

    def _on_card(self, p: Poller, uid: str, read_at: float) -> None:
        """A card read: durable record + event (one transaction), then counts, rules, ack.
        `read_at` is perf_counter() when the frame's last byte arrived: latency starts there."""
        room = p.room
        if room.id in self.sealed_rooms:
            self._seal_breach(p)
        meeting = self.current_meeting(room.id)
        att = self.attendance
        att.enter(room.id, meeting)
        card = att.card(uid)  # the raw UID goes no further than this line
        name = att.attendee(room.id, card)
        cards = att.cards.get(meeting)
        if cards is None:
            cards = att.cards[meeting] = self.store.meeting_cards(meeting)
        ts = self.clock.time()
        event: dict[str, Any] = {
            "type": "signin",
            "meeting": meeting,
            "reader": p.config.id,
            "known": name is not None,
            "attendees": len(cards) + 1,
            "ts": iso(ts),
        }
        if self.config.signins.publish_names:  # STANDARD §5: an explicit opt-in
            event["attendee"] = name
        latency = time.perf_counter() - read_at
        event["latency_ms"] = round(latency * 1000, 3)
        # The name is not stored: the roster keeps it, `roomd signins export` joins it.
        row = SigninRow(meeting, room.id, p.config.id, card, None, ts, latency)
        if not self.store.record_signin(row, [self.mqtt.event(room.id, event)]):
            log.info("%s: card already signed in to %s", room.id, meeting)
            return
        self.mqtt.kick()
        latency = time.perf_counter() - read_at  # durable and handed to MQTT
        cards.add(card)
        att.latencies.setdefault(meeting, []).append(latency)
        self.metrics.signin_latency.observe(latency)
        if name is None:
            log.info("%s: unknown card signed in to %s", room.id, meeting)
        assert isinstance(p.driver, CardReaderDriver)
        p.driver.acknowledge()
        self._room_readings(room, meeting, latency)

    def _room_readings(self, room: Room, meeting: str, latency: float | None = None) -> None:
        att = self.attendance
        n = len(att.cards.get(meeting, ()))
        readings: Readings = {"attendees": n}
        area = room.config.area_m2
        if area:
            readings["area_per_person_m2"] = round(area / n, 2) if n else None
        if latency is not None:
            readings["signin_latency_s"] = round(latency, 6)
        enough = len(att.latencies.get(meeting, ())) >= self.config.signins.min_for_p95
        p95 = att.p95(meeting) if enough else None
        readings["signin_latency_p95_seconds"] = None if p95 is None else round(p95, 6)
        transitions = self.book.observe(room.id, ROOM_DEVICE, readings)
        if transitions:
            self.emit(transitions)
        self.metrics.update(room.id, ROOM_DEVICE, readings)
        self._attendees[room.id] = n
        self._publish_room(room.id)

    def _seal_breach(self, p: Poller) -> None:
        """STANDARD §2: a large meeting's room is sealed after its inspection; any sign-in
        before the start is reported."""
        sealed = self.meetings.sealed(p.room.id, self.clock.time())
        if sealed is None:
            return
        detail = f"card read at {p.config.id} before {sealed.title or sealed.id} starts"
        self.room_reading(p.room.id, {"room_sealed": "breached"}, detail)
        self.room_event(
            p.room.id, {"type": "seal_breach", "meeting": sealed.id, "reader": p.config.id}
        )

    def room_reading(self, room_id: str, readings: Readings, detail: str = "") -> None:
        """A reading about the room itself (device `_room`): rules, metrics."""
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

    async def check_room(self, room_id: str, level: int | None) -> dict[str, Any]:
        """An on-demand check (`roomd check`), published like a scheduled one."""
        room = next((r for r in self.config.rooms if r.id == room_id), None)
        if room is None:
            raise CommandError(f"no room {room_id!r}")
        now = self.clock.time()
        due, booking = self.meetings.level_due(room_id, now)
        return await self.meetings.check(
            room, level if level is not None else due, booking, on_demand=True
        )

    def purge_signins(self) -> int:
        cutoff = self.clock.time() - self.config.signins.retention
        purged = self.store.purge_signins(cutoff)
        if purged:
            log.info("purged %d sign-in records older than the retention period", purged)
            self.attendance.cards.clear()  # reloaded from the store on next use
        return purged

    def check_inspections(self) -> None:
        """days_since_inspection for every device with `last_inspected` (profile: > 90 → IV)."""
        today = time.gmtime(self.clock.time())
        today_ordinal = date(today.tm_year, today.tm_mon, today.tm_mday).toordinal()
        for p in self.pollers.values():
            if p.config.last_inspected is not None:
                days = today_ordinal - p.config.last_inspected.toordinal()
                reading: Readings = {"days_since_inspection": days}
                self.emit(self.book.observe(p.room.id, p.config.id, reading))
                self.metrics.update(p.room.id, p.config.id, reading)

    def escalate_due(self) -> list[Transition]:
        """Re-announce unacknowledged alerts of the configured grades every interval."""
        esc = self.config.escalation
        now = self.clock.monotonic()
        out: list[Transition] = []
        for alert_id, alert in list(self.book.active.items()):
            if alert.state != "active" or alert.severity not in esc.grades:
                self._announced.pop(alert_id, None)
                continue
            last = self._announced.setdefault(alert_id, now)
            if now - last >= esc.interval:
                self._announced[alert_id] = now
                alert.extra["escalations"] = int(alert.extra.get("escalations", 0)) + 1
                alert.ts = iso(self.clock.time())
                out.append(Transition("escalated", alert))
        for gone in set(self._announced) - set(self.book.active):
            del self._announced[gone]
        if out:
            self.emit(out)
        return out

    def check_descriptors(self) -> None:
        """Say when open file descriptors near the limit (each TCP device holds one; 1,000
        devices ≈ 1,010) — once on the way up, once on the way down."""
        used, soft = open_descriptors(), descriptor_limit()
        if used is None or soft is None:
            return
        near = used >= 0.8 * soft
        if near and not self._fd_warned:
            log.warning(
                "%d of %d file descriptors in use: raise LimitNOFILE= (systemd) or ulimit -n",
                used,
                soft,
            )
        elif not near and self._fd_warned:
            log.info("file descriptors back to %d of %d", used, soft)
        self._fd_warned = near

    async def _housekeeping_loop(self) -> None:
        hourly = 0.0
        while True:
            self.check_descriptors()
            self.instances.tick()
            if self.clock.monotonic() >= hourly:
                self.purge_signins()
                self.check_inspections()
                hourly = self.clock.monotonic() + 3600
            self.escalate_due()
            await asyncio.sleep(5)

    # ---- commands ----------------------------------------------------------------------------

    def _on_command(
        self, room: str | None, device: str | None, payload: bytes, by: str | None
    ) -> None:
        """A message on a command topic: bounded, parsed, its sender identified and authorised,
        then run as a task. Anything refused gets `ok:false` with the reason, and is counted."""
        base = self.mqtt.base
        topic = f"{base}/_daemon/cmd" if room is None else f"{base}/{room}/{device}/cmd"
        result_topic = f"{topic}/result"
        cmd_id: Any = None
        try:
            try:
                command = parse_command(payload)
            except BadCommand as exc:
                cmd_id = exc.cmd_id
                self.metrics.input_rejected.labels(self.config.site, "command").inc()
                raise Refused("malformed", f"bad command: {exc}") from None
            cmd_id, name, args, msg = command.id, command.name, command.args, command.message
            who = self.authz.identify(topic, by, msg)
            if room is None:
                self.authz.site_command(who, name)
                self._spawn(self._daemon_command(result_topic, cmd_id, name, args, who))
                return
            if not self.owns_room(room):
                return  # another instance's room (sharded sites): not ours to answer
            poller = self.pollers.get((room, str(device)))
            if poller is None:
                raise Refused("no_device", f"no device {room}/{device}")
            self.authz.device_command(who, room, poller.config.id, poller.driver.kind, name)
        except Refused as exc:
            self.metrics.commands_refused.labels(self.config.site, exc.reason).inc()
            _limited(logging.WARNING, f"refused:{exc.reason}:{by}", "command refused: %s", exc)
            self.mqtt.publish_now(
                result_topic,
                {"id": cmd_id, "ok": False, "error": str(exc), "ts": iso(self.clock.time())},
            )
            return
        self._spawn(self._device_command(poller, result_topic, cmd_id, name, args))

    def _on_bookings(self, room: str, payload: bytes, by: str | None) -> None:
        """A bookings list pushed by a booking system: only from the sources allowed to."""
        if not self.owns_room(room):
            return
        who = Principal.by_topic(by)
        try:
            self.authz.bookings(who)
        except Refused as exc:
            self.metrics.commands_refused.labels(self.config.site, exc.reason).inc()
            _limited(logging.WARNING, f"bookings:{who.name}", "%s: bookings refused: %s", room, exc)
            return
        self.meetings.on_bookings_message(room, payload)

    def retained_snapshot(self) -> dict[str, bytes]:
        """Retained topics the outbox announced once: every active alert, each room's last
        check. Re-sent on every (re)connect (a broker restarted without persistence)."""
        out = {
            self.mqtt.alert_topic(a.room, a.id): _dumps(a.to_json())
            for a in self.book.active.values()
        }
        for room_id, report in self.meetings.last_check.items():
            if self.owns_room(room_id):
                out[f"{self.mqtt.base}/{room_id}/checks/latest"] = _dumps(report)
        return out

    def _instance_conflict(self, room_id: str, detail: str | None) -> None:
        value = "conflict" if detail else None
        self.room_reading(room_id, {"instance_conflict": value}, detail or "")

    def owns_room(self, room_id: str) -> bool:
        return room_id in self.room_pollers or self.config.room(room_id) is not None

    async def _device_command(
        self, p: Poller, topic: str, cmd_id: Any, name: str, args: dict[str, Any]
    ) -> None:
        result: dict[str, Any] = {"id": cmd_id}
        try:
            if name == "soundcheck" and isinstance(p.driver, MixerDriver | AudioProbeDriver):
                async with asyncio.timeout(60.0):
                    value = await self.soundcheck(p.room)
            else:
                async with asyncio.timeout(max(10.0, p.config.timeout * 5)):
                    value = await p.driver.command(name, args)
            result.update(ok=True, result=value)
        except CommandError as exc:
            result.update(ok=False, error=str(exc))
        except DeviceError as exc:
            result.update(ok=False, error=f"device: {exc}")
        except TimeoutError:
            result.update(ok=False, error="device did not complete the command in time")
        except Exception as exc:
            log.exception("command %s on %s/%s", name, p.room.id, p.config.id)
            result.update(ok=False, error=f"internal error: {type(exc).__name__}")
        result["ts"] = iso(self.clock.time())
        self.mqtt.publish_now(topic, result)
        event = {"type": "command", "device": p.config.id, "command": name, "args": args, **result}
        self.emit([], [self.mqtt.event(p.room.id, event)])

    async def _daemon_command(
        self, topic: str, cmd_id: Any, name: str, args: dict[str, Any], who: Principal
    ) -> None:
        result: dict[str, Any] = {"id": cmd_id}
        if name == "ack":
            alert_id = args.get("alert")
            # `by` is who the broker or a signature says sent it; a name in args is only a
            # claim, kept beside it (e.g. the technician at the shared console).
            claimed = str(args.get("by", ""))[:64]
            if who.how == "none":
                by = f"{claimed} (unverified)" if claimed else "anonymous"
            else:
                by = who.name if not claimed or claimed == who.name else f"{who.name} ({claimed})"
            t = self.book.acknowledge(str(alert_id), by=by) if alert_id else None
            if t is None:
                result.update(ok=False, error=f"no active alert {alert_id!r}")
            else:
                self.emit([t])
                result.update(ok=True, result={"alert": t.alert.id, "state": t.alert.state})
        elif name == "reload":
            ok = self.reload()
            result.update(
                ok=ok, **({} if ok else {"error": "new config invalid; see the daemon log"})
            )
        elif name == "status":
            result.update(ok=True, result=self.health())
        elif name == "check":
            level = args.get("level")
            if level is not None and level not in (0, 1, 2, 3):
                result.update(ok=False, error="args.level: 0 (inspection), 1, 2 or 3")
            else:
                try:
                    report = await self.check_room(str(args.get("room")), level)
                    result.update(ok=True, result=report)
                except CommandError as exc:
                    result.update(ok=False, error=str(exc))
        else:
            result.update(
                ok=False, error=f"unknown command {name!r} (known: ack, reload, status, check)"
            )
        result["ts"] = iso(self.clock.time())
        self.mqtt.publish_now(topic, result)

    async def soundcheck(self, room: Room) -> dict[str, Any]:
        """The room's sound check (mixer test signal → audio probe); an event either way."""
        mixer, probe = audio_devices(self.room_pollers.get(room.id, {}).values())
        if probe is None:
            raise CommandError(f"room {room.id} has no audio-probe device to measure with")
        outcome = await room_soundcheck(room, mixer, probe)
        report = outcome.as_dict()
        report.update(mixer=mixer.config.id if mixer else None, probe=probe.config.id, room=room.id)
        event = {"type": "soundcheck", **report, "ts": iso(self.clock.time())}
        self.emit([], [self.mqtt.event(room.id, event)])
        if outcome.passed:
            log.info("%s: sound check passed", room.id)
        else:
            log.warning("%s: sound check failed: %s", room.id, "; ".join(outcome.reasons))
        return report

    def _publish_discovery(self) -> None:
        """Home Assistant discovery configs for what the config has; removals for the rest."""
        ha = self.config.homeassistant
        previous = self._ha_topics.load()
        current: dict[str, dict[str, Any]] = {}
        if ha.enabled:
            rooms = {r.id: r.config.name for r in self.config.rooms}
            devices = [
                DeviceInfo(
                    p.room.id,
                    p.room.config.name,
                    p.config.id,
                    p.config.name,
                    p.driver.kind,
                    p.driver.model_name,
                    tuple(p.driver.metrics),
                )
                for p in self.pollers.values()
            ]
            current = discovery_configs(
                ha.prefix, self.mqtt.base, self.config.site, rooms, devices, ha.login
            )
        for topic, payload in current.items():
            self.mqtt.publish_state(topic, payload)
        for topic in previous - current.keys():
            self.mqtt.unpublish(topic)
        if current.keys() != previous:
            self._ha_topics.save(set(current))

    def _on_ha_status(self, payload: bytes) -> None:
        if payload.strip() == b"online":  # Home Assistant restarted: send the configs again
            self._publish_discovery()

    async def _systemd_loop(self) -> None:
        """WATCHDOG=1 at half of WatchdogSec, from the event loop itself: a stalled loop stops
        the pings and systemd restarts the service. STATUS= every 10 s."""
        if not self.systemd.enabled:
            return
        interval = min(self.systemd.watchdog or 10.0, 10.0)
        since_status = 0.0
        while True:
            await asyncio.sleep(interval)
            lines = ["WATCHDOG=1"] if self.systemd.watchdog else []
            since_status += interval
            if since_status >= 10.0 or not lines:
                lines.append(f"STATUS={self.status_line()}")
                since_status = 0.0
            self.systemd.notify(*lines)

    def status_line(self) -> str:
        h = self.health()
        mqtt = "MQTT connected" if h["mqtt_connected"] else f"MQTT down, {h['outbox']} queued"
        return f"{h['devices_up']}/{h['devices']} devices up, {h['alerts_active']} alerts, {mqtt}"

    # ---- introspection -----------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        up = sum(1 for p in self.pollers.values() if p.online)
        return {
            "status": "stopping" if self._stopping.is_set() else "ok",
            "site": self.config.site,
            "instance": self.instances.id,
            "mqtt_connected": self.mqtt.connected.is_set(),
            "outbox": self.store.outbox_depth,
            "devices": len(self.pollers),
            "devices_up": up,
            "alerts_active": len(self.book.active),
            "tasks": len(asyncio.all_tasks()),
        }

    def snapshot(self) -> list[dict[str, Any]]:
        """Rows for the terminal view."""
        rows = []
        for (room_id, dev_id), p in sorted(self.pollers.items()):
            alerts = [
                a for a in self.book.active.values() if a.room == room_id and a.device == dev_id
            ]
            rows.append(
                {
                    "room": room_id,
                    "device": dev_id,
                    "driver": p.driver.kind,
                    "online": p.online,
                    "readings": dict(p.readings),
                    "error": p.error,
                    "alerts": alerts,
                }
            )
        return rows


class _Stop(Exception):
    pass


def open_descriptors() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def descriptor_limit() -> int | None:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def raise_descriptor_limit(devices: int) -> str | None:
    """A daemon needs about one descriptor per network device plus ~64 of its own: raise the
    soft limit up to the hard one when that is short, else say so."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = devices + 64
    if soft == resource.RLIM_INFINITY or soft >= need * 1.25:
        return None
    target = hard if hard == resource.RLIM_INFINITY else min(hard, max(need * 2, soft))
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        target = soft
    if target != resource.RLIM_INFINITY and target < need * 1.25:
        return (
            f"{devices} devices need about {need} file descriptors but the limit is {target}: "
            "set LimitNOFILE= in the unit (or ulimit -n)"
        )
    return None


def startup_warnings(cfg: SiteConfig) -> list[str]:
    """Risks in a valid config worth a line at start (checked without connecting anywhere)."""
    out = []
    secret = cfg.mqtt.password_file or cfg.mqtt.password
    if secret and not cfg.mqtt.tls and cfg.mqtt.host not in ("127.0.0.1", "localhost", "::1"):
        out.append(f"mqtt: sending a password without TLS to {cfg.mqtt.host}; use mqtts://")
    if cfg.authorization is None:
        out.append(
            "authorization: not configured: any broker client that can publish to the command "
            "topics drives devices and pushes bookings; see docs/operations.md"
        )
    return out


def state_dir_writable(path: Path) -> str | None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        return f"state_dir {path}: {exc.strerror or exc}"
    return None
