"""CO₂ forecasts: the estimate on its own, then a room whose CO₂ rises on a fake clock gets
a grade IV forecast alert about 10 minutes ahead, cleared when the rise stops."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from roomd.daemon.clock import FakeClock
from roomd.daemon.config import load_config
from roomd.daemon.forecast import estimate
from roomd.daemon.supervisor import Daemon
from roomd.simulators.modbus import ModbusTcpSim, SimSensor
from tests.conftest import Mosquitto, free_port, until, write_config

START = 1_795_000_000.0
FORECAST = "r301._room.co2_ppm_forecast.crossing"


def test_estimate_fits_the_rise_and_counts_arriving_people() -> None:
    rising = [(t * 30.0, 600 + t * 20.0) for t in range(10)]  # 40 ppm a minute
    est = estimate(rising, 1000)
    assert est is not None and est.eta == pytest.approx((1000 - 780) / (40 / 60))
    # Twice the people now than at the start of the window: a steeper rise, an earlier ETA.
    crowded = estimate(rising, 1000, attendees_now=20, attendees_then=10)
    assert crowded is not None and crowded.eta is not None and crowded.eta < est.eta
    assert estimate(rising[:4], 1000) is None  # too little history to say
    falling = [(t * 30.0, 900 - t * 5.0) for t in range(10)]
    assert estimate(falling, 1000).eta is None  # type: ignore[union-attr]
    above = [(t * 30.0, 1100 + t) for t in range(10)]
    assert estimate(above, 1000).eta is None  # type: ignore[union-attr]  # the alert's job


async def test_a_rising_room_is_warned_ahead_and_the_warning_clears(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    sensor = SimSensor.of("senseair-s8", co2_ppm=600)
    sim = await ModbusTcpSim([sensor]).start()
    cfg = write_config(
        tmp_path / "roomd.yaml",
        {
            "site": "hq",
            "mqtt": {"url": mosquitto.url},
            "http": {"listen": f"127.0.0.1:{free_port()}"},
            "state_dir": str(tmp_path / "state"),
            "rooms": [
                {
                    "id": "r301",
                    "devices": [
                        {
                            "id": "env",
                            "driver": "modbus",
                            "model": "senseair-s8",
                            "host": sim.address,
                            "poll": "50ms",
                        }
                    ],
                }
            ],
        },
    )
    clock = FakeClock(START)
    daemon = Daemon(load_config(cfg), clock=clock)
    task = asyncio.create_task(daemon.run())
    try:
        await daemon.mqtt.wait_connected(10)

        async def minute_steps(ppm_per_step: float, steps: int) -> list[bool]:
            raised = []
            poller = daemon.pollers[("r301", "env")]
            for _ in range(steps):
                value = sensor.value("co2_ppm") + ppm_per_step
                sensor.set(co2_ppm=value)
                await until(lambda v=value: poller.readings.get("co2_ppm") == v, 5, "a poll")
                clock.advance(30)
                daemon.forecaster.tick()
                raised.append(FORECAST in daemon.book.active)
            return raised

        # 20 ppm each 30 s from 600: 1000 ppm is 10 minutes away after 0 steps; the warning
        # comes once the history is long enough (6 samples) and the ETA is within 10 min.
        raised = await minute_steps(20, 12)
        assert not raised[0] and any(raised), raised
        alert = daemon.book.active[FORECAST]
        assert alert.severity == "IV" and "1000 expected in about" in alert.message
        assert "rising 40" in alert.message
        first = raised.index(True)
        assert sensor.value("co2_ppm") < 1000  # before the limit, not after
        assert first <= 7
        # The rise stops: the forecast clears (the window forgets the climb).
        flat = await minute_steps(0, 24)
        assert not flat[-1] and FORECAST not in daemon.book.active
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 10)
        await sim.stop()


def test_decay_fit_recovers_the_air_change_rate() -> None:
    import math

    from roomd.daemon.ventilation import fit_decay

    for ach in (1.0, 4.0, 6.0):
        samples = [(t * 30.0, 420 + 700 * math.exp(-ach * t * 30 / 3600)) for t in range(40)]
        fit = fit_decay(samples, 420)
        assert fit is not None and fit.ach == pytest.approx(ach, rel=0.01) and fit.r2 > 0.999
    assert fit_decay([(t * 30.0, 800.0) for t in range(20)], 420) is None  # no decay
    # Assumed outdoors too low: the fit degrades, which the quality check catches.
    samples = [(t * 30.0, 500 + 500 * math.exp(-2 * t * 30 / 3600)) for t in range(40)]
    assert fit_decay(samples, 420).r2 < fit_decay(samples, 500).r2  # type: ignore[union-attr]


async def test_ventilation_is_measured_from_the_decay_after_a_meeting(
    tmp_path: Path, mosquitto: Mosquitto, recorder_factory: Any
) -> None:
    import math

    sensor = SimSensor.of("senseair-s8", co2_ppm=1100)
    sim = await ModbusTcpSim([sensor]).start()
    # A meeting that ends at START (+ 1 h 30 min of it before).
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(START))
    begin = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(START - 5400))
    ics = tmp_path / "r301.ics"
    ics.write_text(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//roomd//tests//EN\r\nBEGIN:VEVENT\r\n"
        f"UID:m1\r\nDTSTART:{begin}\r\nDTEND:{stamp}\r\nSUMMARY:Board\r\nEND:VEVENT\r\n"
        "END:VCALENDAR\r\n"
    )
    cfg = write_config(
        tmp_path / "roomd.yaml",
        {
            "site": "hq",
            "mqtt": {"url": mosquitto.url},
            "http": {"listen": f"127.0.0.1:{free_port()}"},
            "state_dir": str(tmp_path / "state"),
            "meetings": {"outdoor_co2_ppm": 420},
            "rooms": [
                {
                    "id": "r301",
                    "calendar": str(ics),
                    "devices": [
                        {
                            "id": "env",
                            "driver": "modbus",
                            "model": "senseair-s8",
                            "host": sim.address,
                            "poll": "50ms",
                        }
                    ],
                }
            ],
        },
    )
    clock = FakeClock(START - 600)
    daemon = Daemon(load_config(cfg), clock=clock)
    rec = recorder_factory(mosquitto.port, topic="roomd/hq/r301/events")
    task = asyncio.create_task(daemon.run())
    try:
        await daemon.mqtt.wait_connected(10)
        await until(lambda: "r301" in daemon.book.meeting_rooms, 10, "the meeting running")
        poller = daemon.pollers[("r301", "env")]
        # During the meeting, then 30 minutes of decay at 2 air changes an hour.
        for step in range(-20, 62):
            t = step * 30.0
            ppm = round(1100 if t <= 0 else 420 + 680 * math.exp(-2.0 * t / 3600))
            sensor.set(co2_ppm=ppm)
            await until(lambda v=ppm: poller.readings.get("co2_ppm") == v, 5, "a poll")
            clock.advance(START + t - clock.time())
            daemon.meetings.tick()
            daemon.ventilation.tick()
        event = (await rec.wait_for(lambda m: m.json().get("type") == "ventilation"))[0].json()
        assert event["air_changes_per_hour"] == pytest.approx(2.0, abs=0.15)
        assert event["r2"] > 0.99 and event["method"] == "co2_decay"
        # Below the standard's 4 air changes an hour, held 5 minutes: the alert.
        for _ in range(12):
            clock.advance(30)
            daemon.ventilation.tick()
        alert_id = "r301._room.air_changes_per_hour.min"
        await until(lambda: alert_id in daemon.book.active, 10, "the ventilation alert")
        assert daemon.book.active[alert_id].severity == "III"
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 10)
        await sim.stop()
