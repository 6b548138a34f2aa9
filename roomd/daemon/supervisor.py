"""The daemon: the one place that wires roomd together, and its lifecycle.

A reading's way, one step per module: drivers (drivers/) → the poll engine (engine.py) → the
site's state, rules and alert book (site.py, alerts.py) → sinks (sinks/mqtt.py,
sinks/prometheus.py, store.py). Services react to readings and transitions through the site:
meetings (meetings.py), checks (checks.py), sign-ins (signins.py), commands (commands.py).
Sinks start before sources; one device's failure is its own (see engine.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..drivers import driver_class
from ..drivers.base import (
    CommandError,
    DeviceConfig,
    DriverContext,
    Readings,
)
from ..drivers.nfc import CardReaderDriver
from .alerts import AlertBook
from .attendance import Attendance
from .authz import Authorizer
from .checks import RoomChecker
from .clock import Clock, iso
from .commands import CommandService
from .config import ROOM_DEVICE, ConfigError, Room, SiteConfig, load_config
from .discovery import HomeAssistantDiscovery
from .engine import PollEngine
from .forecast import Forecaster
from .housekeeping import Housekeeping, raise_descriptor_limit
from .inbound import LogLimiter
from .instances import Instances
from .meetings import MeetingPlanner
from .model import Transition
from .notifications import NotificationPlanner
from .shards import ShardError, for_shard, shard_label
from .signins import SigninService
from .sinks.mqtt import MqttSink
from .sinks.mqtt import dumps as _dumps
from .sinks.notify import Delivery
from .sinks.prometheus import HttpServer, Metrics
from .site import Poller, Site
from .store import Pending, Store
from .systemd import SdNotifier
from .ventilation import VentilationEstimator

if TYPE_CHECKING:
    from ..console.app import Console

INCIDENT_RETENTION = 730 * 86400.0  # seconds: alert history kept two years, as sign-ins

log = logging.getLogger("roomd")
_limited = LogLimiter(log)


class Daemon:
    def __init__(self, config: SiteConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or Clock()
        self.store = Store(config.state_dir)
        self.book = AlertBook(self.clock, self.store.active_alerts())
        self.metrics = Metrics(config.site)
        self.mqtt = MqttSink(config.mqtt, config.site, self.store, self.clock, shard=config.shard)
        self.http = HttpServer(config.http.host, config.http.port, self.metrics, self.health)
        self.context = DriverContext()
        self.site = Site(config, self.clock, self.store, self.book, self.metrics, self.mqtt)
        self.pollers = self.site.pollers
        self.room_pollers = self.site.room_pollers
        self.sealed_rooms = self.site.sealed_rooms
        self.housekeeping = Housekeeping(self.site)
        self.forecaster = Forecaster(self.site, self.clock)
        self.ventilation = VentilationEstimator(self.site, self.clock)
        self.discovery = HomeAssistantDiscovery(self.site)
        self.engine = PollEngine(self.site.readings, self._engine_failure, config.poll_jitter)
        self._stopping = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._delivering = False  # the notification deliverer's task runs
        self.ready = asyncio.Event()
        self.systemd = SdNotifier()
        self.attendance = Attendance(
            Attendance.load_secret(config.signins.secret_file, config.state_dir)
        )
        self.signins = SigninService(self.site, self.attendance)
        self.signins.load_rosters(config)
        self.checker = RoomChecker(self.site)
        self.meetings = MeetingPlanner(self.site, self.checker)
        self.signins.meetings = self.meetings
        self.site.transition_listeners.append(self.meetings.on_transitions)
        self.authz = Authorizer(config.authorization, config.mqtt.username)
        self.commands = CommandService(self.site, self)
        self.mqtt.on_command = self.commands.on_command
        self.mqtt.on_bookings = self.commands.on_bookings
        self.mqtt.on_rejected = lambda kind: self.metrics.input_rejected.labels(
            config.site, kind
        ).inc()
        self.mqtt.retained_snapshot = self.retained_snapshot
        self.instances = Instances(
            publish=lambda msg: self.mqtt.publish_now(f"{self.mqtt.base}/_daemon/instances", msg),
            conflict=self._instance_conflict,
            rooms=lambda: [r.id for r in self.config.rooms],
            monotonic=self.clock.monotonic,
        )
        self.mqtt.extra_topics[f"{self.mqtt.base}/_daemon/instances"] = self.instances.heard
        self.mqtt.on_connected.append(self.instances.announce)
        self.console = self._console() if config.console.enabled else None
        self.delivery = Delivery(
            config.notifications,
            self.store,
            self.clock.time,
            config.language,
            on_failing=self._notifications_failing,
            count=lambda target, outcome: self.metrics.notifications.labels(
                config.site, target, outcome
            ).inc(),
        )
        self.delivery.restored = {
            a.room for a in self.book.active.values() if a.metric == "notification_failed"
        }
        self.notifier = NotificationPlanner(self.site, config.notifications, self.delivery.kick)
        self.site.transition_listeners.append(self.notifier.on_transitions)

    def _notifications_failing(self, room_id: str, detail: str | None) -> None:
        if self.site.owns_room(room_id):
            value = "failing" if detail else None
            self.room_reading(room_id, {"notification_failed": value}, detail or "")

    def _console(self) -> Console:
        from ..console.app import Backend, Console  # only a site that enables it pays

        meetings = self.meetings
        backend = Backend(
            site=self.site,
            commands=self.commands,
            current=meetings.current,
            upcoming=lambda room: meetings.next_booking(room, self.clock.time()),
            bookings=lambda room: meetings.rooms[room].all() if room in meetings.rooms else [],
            last_check=lambda: meetings.last_check,
            check_room=self.check_room,
            spawn=self.spawn,
        )
        return Console(self.config.console, backend, self.config.language)

    # ---- what services and tests reach through the daemon (the site has them) ----------------

    def emit(self, transitions: list[Transition], extra: list[Pending] | None = None) -> None:
        self.site.emit(transitions, extra)

    def room_reading(self, room_id: str, readings: Readings, detail: str = "") -> None:
        self.site.room_reading(room_id, readings, detail)

    def room_event(self, room_id: str, event: dict[str, Any]) -> None:
        self.site.room_event(room_id, event)

    def room_summary(self, room_id: str) -> dict[str, Any]:
        return self.site.room_summary(room_id)

    def owns_room(self, room_id: str) -> bool:
        return self.site.owns_room(room_id)

    def current_meeting(self, room_id: str) -> str:
        return self.signins.current_meeting(room_id)

    def purge_signins(self) -> int:
        return self.signins.purge_signins()

    def check_inspections(self) -> None:
        self.housekeeping.check_inspections()

    def escalate_due(self) -> list[Transition]:
        return self.housekeeping.escalate_due()

    async def soundcheck(self, room: Room) -> dict[str, Any]:
        return await self.commands.soundcheck(room)

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
        if self.console is not None:
            await self.console.start()
        self.metrics.outbox.labels(cfg.site).set_function(lambda: self.store.outbox_depth)
        self.metrics.notifications_pending.set_function(self.store.notifications_pending)
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
                tg.create_task(self._lag_loop(), name="loop-lag")
                if self.notifier.enabled:
                    self._delivering = True
                    tg.create_task(self.delivery.run(), name="notifications")
                self._apply(cfg, first=True)
                tg.create_task(self.meetings.run(), name="meetings")
                self.discovery.publish()
                quiet_collector()
                tg.create_task(self._collector_loop(), name="gc")
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
            await self.engine.close()
            for poller in self.pollers.values():
                with contextlib.suppress(Exception):
                    await poller.driver.close()
            for shared in self.context.shared.values():
                with contextlib.suppress(Exception):
                    shared.close()
            if self.console is not None:
                await self.console.stop()
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
        if self.config.shard is not None:
            # A shard reloads its own part of the site, never the whole of it.
            try:
                new = for_shard(new, *self.config.shard)
            except ShardError as exc:
                log.error("reload rejected: %s", exc)
                self.systemd.notify(
                    "READY=1", "STATUS=reload rejected; running the previous config"
                )
                return False
        new = dataclasses.replace(new, http=self.config.http)  # `--listen` stays
        if new.site != self.config.site or new.mqtt != self.config.mqtt:
            log.warning("reload: site and mqtt changes take effect on restart")
        if new.console != self.config.console:
            log.warning("reload: console changes take effect on restart")
        self._apply(new, first=False)
        self.config = self.site.config = new
        self.authz = Authorizer(new.authorization, new.mqtt.username)  # rules and keys, anew
        self.signins.load_rosters(new)
        self.meetings.configure(new)
        self.notifier.config = self.delivery.config = new.notifications
        self.delivery.reset()
        if self.notifier.enabled and self._tasks is not None and not self._delivering:
            self._delivering = True
            self._tasks.create_task(self.delivery.run(), name="notifications")
        self.discovery.publish()
        log.info("config reloaded from %s", new.path)
        self.systemd.notify("READY=1", f"STATUS={self.status_line()}")
        return True

    def _apply(self, cfg: SiteConfig, first: bool) -> None:
        self.engine.jitter = cfg.poll_jitter
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
            # Room-level alerts (a failed check, a conflict, bookings) belong to the room.
            configured = set(wanted) | {(room.id, ROOM_DEVICE) for room in cfg.rooms}
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
            self._start_poller(room, dev)

    def _start_poller(self, room: Room, dev: DeviceConfig) -> None:
        cls = driver_class(dev.driver)
        assert cls is not None, "validated in config"
        poller = Poller(room=room, config=dev, driver=cls(dev, self.context))
        poller.observe = self.metrics.poll_observer(poller.driver.kind)
        poller.driver.push = lambda partial: self.site.pushed(poller, partial)
        if isinstance(poller.driver, CardReaderDriver):
            poller.driver.on_card = lambda uid, at: self.signins.on_card(poller, uid, at)
        self._set_rules(poller)
        for warning in poller.driver.config_warnings(room.device_thresholds(dev)):
            log.warning("%s/%s: config: %s", room.id, dev.id, warning)
        self.pollers[poller.key] = poller
        self.room_pollers.setdefault(room.id, {})[dev.id] = poller
        poller.polled = self.engine.add(dev, poller.driver, poller)

    def _set_rules(self, p: Poller) -> None:
        thresholds = p.driver.expand_thresholds(p.room.device_thresholds(p.config))
        self.book.set_rules(p.room.id, p.config.id, thresholds)
        p.deadbands = {m: t.deadband for m, t in thresholds.items() if t.deadband}

    def _stop_poller(self, poller: Poller, reason: str) -> None:
        if poller.polled is not None:
            self.engine.remove(poller.polled)
        self.spawn(poller.driver.close())
        if reason:
            self.emit(self.book.clear_where(reason, poller.room.id, poller.config.id))
            self.metrics.forget_device(poller.room.id, poller.config.id)
            topic = f"{self.mqtt.base}/{poller.room.id}/{poller.config.id}/state"
            self.mqtt.publish_state(
                topic,
                {"online": False, "readings": {}, "removed": True, "ts": iso(self.clock.time())},
            )

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- polling -----------------------------------------------------------------------------

    def _engine_failure(self, p: Poller, error: str, parked: bool) -> None:
        self.site.failed(p, error)
        if parked:
            room_id, dev_id = p.room.id, p.config.id
            log.error("%s/%s: %s; not retrying until a reload", room_id, dev_id, error)

    # ---- publishing --------------------------------------------------------------------------

    # ---- sign-in -----------------------------------------------------------------------------

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

    async def _lag_loop(self) -> None:
        """How late a 100 ms sleep wakes: the longest of the last 10 s, as a gauge."""
        window: list[float] = []
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.1)
            window.append(max(0.0, loop.time() - before - 0.1))
            if len(window) >= 100:
                self.metrics.loop_lag.set(max(window))
                window.clear()

    async def _collector_loop(self) -> None:
        """Once every device has polled (its links and buffers exist), move them out of the
        collector's sight too; then hourly, a full collection of everything (one pause,
        shown by roomd_event_loop_lag_seconds) so no cycle among long-lived objects stays."""
        longest = max((p.config.poll + p.config.timeout for p in self.pollers.values()), default=0)
        await asyncio.sleep(min(60.0, 2 * longest + 1))
        quiet_collector()
        while True:
            await asyncio.sleep(3600)
            started = time.perf_counter()
            gc.unfreeze()
            quiet_collector()
            log.debug("full garbage collection: %.0f ms", 1000 * (time.perf_counter() - started))

    async def _housekeeping_loop(self) -> None:
        hourly = 0.0
        passes = 0
        while True:
            if passes % 12 == 0:  # once a minute: listing 5,000 descriptors costs milliseconds
                self.housekeeping.check_descriptors()
            passes += 1
            self.instances.tick()
            if self.clock.monotonic() >= hourly:
                self.purge_signins()
                self.store.purge_incidents(self.clock.time() - INCIDENT_RETENTION)
                self.store.purge_notifications(self.clock.time() - INCIDENT_RETENTION)
                self.check_inspections()
                hourly = self.clock.monotonic() + 3600
            self.escalate_due()
            self.notifier.tick()
            self.forecaster.tick()
            self.ventilation.tick()
            await asyncio.sleep(5)

    # ---- commands ----------------------------------------------------------------------------

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
            "shard": shard_label(self.config.shard),
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


def quiet_collector() -> None:
    """Collect, then freeze what is left: config, drivers, rules and links live as long as the
    daemon; out of the cyclic collector's sight they cost nothing at each full collection,
    which at 5,000 devices walked ~1 M objects and stopped the loop for 30-100 ms about once a
    second. Full collections (now of what was made since) run 10× less often."""
    gc.collect()
    gc.freeze()
    gen0, gen1, _ = gc.get_threshold()
    gc.set_threshold(gen0, gen1, 100)


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
