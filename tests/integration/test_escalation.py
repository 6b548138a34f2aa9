"""Reported again until solved (escalation) and quarterly inspections, on a fake clock."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

from roomd.daemon.clock import FakeClock
from roomd.daemon.config import load_config
from roomd.daemon.supervisor import Daemon
from roomd.simulators.modbus import ModbusTcpSim, SimSensor
from tests.conftest import Mosquitto, free_port, until, write_config
from tests.integration.test_daemon import BASE

START = 1_795_000_000.0  # 2026-11-18T09:46:40Z


def site(tmp_path: Path, broker: Mosquitto, sim: ModbusTcpSim, **device: Any) -> Path:
    return write_config(
        tmp_path / "roomd.yaml",
        {
            "site": "hq",
            "mqtt": {"url": broker.url},
            "http": {"listen": f"127.0.0.1:{free_port()}"},
            "state_dir": str(tmp_path / "state"),
            "escalation": {"interval": "5m"},
            "rooms": [
                {
                    "id": "r301",
                    "devices": [
                        {
                            "id": "env",
                            "driver": "modbus",
                            "model": "senseair-s8",
                            "host": sim.address,
                            "poll": "100ms",
                            "timeout": "100ms",
                            **device,
                        }
                    ],
                }
            ],
        },
    )


async def test_unacknowledged_alerts_are_announced_again_until_acknowledged(
    tmp_path: Path, mosquitto: Mosquitto, recorder_factory: Any
) -> None:
    sensor = SimSensor.of("senseair-s8", co2_ppm=600)
    sim = await ModbusTcpSim([sensor]).start()
    clock = FakeClock(START)
    daemon = Daemon(load_config(site(tmp_path, mosquitto, sim)), clock=clock)
    rec = recorder_factory(mosquitto.port, topic="roomd/#")
    task = asyncio.create_task(daemon.run())
    try:
        await daemon.mqtt.wait_connected(10)
        sensor.fault = "silent"  # offline: grade II
        await until(lambda: "r301.env.online.min" in daemon.book.active, 10, "offline alert")
        assert daemon.escalate_due() == []  # just raised
        clock.advance(299)
        assert daemon.escalate_due() == []
        clock.advance(1)
        (t,) = daemon.escalate_due()
        assert t.kind == "escalated" and t.alert.extra["escalations"] == 1
        clock.advance(300)
        assert daemon.escalate_due()[0].alert.extra["escalations"] == 2
        events = await rec.wait_for(
            lambda m: (
                m.topic == f"{BASE}/r301/events" and m.json().get("transition") == "escalated"
            ),
            count=2,
        )
        assert [e.json()["escalations"] for e in events] == [1, 2]
        retained = await rec.wait_for(
            lambda m: (
                m.topic == f"{BASE}/r301/alerts/r301.env.online.min"
                and m.payload
                and m.json().get("escalations") == 2
            )
        )
        assert retained
        daemon.book.acknowledge("r301.env.online.min")
        clock.advance(3600)
        assert daemon.escalate_due() == []  # acknowledged: no more re-announcements
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 10)
        await sim.stop()


async def test_inspection_overdue_after_a_quarter(
    tmp_path: Path, mosquitto: Mosquitto, recorder_factory: Any
) -> None:
    sim = await ModbusTcpSim([SimSensor.of("senseair-s8", co2_ppm=600)]).start()
    today = dt.datetime.fromtimestamp(START, dt.UTC).date()
    clock = FakeClock(START)
    cfg = site(tmp_path, mosquitto, sim, last_inspected=str(today - dt.timedelta(days=80)))
    daemon = Daemon(load_config(cfg), clock=clock)
    rec = recorder_factory(mosquitto.port, topic="roomd/#")
    task = asyncio.create_task(daemon.run())
    topic = f"{BASE}/r301/alerts/r301.env.days_since_inspection.max"
    try:
        await daemon.mqtt.wait_connected(10)
        await asyncio.wait_for(daemon.ready.wait(), 5)
        daemon.check_inspections()
        assert "r301.env.days_since_inspection.max" not in daemon.book.active
        clock.advance(11 * 86400)  # 91 days since the last inspection
        daemon.check_inspections()
        alert = (await rec.wait_for(lambda m: m.topic == topic and m.payload))[0].json()
        assert alert["severity"] == "IV" and alert["value"] == 91
        assert alert["message"] == "Days since inspection 91 d above 90 d"
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 10)
        await sim.stop()
