"""Scenarios: what simulated rooms measure over time, and when devices misbehave."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from .modbus import Fault

# (room index, device id, seconds since start) → fault
FaultPlan = Callable[[int, str, float], Fault]


def _occupancy(t: float, period: float = 900.0) -> float:
    """0..1: people arrive, stay, leave."""
    phase = (t % period) / period
    return max(0.0, math.sin(math.pi * phase)) ** 0.5


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str

    def value(self, room: int, metric: str, t: float) -> float | None:
        base = _base(room, metric, t)
        return self._adjust(room, metric, t, base)

    def _adjust(self, room: int, metric: str, t: float, base: float | None) -> float | None:
        return base

    def fault(self, room: int, device: str, t: float) -> Fault:
        return "none"

    def projector_faults(self, room: int, t: float) -> frozenset[str]:
        return frozenset()

    def audio(self, room: int, t: float) -> dict[str, float | bool | None]:
        """The room's sound: people talk on and off; a scenario adds hum or a muted main."""
        return {"talking": _occupancy(t + 120 * room) > 0.3 and (t // 20) % 3 != 2}


def _base(room: int, metric: str, t: float) -> float | None:
    wave = math.sin(2 * math.pi * t / 600 + room)
    people = _occupancy(t + 120 * room)
    if metric == "temperature_c":
        return round(22.0 + 0.4 * wave + 0.6 * people, 2)
    if metric == "humidity_pct":
        return round(48.0 + 2.0 * wave + 3.0 * people, 2)
    if metric == "co2_ppm":
        return float(round(520 + 25 * room + 300 * people))
    if metric == "illuminance_lux":
        return float(round(640 + 20 * wave))
    if metric == "color_temp_k":
        return 4500.0
    return None


class Normal(Scenario):
    pass


class Drift(Scenario):
    """The air conditioning has failed: temperature climbs 1 °C every 5 minutes."""

    def _adjust(self, room: int, metric: str, t: float, base: float | None) -> float | None:
        if metric == "temperature_c" and base is not None:
            return round(base + t / 300.0, 2)
        return base


class Demo(Scenario):
    """A 90-second loop that shows every kind of alert going up and coming back down:
    r302's CO2 climbs over 1000 ppm and falls back; r303's lights go off and come back;
    r303's RS-485 climate sensor stops answering for 20 s; r303's projector lamp fails and
    r302's projector fan warns, each for a while; r303's mixer main is muted for 25 s and r302
    picks up mains hum. r301 stays in order: `roomd check r301` passes until a fault is
    injected through the control port."""

    PERIOD = 90.0

    def _adjust(self, room: int, metric: str, t: float, base: float | None) -> float | None:
        s = t % self.PERIOD
        if room == 1 and metric == "co2_ppm":
            if 5 <= s < 12:
                return 700 + (s - 5) / 7 * 600  # ramps past 1000 ppm at ~8.5 s
            if 12 <= s < 48:
                return 1300.0
            if 48 <= s < 55:
                return 1300 - (s - 48) / 7 * 650
        if room == 2 and metric == "illuminance_lux" and 3 <= s < 45:
            return 0.0  # lights off
        return base

    def fault(self, room: int, device: str, t: float) -> Fault:
        s = t % self.PERIOD
        if room == 2 and device == "climate" and 15 <= s < 35:
            return "silent"
        return "none"

    def projector_faults(self, room: int, t: float) -> frozenset[str]:
        s = t % self.PERIOD
        if room == 2 and 40 <= s < 70:
            return frozenset({"lamp"})  # r303's projector lamp fails, then is replaced
        if room == 1 and 10 <= s < 40:
            return frozenset({"fan"})
        return frozenset()

    def audio(self, room: int, t: float) -> dict[str, float | bool | None]:
        s = t % self.PERIOD
        out = super().audio(room, t)
        if room == 2:
            out["main_muted"] = 50 <= s < 75
        if room == 1:
            out["hum_db"] = 52.0 if 55 <= s < 85 else None
        return out


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Normal("normal", "every room within the standard"),
        Drift("drift", "temperature drifts upward (failed air conditioning)"),
        Demo("demo", "a 90 s loop of CO2, lighting and offline alerts that raise and clear"),
    )
}
