"""A meeting day, driven by the daemon's clock (STANDARD §2–§4).

For each booking: the day-before inspection and seal (large and important meetings), checks at
T−2 h, T−1 h and T−30 min, optional pre-warm, faults one grade more severe while it runs,
failover to backup devices, no-show after 10 min without a sign-in, shutdown after the end
(unless another meeting follows soon), and a usage record per device.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..drivers.base import CommandError, DeviceError, Readings
from ..drivers.nfc import CardReaderDriver
from ..drivers.x32 import MixerDriver
from .bookings import OFF_LOOP_BYTES, Booking, CalendarWorker, RoomBookings, parse_push
from .checks import RoomChecker, render_html
from .clock import iso
from .config import ROOM_DEVICE, Room, SiteConfig
from .inbound import LogLimiter
from .model import Transition
from .private import private_dir, write_private
from .store import Store, UsageRow

if TYPE_CHECKING:
    from .site import Poller, Site

SEAL_CONTACTS = ("door", "window")  # readings of contacts that break a seal when "open"

log = logging.getLogger("roomd.meetings")
_limited = LogLimiter(log)

STALE = 900.0  # a shutdown or record more than this late (the daemon was down) is skipped
CHANNEL_METRIC = re.compile(r"^ch(\d\d)_")


class ActionLog:
    """(booking id, action) pairs done, written through to the store at once: a restart (or a
    kill -9) after the shutdown does not switch the room off again, a failover is not repeated.
    """

    KEEP = 7 * 86400.0  # a booking's actions are forgotten a week after they were done

    def __init__(self, store: Store, now: Callable[[], float]) -> None:
        self.store = store
        self.now = now
        self._done = store.actions_done()

    def __contains__(self, key: object) -> bool:
        return key in self._done

    def add(self, key: tuple[str, str]) -> None:
        self.update([key])

    def update(self, keys: Iterable[tuple[str, str]]) -> None:
        new = [k for k in keys if k not in self._done]
        if new:
            self.store.mark_done(new, self.now())
            self._done.update(new)

    def forget_old(self) -> None:
        self.store.forget_actions(self.now() - self.KEEP)
        self._done = self.store.actions_done()


class MeetingPlanner:
    def __init__(self, site: Site, checker: RoomChecker) -> None:
        self.site = site
        self.checker = checker
        self.rooms: dict[str, RoomBookings] = {}
        self.done = ActionLog(site.store, site.clock.time)  # (booking id, action)
        # (room, device, contact) → its state at the last tick, while the room is sealed
        self._contacts: dict[tuple[str, str, str], Any] = {}
        # room → last report, across restarts
        self.last_check: dict[str, dict[str, Any]] = site.store.last_checks()
        self.usage: dict[str, dict[str, UsageRow]] = {}  # booking id → device → row
        self._last_tick: float | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._push_seq: dict[str, int] = {}
        self._announced: dict[str, dict[str, Any]] = {}  # room → last `meeting` message
        self.calendars = CalendarWorker()
        self.configure(site.config)

    # ---- config and bookings -----------------------------------------------------------------

    def configure(self, cfg: SiteConfig) -> None:
        for room in cfg.rooms:
            calendar = room.config.calendar
            sources = tuple([calendar] if isinstance(calendar, str) else calendar or [])
            existing = self.rooms.get(room.id)
            if existing is None:
                self.rooms[room.id] = RoomBookings(room.id, sources)
            elif existing.sources != sources:
                existing.sources = sources
                for gone in set(existing.by_source) - {*sources, "mqtt"}:
                    existing.by_source.pop(gone)
                    existing.errors.pop(gone, None)
        for gone in set(self.rooms) - {r.id for r in cfg.rooms}:
            del self.rooms[gone]

    async def refresh(self) -> None:
        cfg = self.site.config.meetings
        now = self.site.clock.time()
        await asyncio.gather(
            *(
                rb.refresh(self.calendars, now, cfg.horizon, cfg.max_bookings)
                for rb in self.rooms.values()
            )
        )
        for room_id in self.rooms:
            self._report_sources(room_id)
        # Forget what was done long ago (by age: a calendar that fails to load at start must not
        # make the planner forget what it did).
        self.done.forget_old()

    def on_bookings_message(self, room_id: str, payload: bytes) -> None:
        rb = self.rooms.get(room_id)
        if rb is None:
            _limited(logging.WARNING, "unknown-room", "bookings for unknown room %r", room_id)
            return
        limit = self.site.config.meetings.max_bookings
        if len(payload) <= OFF_LOOP_BYTES:
            rb.push(payload, limit)
            self._report_sources(room_id)
            self.tick()
            return
        # A large list is parsed in a worker thread; a newer push supersedes one still parsing.
        seq = self._push_seq[room_id] = self._push_seq.get(room_id, 0) + 1
        self._spawn(self._push_off_loop(rb, payload, limit, seq), f"bookings:{room_id}")

    async def _push_off_loop(self, rb: RoomBookings, payload: bytes, limit: int, seq: int) -> None:
        parsed = await asyncio.to_thread(parse_push, payload, rb.room, limit)
        if self._push_seq.get(rb.room) != seq or self.rooms.get(rb.room) is not rb:
            return
        rb.pushed_result(parsed, limit)
        self._report_sources(rb.room)
        self.tick()

    def _report_sources(self, room_id: str) -> None:
        rb = self.rooms[room_id]
        value = "error" if rb.errors else "ok"
        detail = "; ".join(rb.errors.values())
        if rb.errors:
            _limited(
                logging.WARNING,
                f"bookings:{room_id}:{detail[:80]}",
                "%s: bookings: %s (keeping the last good bookings)",
                room_id,
                detail,
            )
        self.site.room_reading(room_id, {"bookings": value if rb.known else None}, detail)

    # ---- queries -----------------------------------------------------------------------------

    def current(self, room_id: str, now: float | None = None) -> Booking | None:
        rb = self.rooms.get(room_id)
        if rb is None:
            return None
        return rb.current(self.site.clock.time() if now is None else now)

    def meeting_for_signin(self, room_id: str, now: float) -> Booking | None:
        """The meeting a sign-in belongs to: the running one, else one starting within 30 min
        (people arrive early)."""
        rb = self.rooms.get(room_id)
        if rb is None:
            return None
        running = rb.current(now)
        if running is not None:
            return running
        upcoming = rb.next_after(now)
        if upcoming is not None and upcoming.start - now <= 1800:
            return upcoming
        return None

    def sealed(self, room_id: str, now: float) -> Booking | None:
        """A large or important meeting whose room was inspected and is sealed until its start."""
        rb = self.rooms.get(room_id)
        if rb is None:
            return None
        bookings = rb.all()
        for b in bookings:
            inspected = b.cls != "small" and (b.id, "inspection") in self.done
            if inspected and 0 < b.start - now <= self.site.config.meetings.inspection:
                # The seal holds from the end of the room's last meeting before this one.
                if any(o.id != b.id and o.end > now and o.start < b.start for o in bookings):
                    continue
                return b
        return None

    def next_booking(self, room_id: str, now: float) -> Booking | None:
        rb = self.rooms.get(room_id)
        return rb.next_after(now) if rb else None

    def level_due(self, room_id: str, now: float) -> tuple[int, Booking | None]:
        """For an on-demand check: the level the next meeting has reached (1 if none yet)."""
        b = self.current(room_id, now) or self.next_booking(room_id, now)
        if b is None:
            return 1, None
        levels = self.site.config.meetings.check_levels
        reached = [i + 1 for i, before in enumerate(levels) if now >= b.start - before]
        return (max(reached) if reached else 1), b

    # ---- the clock ---------------------------------------------------------------------------

    async def run(self) -> None:
        cfg = self.site.config.meetings
        next_refresh = 0.0
        while True:
            # A bug here must not stop the daemon's polling: log it and carry on next second.
            try:
                if time.monotonic() >= next_refresh:
                    next_refresh = time.monotonic() + cfg.calendar_refresh
                    await self.refresh()
                self.tick()
            except Exception:
                log.exception("meeting planner")
            await asyncio.sleep(1.0)

    def tick(self) -> None:
        """Everything due at the daemon clock's now. Cheap; called every second."""
        d = self.site
        now = d.clock.time()
        dt = 0.0 if self._last_tick is None else max(0.0, min(now - self._last_tick, 60.0))
        self._last_tick = now
        keep_on = d.config.meetings.keep_on_within
        for room in d.config.rooms:
            rb = self.rooms.get(room.id)
            if rb is None:
                continue
            running = rb.current(now)
            if rb.known and running is None:
                d.book.idle_rooms.add(room.id)
            else:
                d.book.idle_rooms.discard(room.id)
            # Vacant: idle, and no meeting within `keep_on_within` (the room being readied).
            upcoming = rb.next_after(now)
            soon = upcoming is not None and upcoming.start - now <= keep_on
            if rb.known and running is None and not soon:
                d.book.vacant_rooms.add(room.id)
            else:
                d.book.vacant_rooms.discard(room.id)
            if running is None:
                d.book.meeting_rooms.discard(room.id)
            else:
                d.book.meeting_rooms.add(room.id)
                self._track(room, running, dt)
            self._announce(room.id, running, rb.next_after(now))
            sealed = self.sealed(room.id, now)
            if sealed is None and room.id in d.sealed_rooms:
                d.sealed_rooms.discard(room.id)
                d.room_reading(room.id, {"room_sealed": None})
                for seen in [k for k in self._contacts if k[0] == room.id]:
                    del self._contacts[seen]
            elif sealed is not None:
                d.sealed_rooms.add(room.id)
                self._watch_seal(room, sealed)
            for b in rb.all():
                self._due(room, rb, b, now)

    def _watch_seal(self, room: Room, sealed: Booking) -> None:
        """A sealed room's door or window contact opening is a breach, like a card read in it
        (STANDARD §2: sealed after the inspection until the meeting)."""
        for p in self.site.room_pollers.get(room.id, {}).values():
            for contact in SEAL_CONTACTS:
                state = p.readings.get(contact)
                if state is None:
                    continue
                seen = (room.id, p.config.id, contact)
                before = self._contacts.get(seen)
                self._contacts[seen] = state
                # A breach is a contact opening; one open when the seal began is the "left
                # open" alert's business (the seal could not be set), not an entry.
                if state != "open" or before != "closed":
                    continue
                key = (sealed.id, f"breach:{p.config.id}:{contact}")
                if key in self.done:
                    continue  # one breach per contact and meeting: the alert stays until ack
                self.done.add(key)
                detail = f"{contact} opened ({p.config.id}) before {sealed.title or sealed.id}"
                self.site.room_reading(room.id, {"room_sealed": "breached"}, detail)
                self.site.room_event(
                    room.id,
                    {"type": "seal_breach", "meeting": sealed.id, "contact": contact,
                     "device": p.config.id},
                )  # fmt: skip

    def _announce(self, room_id: str, running: Booking | None, upcoming: Booking | None) -> None:
        """The room's running and next meeting, retained on `{room}/meeting` when it changes
        (for `roomd top` and room panels)."""
        meeting = {
            "current": running.as_dict() if running else None,
            "next": upcoming.as_dict() if upcoming else None,
        }
        if self._announced.get(room_id) != meeting:
            self._announced[room_id] = meeting
            self.site.mqtt.publish_state(f"{self.site.mqtt.base}/{room_id}/meeting", meeting)

    def _due(self, room: Room, rb: RoomBookings, b: Booking, now: float) -> None:
        cfg = self.site.config.meetings
        done = self.done
        pollers = self.site.room_pollers.get(room.id, {}).values()
        if any(p.online is None for p in pollers):
            return  # just started: act once every device has answered (or failed) once
        if now < b.start:
            if b.cls != "small" and now >= b.start - cfg.inspection:
                first = b.start - cfg.check_levels[0]
                if (b.id, "inspection") not in done and now < first:
                    done.add((b.id, "inspection"))
                    self._spawn(self.check(room, 0, b), f"inspection:{room.id}")
            reached = [
                i + 1 for i, before in enumerate(cfg.check_levels) if now >= b.start - before
            ]
            if reached:
                level = max(reached)
                if (b.id, f"L{level}") not in done:
                    # A level that was missed (the daemon was down) is covered by the later one.
                    done.update((b.id, f"L{n}") for n in range(1, level + 1))
                    done.add((b.id, "inspection"))
                    self._spawn(self.check(room, level, b), f"check:{room.id}:L{level}")
            warm = cfg.prewarm is not None and now >= b.start - cfg.prewarm
            if warm and (b.id, "prewarm") not in done:
                done.add((b.id, "prewarm"))
                self._spawn(self.prewarm(room, b), f"prewarm:{room.id}")
            return
        if now < b.end:
            if now >= b.start + cfg.no_show_after and (b.id, "no_show") not in done:
                done.add((b.id, "no_show"))
                self._no_show(room, b)
            return
        if (b.id, "ended") not in done:
            done.add((b.id, "ended"))
            if now - b.end < STALE + cfg.shutdown_grace:
                self._record_usage(room, b)
        if now >= b.end + cfg.shutdown_grace and (b.id, "shutdown") not in done:
            done.add((b.id, "shutdown"))
            if now - b.end - cfg.shutdown_grace > STALE:
                return  # long over (the daemon was down): do not switch off a later meeting
            following = rb.next_after(b.end - 1)
            while following is not None and following.id == b.id:
                following = rb.next_after(following.start)
            if following is not None and following.start - b.end <= cfg.shutdown_gap:
                log.info("%s: %s ended; next meeting soon, no shutdown", room.id, b.id)
                return
            self._spawn(self.shutdown(room, b), f"shutdown:{room.id}")

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    async def cancel(self) -> None:
        """On stop: actions still running (a check waiting for a projector) are abandoned."""
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        self.calendars.close()

    async def idle(self) -> None:
        """Wait until every action started so far has finished (tests, shutdown)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    # ---- actions -----------------------------------------------------------------------------

    async def check(
        self, room: Room, level: int, booking: Booking | None, on_demand: bool = False
    ) -> dict[str, Any]:
        """A check; its failure raises "room not ready" when it is scheduled, or on demand
        when a meeting runs or starts within the first check level (T−2 h). Otherwise an
        on-demand check reports and pages nobody."""
        d = self.site
        previous = self.last_check.get(room.id)
        if previous is not None and booking is not None:
            same = (previous.get("meeting") or {}).get("id") == booking.id
            previous = previous if same else None
        report = await self.checker.run(room, level, booking, previous)
        now = d.clock.time()
        near = booking is not None and booking.start - now <= d.config.meetings.check_levels[0]
        if on_demand:
            report["on_demand"] = True
        self.last_check[room.id] = report
        d.publish_check(room, report, pages=not on_demand or near)
        self._save(room, report)
        return report

    def _save(self, room: Room, report: dict[str, Any]) -> None:
        folder = Path(self.site.config.state_dir) / "checks" / room.id
        try:
            private_dir(folder.parent)
            private_dir(folder)
            stem = f"{report['ts'][:19].replace(':', '')}-L{report['level']}"
            n = 1
            while (folder / f"{stem}.json").exists():  # two checks in one second
                n += 1
                stem = f"{stem.split('.')[0]}.{n}"
            write_private(folder / f"{stem}.json", json.dumps(report, indent=1))
            write_private(folder / f"{stem}.html", render_html(report, self.site.config.language))
        except OSError as exc:
            log.error("%s: cannot save the check report: %s", room.id, exc)

    async def prewarm(self, room: Room, b: Booking) -> None:
        done, failed = await self._each(room, lambda p: p.driver.prewarm())
        self.site.room_event(
            room.id, {"type": "prewarm", "meeting": b.id, "done": done, "failed": failed}
        )

    async def shutdown(self, room: Room, b: Booking) -> None:
        done, failed = await self._each(room, lambda p: p.driver.shutdown())
        level = logging.WARNING if failed else logging.INFO
        log.log(level, "%s: shutdown after %s: done %s, failed %s", room.id, b.id, done, failed)
        self.site.room_event(
            room.id, {"type": "shutdown", "meeting": b.id, "done": done, "failed": failed}
        )

    async def _each(self, room: Room, action: Any) -> tuple[list[str], list[str]]:
        done: list[str] = []
        failed: list[str] = []
        for p in list(self.site.room_pollers.get(room.id, {}).values()):
            try:
                async with asyncio.timeout(30):
                    what = await action(p)
            except (DeviceError, CommandError, TimeoutError) as exc:
                failed.append(f"{p.config.id}: {exc or type(exc).__name__}")
                continue
            if what:
                done.append(f"{p.config.id}: {what}")
        return done, failed

    def _no_show(self, room: Room, b: Booking) -> None:
        d = self.site
        pollers = d.room_pollers.get(room.id, {}).values()
        if not any(isinstance(p.driver, CardReaderDriver) for p in pollers):
            return  # no reader: nobody can say whether people came
        if d.store.meeting_cards(b.id):
            return
        minutes = self.site.config.meetings.no_show_after / 60
        log.warning("%s: no sign-in %g min after the start of %s", room.id, minutes, b.id)
        d.room_event(
            room.id,
            {
                "type": "no_show",
                "meeting": b.id,
                "title": b.title,
                "organiser": b.organiser,
                "start": iso(b.start),
                "minutes_after_start": round((d.clock.time() - b.start) / 60, 1),
            },
        )

    # ---- during the meeting: failover and usage ----------------------------------------------

    def on_transitions(self, transitions: list[Transition]) -> None:
        d = self.site
        for t in transitions:
            a = t.alert
            if t.kind != "raised" or a.device == ROOM_DEVICE:
                continue
            booking = self.current(a.room)
            if booking is None:
                continue
            row = self.usage.get(booking.id, {}).get(a.device)
            if row is not None:
                row.alerts += 1
                row.anomalies.append(f"{a.ts} [{a.severity}] {a.message}")
            if not d.config.meetings.failover or a.severity not in ("I", "II"):
                continue
            primary = d.room_pollers.get(a.room, {}).get(a.device)
            if primary is None:
                continue
            match = CHANNEL_METRIC.match(a.metric)
            if match and isinstance(primary.driver, MixerDriver):
                channel = int(match.group(1))
                key = (booking.id, f"{a.device}:ch{channel}")
                failover = (key[0], f"failover:{key[1]}")
                if failover not in self.done and channel in primary.driver.config.backup_channels:
                    self.done.add(failover)
                    self._spawn(self._channel_failover(primary, channel, booking, a.id), "failover")
                continue
            backup_id = primary.config.backup
            if backup_id is None or (booking.id, f"failover:{a.device}") in self.done:
                continue
            backup = d.room_pollers.get(a.room, {}).get(backup_id)
            if backup is None:
                continue
            # Switch once per meeting; a recovered primary is not switched back (STANDARD §3:
            # the operator decides, after diagnosis).
            self.done.add((booking.id, f"failover:{a.device}"))
            self._spawn(self._failover(primary, backup, booking, a.id), "failover")

    async def _failover(self, primary: Poller, backup: Poller, b: Booking, alert_id: str) -> None:
        readings: Readings = dict(primary.readings)
        try:
            async with asyncio.timeout(180):  # a lamp projector warms up for a minute or two
                what = await backup.driver.take_over(readings)
            ok, detail = True, what or "nothing to switch"
        except (DeviceError, CommandError, TimeoutError) as exc:
            ok, detail = False, f"failed: {exc or type(exc).__name__}"
        self._announce_failover(primary, backup.config.id, b, alert_id, ok, detail)

    async def _channel_failover(
        self, mixer: Poller, channel: int, b: Booking, alert_id: str
    ) -> None:
        assert isinstance(mixer.driver, MixerDriver)
        backup = mixer.driver.config.backup_channels[channel]
        try:
            async with asyncio.timeout(10):
                what = await mixer.driver.backup_channel(channel)
            ok, detail = True, what or ""
        except (DeviceError, CommandError, TimeoutError) as exc:
            ok, detail = False, f"failed: {exc or type(exc).__name__}"
        self._announce_failover(mixer, f"{mixer.config.id}:ch{backup:02d}", b, alert_id, ok, detail)

    def _announce_failover(
        self, primary: Poller, backup: str, b: Booking, alert_id: str, ok: bool, detail: str
    ) -> None:
        d = self.site
        room = primary.room.id
        level = logging.WARNING if ok else logging.ERROR
        log.log(level, "%s: failover %s → %s: %s", room, primary.config.id, backup, detail)
        d.note_alert(alert_id, {"failover": {"backup": backup, "ok": ok, "detail": detail}})
        d.room_event(
            room,
            {
                "type": "failover",
                "meeting": b.id,
                "primary": primary.config.id,
                "backup": backup,
                "alert": alert_id,
                "ok": ok,
                "detail": detail,
            },
        )

    def _track(self, room: Room, b: Booking, dt: float) -> None:
        rows = self.usage.get(b.id)
        if rows is None:
            rows = self.usage[b.id] = {}
        for p in self.site.room_pollers.get(room.id, {}).values():
            row = rows.get(p.config.id)
            if row is None:
                row = rows[p.config.id] = UsageRow(
                    b.id, room.id, p.config.id, p.driver.kind, b.start, b.end
                )
            if p.online:
                row.online_s += dt
                if _in_use(p.readings):
                    row.in_use_s += dt

    def _record_usage(self, room: Room, b: Booking) -> None:
        rows = self.usage.pop(b.id, None)
        if not rows:
            return
        self.site.store.record_usage(rows.values())
        self.site.room_event(
            room.id,
            {
                "type": "usage",
                "meeting": b.id,
                "devices": {
                    r.device: {
                        "online_s": round(r.online_s),
                        "in_use_s": round(r.in_use_s),
                        "alerts": r.alerts,
                    }
                    for r in rows.values()
                },
            },
        )


def _in_use(readings: Readings) -> bool:
    """Was the device doing its job (not merely answering)?"""
    if "projector_power" in readings:
        return readings["projector_power"] == "on"
    if "main_mute" in readings:
        return readings["main_mute"] == "off"
    if "lights" in readings:  # an I/O module or KNX: in use while the room is lit
        return readings["lights"] == "on"
    return True
