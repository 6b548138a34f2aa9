"""Sign-ins: a card read becomes a durable record, an event and the room's attendance readings.

STANDARD §5: attendee lists are "very high" confidentiality: the raw card UID goes no further
than the keyed hash; names stay in the roster (never stored, on MQTT only by opt-in).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from ..drivers.base import Readings
from ..drivers.nfc import CardReaderDriver
from .attendance import Attendance
from .clock import iso
from .config import ROOM_DEVICE, Room, SiteConfig
from .site import Poller, Site
from .store import SigninRow

if TYPE_CHECKING:
    from .meetings import MeetingPlanner

log = logging.getLogger("roomd")


class SigninService:
    def __init__(self, site: Site, attendance: Attendance) -> None:
        self.site = site
        self.attendance = attendance
        self.meetings: MeetingPlanner | None = None  # set once the planner exists

    @property
    def config(self) -> SiteConfig:
        return self.site.config

    def _planner(self) -> MeetingPlanner:
        assert self.meetings is not None, "wired at start"
        return self.meetings

    def load_rosters(self, cfg: SiteConfig) -> None:
        for room in cfg.rooms:
            if room.config.roster is not None:
                n = self.attendance.load_roster(room.id, room.config.roster)
                log.info("%s: roster of %d cards from %s", room.id, n, room.config.roster)

    def current_meeting(self, room_id: str) -> str:
        """The meeting a sign-in belongs to: the booking running (or starting within 30 min);
        without one, one per room and UTC day."""
        now = self.site.clock.time()
        booking = self._planner().meeting_for_signin(room_id, now)
        if booking is not None:
            return booking.id
        return f"{room_id}-{time.strftime('%Y%m%d', time.gmtime(now))}"

    def on_card(self, p: Poller, uid: str, read_at: float) -> None:
        """A card read: durable record + event (one transaction), then counts, rules, ack.
        `read_at` is perf_counter() when the frame's last byte arrived: latency starts there."""
        room = p.room
        if room.id in self.site.sealed_rooms:
            self._seal_breach(p)
        meeting = self.current_meeting(room.id)
        att = self.attendance
        att.enter(room.id, meeting)
        card = att.card(uid)  # the raw UID goes no further than this line
        name = att.attendee(room.id, card)
        cards = att.cards.get(meeting)
        if cards is None:
            cards = att.cards[meeting] = self.site.store.meeting_cards(meeting)
        ts = self.site.clock.time()
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
        if not self.site.store.record_signin(row, [self.site.mqtt.event(room.id, event)]):
            log.info("%s: card already signed in to %s", room.id, meeting)
            return
        self.site.mqtt.kick()
        latency = time.perf_counter() - read_at  # durable and handed to MQTT
        cards.add(card)
        att.latencies.setdefault(meeting, []).append(latency)
        self.site.metrics.signin_latency.labels(self.config.site, room.id).observe(latency)
        if name is None:
            log.info("%s: unknown card signed in to %s", room.id, meeting)
        assert isinstance(p.driver, CardReaderDriver)
        p.driver.acknowledge()
        self.room_readings(room, meeting, latency)

    def room_readings(self, room: Room, meeting: str, latency: float | None = None) -> None:
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
        transitions = self.site.book.observe(room.id, ROOM_DEVICE, readings)
        if transitions:
            self.site.emit(transitions)
        self.site.metrics.update(room.id, ROOM_DEVICE, readings)
        self.site.attendees[room.id] = n
        self.site.publish_room(room.id)

    def _seal_breach(self, p: Poller) -> None:
        """STANDARD §2: a large meeting's room is sealed after its inspection; any sign-in
        before the start is reported."""
        sealed = self._planner().sealed(p.room.id, self.site.clock.time())
        if sealed is None:
            return
        detail = f"card read at {p.config.id} before {sealed.title or sealed.id} starts"
        self.site.room_reading(p.room.id, {"room_sealed": "breached"}, detail)
        self.site.room_event(
            p.room.id, {"type": "seal_breach", "meeting": sealed.id, "reader": p.config.id}
        )

    def purge_signins(self) -> int:
        cutoff = self.site.clock.time() - self.config.signins.retention
        purged = self.site.store.purge_signins(cutoff)
        if purged:
            log.info("purged %d sign-in records older than the retention period", purged)
            self.attendance.cards.clear()  # reloaded from the store on next use
        return purged
