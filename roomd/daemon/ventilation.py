"""Air changes per hour from the CO₂ decay after a meeting (issue 16, the tracer-gas decay
method): once people leave, the room's CO₂ falls towards the outdoor level as
C(t) − C_out = (C₀ − C_out) · e^(−ACH·t/3600), so the slope of ln(C − C_out) over time gives
ACH. Any room with a CO₂ sensor and bookings gets a ventilation check this way, reported once
per meeting with its fit quality as the room-level reading `air_changes_per_hour`, which the
standard's threshold (≥ 4, STANDARD §1) judges.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from .clock import Clock
from .config import Room
from .forecast import SAMPLE_EVERY
from .site import Site

log = logging.getLogger("roomd")

DECAY_FOR = 1800.0  # seconds of decay followed at most
MIN_DECAY = 600.0  # and at least, before a result
MIN_EXCESS = 150.0  # ppm above outdoors at the start: less is too little signal
MIN_R2 = 0.9  # a fit worse than this is not reported (a door opened, people came back)
DEFAULT_OUTDOOR = 420.0
SUPPLY = "supply_airflow_m3h"  # a device's measured supply air flow into the room


@dataclass
class Decay:
    ach: float
    r2: float
    samples: int
    minutes: float


def fit_decay(samples: Sequence[tuple[float, float]], outdoor: float) -> Decay | None:
    """ACH from (time, ppm) samples of a decay; None when the data cannot say."""
    points = [(t, math.log(c - outdoor)) for t, c in samples if c - outdoor > 10]
    if len(points) < 6:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var_t = sum((t - mean_t) ** 2 for t, _ in points)
    var_y = sum((y - mean_y) ** 2 for _, y in points)
    if var_t == 0 or var_y == 0:
        return None
    cov = sum((t - mean_t) * (y - mean_y) for t, y in points)
    slope = cov / var_t
    r2 = cov * cov / (var_t * var_y)
    if slope >= 0:
        return None
    minutes = (points[-1][0] - points[0][0]) / 60
    return Decay(ach=-slope * 3600, r2=r2, samples=n, minutes=minutes)


@dataclass
class _Room:
    in_meeting: bool = False
    decay: list[tuple[float, float]] = field(default_factory=list)
    started: float | None = None
    last: float | None = None  # the last ACH reported, re-reported so hold times run


class VentilationEstimator:
    def __init__(self, site: Site, clock: Clock) -> None:
        self.site = site
        self.clock = clock
        self._rooms: dict[str, _Room] = {}
        self.measured: set[str] = set()  # rooms whose ACH comes from a measured air flow
        self._last = -SAMPLE_EVERY
        self.outdoor_seen: float | None = None  # the lowest room CO₂ seen: outdoors, roughly

    def outdoor(self) -> float:
        configured = self.site.config.meetings.outdoor_co2_ppm
        if configured is not None:
            return configured
        seen = self.outdoor_seen
        return DEFAULT_OUTDOOR if seen is None else min(max(seen, 380.0), 500.0)

    def tick(self) -> None:
        now = self.clock.time()
        if now - self._last < SAMPLE_EVERY:
            return
        self._last = now
        for room in self.site.config.rooms:
            self._measured(room)
            co2 = self.site.room_mean(room.id, "co2_ppm")
            if co2 is None:
                continue
            self.outdoor_seen = co2 if self.outdoor_seen is None else min(self.outdoor_seen, co2)
            self._room(room.id, co2, now)

    def _measured(self, room: Room) -> None:
        """ACH from the supply air flow the room's air terminals measure (BACnet), over the
        room's volume: the first way, where a room has it; the CO₂ decay is then reported as
        `air_changes_per_hour_co2`, beside it, for comparison."""
        volume = room.config.volume
        if volume is None:
            return
        flows = [
            value
            for p in self.site.room_pollers.get(room.id, {}).values()
            if p.online and isinstance(value := p.readings.get(SUPPLY), int | float)
        ]
        if not flows:
            if room.id in self.measured:
                self.measured.discard(room.id)
                self.site.room_reading(room.id, {"air_changes_per_hour": None})
            return
        self.measured.add(room.id)
        supply = sum(flows)
        ach = round(supply / volume, 2)
        detail = f"{ach:g} air changes an hour: supply air {supply:.0f} m³/h over {volume:.0f} m³"
        self.site.room_reading(room.id, {"air_changes_per_hour": ach}, detail)

    def _room(self, room_id: str, co2: float, now: float) -> None:
        r = self._rooms.setdefault(room_id, _Room())
        in_meeting = room_id in self.site.book.meeting_rooms
        if r.in_meeting and not in_meeting:
            r.decay, r.started = [], now  # the meeting ended: follow the decay
        r.in_meeting = in_meeting
        if in_meeting:
            r.started = None
        elif r.started is not None:
            r.decay.append((now, co2))
            if now - r.started >= DECAY_FOR or (
                len(r.decay) > 3 and co2 > r.decay[-4][1] + 50  # rising again: people back
            ):
                self._finish(room_id, r)
        if r.last is not None:
            self.site.room_reading(room_id, {self._metric(room_id): r.last})

    def _metric(self, room_id: str) -> str:
        """Where the CO₂ decay's ACH goes: the room's ACH, unless the flow is measured."""
        return "air_changes_per_hour_co2" if room_id in self.measured else "air_changes_per_hour"

    def _finish(self, room_id: str, r: _Room) -> None:
        samples, r.decay, r.started = r.decay, [], None
        outdoor = self.outdoor()
        if not samples or samples[0][1] - outdoor < MIN_EXCESS:
            log.info("%s: too little CO₂ after the meeting to measure ventilation", room_id)
            return
        if samples[-1][0] - samples[0][0] < MIN_DECAY:
            return
        fit = fit_decay(samples, outdoor)
        if fit is None or fit.r2 < MIN_R2:
            log.info("%s: the CO₂ decay did not fit (R² %s)", room_id, fit and f"{fit.r2:.2f}")
            return
        r.last = round(fit.ach, 2)
        detail = (
            f"from the CO₂ decay after the meeting: {fit.samples} samples over "
            f"{fit.minutes:.0f} min, R² {fit.r2:.3f}, outdoor {outdoor:.0f} ppm"
        )
        log.info("%s: %.2f air changes an hour (%s)", room_id, fit.ach, detail)
        self.site.room_reading(room_id, {self._metric(room_id): r.last}, detail)
        self.site.room_event(
            room_id,
            {
                "type": "ventilation",
                "air_changes_per_hour": r.last,
                "r2": round(fit.r2, 3),
                "samples": fit.samples,
                "minutes": round(fit.minutes, 1),
                "outdoor_ppm": round(outdoor),
                "method": "co2_decay",
            },
        )
