"""The fault matrix (issue 12), the fast part: broker restarts, kill -9 mid-meeting, and bad
devices among good ones. The long runs (1,000 devices, 30-minute soak) are in bench/."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from roomd.simulators.modbus import ModbusTcpSim, SimSensor
from tests.conftest import Mosquitto, Recorder, until, write_config
from tests.integration.test_daemon import BASE, NORMAL, dev, running, site


def retained_on_broker(port: int, settle: float = 1.0) -> dict[str, bytes]:
    """What a new subscriber gets: the broker's retained set (empty payloads are no message)."""
    rec = Recorder(port, topic="#").start()
    time.sleep(settle)
    rec.stop()
    return {m.topic: m.payload for m in rec.messages if m.retain}


async def test_a_broker_restarted_without_persistence_gets_every_retained_state_back(
    tmp_path: Path, recorder_factory: Any
) -> None:
    (tmp_path / "broker").mkdir()
    broker = Mosquitto(tmp_path / "broker", persistence=False)
    broker.start()
    env = SimSensor.of("generic-iaq", **{**NORMAL, "co2_ppm": 1500})  # a device alert
    tcp = await ModbusTcpSim([env]).start()
    data = site(
        tmp_path, broker, [dev("env", "generic-iaq", tcp, "100ms", last_inspected="2020-01-01")]
    )
    data["homeassistant"] = {"enabled": True}
    cfg = write_config(tmp_path / "roomd.yaml", data)
    try:
        async with running(cfg) as daemon:
            await until(lambda: "r301.env.co2_ppm.max" in daemon.book.active, 10, "device alert")
            # an inspection alert (grade IV maintenance) and a room-level one (failed check)
            await until(
                lambda: "r301.env.days_since_inspection.max" in daemon.book.active, 10, "inspection"
            )
            report = await daemon.check_room("r301", 1)
            assert report["passed"] is False
            await until(lambda: "r301._room.room_ready.not_ready" in daemon.book.active, 5, "room")
            await until(lambda: daemon.store.outbox_depth == 0, 10, "outbox drained")

            def expected() -> dict[str, bytes]:
                want = {k: v for k, v in daemon.mqtt._retained.items() if v}
                want.update(daemon.retained_snapshot())
                want[daemon.mqtt.availability_topic] = b"online"
                return want

            before = await asyncio.to_thread(retained_on_broker, broker.port)
            assert before == expected()
            kinds = {t.rsplit("/", 1)[-1] for t in before if "/alerts/" in t}
            assert kinds == {
                "r301.env.co2_ppm.max",
                "r301.env.days_since_inspection.max",
                "r301._room.room_ready.not_ready",
            }
            assert f"{BASE}/r301/checks/latest" in before

            broker.stop()
            await until(lambda: not daemon.mqtt.connected.is_set(), 10, "disconnect seen")
            broker.start()  # forgot everything
            assert await daemon.mqtt.wait_connected(40)
            await until(lambda: daemon.store.outbox_depth == 0, 10, "outbox drained")
            after = await asyncio.to_thread(retained_on_broker, broker.port)
            assert after == expected()
            assert json.loads(after[f"{BASE}/r301/checks/latest"])["passed"] is False
            assert any(t.startswith("homeassistant/") for t in after)
    finally:
        await tcp.stop()
        broker.stop()
