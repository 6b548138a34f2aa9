"""CO₂ forecasts: the estimate on its own, then a room whose CO₂ rises on a fake clock gets
a grade IV forecast alert about 10 minutes ahead, cleared when the rise stops."""

from __future__ import annotations

import asyncio
from pathlib import Path

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
