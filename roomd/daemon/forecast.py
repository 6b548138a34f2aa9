"""Warn before a limit is crossed: CO₂ and temperature forecasts per room (issue 16).

Every 30 s the room's value (the mean of its devices' last readings) is sampled; over the last
10 minutes a least-squares line gives the rise rate, scaled by how the signed-in attendee count
grew over that time (people still arriving breathe into the forecast). When the limit would be
reached within the threshold's `forecast` lead (e.g. 10 minutes), the room gets the reading
`{metric}_forecast = "crossing"` with the expected time in the detail: the profile turns it into
a grade IV alert, which the room controller can act on (more ventilation) before people notice.
Which metrics, the lead and the grade are data in the profile.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from .clock import Clock
from .site import Site

SAMPLE_EVERY = 30.0  # seconds
WINDOW = 600.0  # seconds of history the rise rate is fitted over
MIN_SAMPLES = 6  # and at least this many samples over at least MIN_SPAN
MIN_SPAN = 150.0


@dataclass
class Estimate:
    value: float  # the fitted value now
    slope: float  # units per second, attendee growth included
    eta: float | None  # seconds until the limit, None when not rising towards it


def estimate(
    samples: Sequence[tuple[float, float]],
    limit: float,
    attendees_now: int = 0,
    attendees_then: int = 0,
) -> Estimate | None:
    """Least squares over (time, value) samples; None when there are too few to say."""
    if len(samples) < MIN_SAMPLES or samples[-1][0] - samples[0][0] < MIN_SPAN:
        return None
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var == 0:
        return None
    slope = sum((t - mean_t) * (v - mean_v) for t, v in samples) / var
    now = samples[-1][0]
    value = mean_v + slope * (now - mean_t)
    if attendees_now > attendees_then >= 1:
        # More people now than over the fitted span: the rise will be steeper than it was.
        slope *= attendees_now / ((attendees_now + attendees_then) / 2)
    if slope <= 0 or value >= limit:
        return Estimate(value, slope, None)
    return Estimate(value, slope, (limit - value) / slope)


@dataclass
class RoomForecast:
    """One room's metric: its recent samples and whether a forecast stands."""

    samples: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=40))
    attendees: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=40))
    raised: bool = False

    def update(
        self, now: float, value: float, attendees: int, limit: float, lead: float
    ) -> tuple[bool, Estimate | None]:
        """Add a sample; (is a forecast standing, the estimate)."""
        self.samples.append((now, value))
        self.attendees.append((now, attendees))
        while self.samples and self.samples[0][0] < now - WINDOW:
            self.samples.popleft()
        while self.attendees and self.attendees[0][0] < now - WINDOW:
            self.attendees.popleft()
        est = estimate(list(self.samples), limit, self.attendees[-1][1], self.attendees[0][1])
        # Once raised, kept until the rise slows clearly (no flapping around the lead).
        lead_now = lead * 1.5 if self.raised else lead
        self.raised = est is not None and est.eta is not None and est.eta <= lead_now
        return self.raised, est


class Forecaster:
    def __init__(self, site: Site, clock: Clock) -> None:
        self.site = site
        self.clock = clock
        self._history: dict[tuple[str, str], RoomForecast] = {}
        self._last = -SAMPLE_EVERY

    def tick(self) -> None:
        now = self.clock.time()
        if now - self._last < SAMPLE_EVERY:
            return
        self._last = now
        for room in self.site.config.rooms:
            for metric, threshold in room.thresholds.items():
                if threshold.forecast is None or threshold.max is None or not threshold.enabled:
                    continue
                value = self.site.room_mean(room.id, metric)
                if value is not None:
                    self._sample(room.id, metric, threshold.max, threshold.forecast, value, now)

    def _sample(
        self, room: str, metric: str, limit: float, lead: float, value: float, now: float
    ) -> None:
        f = self._history.setdefault((room, metric), RoomForecast())
        was = f.raised
        crossing, est = f.update(now, value, self.site.attendees.get(room, 0), limit, lead)
        reading = f"{metric}_forecast"
        if crossing and est is not None and est.eta is not None:
            name = self.site.config.label(room, metric) or metric
            at = now + est.eta
            detail = (
                f"{limit:g} expected in about {max(1, round(est.eta / 60))} min "
                f"(at {time.strftime('%H:%M', time.localtime(at))}), "
                f"{name} now {est.value:.0f}, rising {est.slope * 60:.1f}/min"
            )
            people = self.site.attendees.get(room)
            if people:
                detail += f" with {people} people"
            self.site.room_reading(room, {reading: "crossing"}, detail)
        elif was:
            self.site.room_reading(room, {reading: None})
