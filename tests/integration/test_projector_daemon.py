"""Projectors end to end: simulated PJLink projectors → daemon → real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from roomd.simulators.pjlink import PJLinkSim, ProjectorState
from tests.conftest import Mosquitto, until, write_config
from tests.integration.test_daemon import BASE, running, site

ALERTS = f"{BASE}/r301/alerts"


def projector(sim: PJLinkSim, dev_id: str = "proj", **kw: Any) -> dict[str, Any]:
    return {
        "id": dev_id,
        "driver": "pjlink",
        "model": "roomd-simulator",
        "host": sim.address,
        "poll": "200ms",
        "timeout": "500ms",
        **kw,
    }


def active(alert_id: str) -> Any:
    return lambda m: m.topic == f"{ALERTS}/{alert_id}" and m.payload


def cleared(alert_id: str) -> Any:
    return lambda m: m.topic == f"{ALERTS}/{alert_id}" and m.payload == b""


async def test_projector_faults_raise_and_clear_with_their_grades(
    tmp_path: Path, mosquitto: Mosquitto, recorder_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    sim = await PJLinkSim(ProjectorState(warmup=0.2, cooldown=0.2, lamp_hours=2000)).start()
    dim = await PJLinkSim(ProjectorState()).start()
    caplog.set_level(logging.WARNING, logger="roomd")
    cfg = write_config(
        tmp_path / "roomd.yaml",
        site(
            tmp_path,
            mosquitto,
            [
                projector(sim),
                projector(dim, "dim", rated_lumens=2500),
            ],
            thresholds={},
        ),
    )
    rec = recorder_factory(mosquitto.port, topic="roomd/#")
    try:
        async with running(cfg) as daemon:
            state = (await rec.wait_for(lambda m: m.topic == f"{BASE}/r301/proj/state"))[0].json()
            assert state["readings"]["projector_power"] == "off"
            assert state["info"]["product"] == "SIM-PJ 2000"
            # Rated brightness under the standard's 3000 lm: a start-up warning and a IV alert.
            assert "rated brightness 2500 lm is below the standard's 3000 lm" in caplog.text
            low = (await rec.wait_for(active("r301.dim.rated_lumens.min")))[0].json()
            assert low["severity"] == "IV"

            sim.state.faults.add("lamp")
            lamp = (await rec.wait_for(active("r301.proj.projector_error_lamp.error")))[0].json()
            assert lamp["severity"] == "II" and lamp["message"] == "Projector lamp: error"
            sim.state.faults.add("fan")
            fan = (await rec.wait_for(active("r301.proj.projector_error_fan.warning")))[0].json()
            assert fan["severity"] == "III"
            sim.state.faults.clear()
            await rec.wait_for(cleared("r301.proj.projector_error_lamp.error"))
            await rec.wait_for(cleared("r301.proj.projector_error_fan.warning"))

            # Lamp life: 90 % of 3000 h → IV; 100 % → III as well.
            sim.state.lamp_hours = 2700
            service = (await rec.wait_for(active("r301.proj.lamp_life_pct.max")))[0].json()
            assert service["severity"] == "IV" and "at or above 90 %" in service["message"]
            sim.state.lamp_hours = 3000
            replace = (await rec.wait_for(active("r301.proj.lamp_life_pct.critical_max")))[0].json()
            assert replace["severity"] == "III"
            sim.state.lamp_hours = 100  # lamp replaced
            await rec.wait_for(cleared("r301.proj.lamp_life_pct.critical_max"))
            await rec.wait_for(cleared("r301.proj.lamp_life_pct.max"))

            # On, showing a 720p source: below the standard's 1080p.
            sim.state.power = "on"
            sim.state.input = "32"
            res = (await rec.wait_for(active("r301.proj.input_lines.min"), timeout=20))[0].json()
            assert res["value"] == 720 and res["limit"] == 1080
            sim.state.input = "31"
            await rec.wait_for(cleared("r301.proj.input_lines.min"), timeout=20)

            # ERR4 and offline.
            await sim.stop()
            offline = (await rec.wait_for(active("r301.proj.online.min")))[0].json()
            assert offline["severity"] == "II" and "cannot connect" in offline["message"]
            await sim.start()
            await rec.wait_for(cleared("r301.proj.online.min"), timeout=20)
            assert daemon.pollers[("r301", "dim")].online
    finally:
        await sim.stop()
        await dim.stop()


async def test_wrong_password_alerts_once_and_is_not_retried(
    tmp_path: Path, mosquitto: Mosquitto, recorder_factory: Any
) -> None:
    sim = await PJLinkSim(ProjectorState(password="right")).start()
    cfg = write_config(
        tmp_path / "roomd.yaml", site(tmp_path, mosquitto, [projector(sim, password="wrong")])
    )
    rec = recorder_factory(mosquitto.port, topic="roomd/#")
    try:
        async with running(cfg) as daemon:
            alert = (await rec.wait_for(active("r301.proj.online.min")))[0].json()
            assert "authentication failed: wrong password (PJLINK ERRA)" in alert["message"]
            tries = sim.connections
            await asyncio.sleep(1.0)  # 5 poll intervals
            assert sim.connections == tries  # parked, not hammering the projector
            assert daemon.pollers[("r301", "proj")].parked
            # Fixing the password and reloading starts it again.
            data = site(tmp_path, mosquitto, [projector(sim, password="right")])
            data["http"] = {"listen": f"127.0.0.1:{daemon.http.port}"}
            write_config(cfg, data)
            assert daemon.reload()
            await rec.wait_for(cleared("r301.proj.online.min"), timeout=10)
    finally:
        await sim.stop()


async def test_mosquitto_pub_powers_the_projector_on(
    tmp_path: Path, mosquitto: Mosquitto, recorder_factory: Any
) -> None:
    pub = shutil.which("mosquitto_pub")
    if pub is None:
        pytest.fail("mosquitto_pub is missing: ./scripts/test installs mosquitto-clients")
    sim = await PJLinkSim(ProjectorState(warmup=1.0, cooldown=0.5)).start()
    cfg = write_config(tmp_path / "roomd.yaml", site(tmp_path, mosquitto, [projector(sim)]))
    rec = recorder_factory(mosquitto.port, topic="roomd/#")
    try:
        async with running(cfg):
            state_topic = f"{BASE}/r301/proj/state"
            await rec.wait_for(lambda m: m.topic == state_topic)
            cmd = json.dumps({"command": "power", "args": {"state": "on"}, "id": "p1"})
            await asyncio.to_thread(
                subprocess.run,
                [
                    pub,
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(mosquitto.port),
                    "-q",
                    "1",
                    "-t",
                    f"{BASE}/r301/proj/cmd",
                    "-m",
                    cmd,
                ],
                check=True,
                timeout=10,
            )
            result = (await rec.wait_for(lambda m: m.topic == f"{BASE}/r301/proj/cmd/result"))[0]
            assert result.json()["ok"] is True and result.json()["id"] == "p1"
            assert result.json()["result"] == {"projector_power": "warming"}
            powers = await rec.wait_for(
                lambda m: (
                    m.topic == state_topic and m.json()["readings"].get("projector_power") == "on"
                ),
                timeout=10,
            )
            seen = [m.json()["readings"]["projector_power"] for m in rec.on(state_topic)]
            assert seen.index("warming") < seen.index("on")
            assert powers
            # Power-on while cooling down is refused with a reason; the daemon goes on.
            sim.state.set_power(False)
            await until(lambda: sim.state.power == "cooling", 5, "cooling")
            bad = json.dumps({"command": "power", "args": {"state": "on"}, "id": "p2"})
            await asyncio.to_thread(
                subprocess.run,
                [
                    pub,
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(mosquitto.port),
                    "-q",
                    "1",
                    "-t",
                    f"{BASE}/r301/proj/cmd",
                    "-m",
                    bad,
                ],
                check=True,
                timeout=10,
            )
            refused = (
                await rec.wait_for(
                    lambda m: m.topic == f"{BASE}/r301/proj/cmd/result" and m.json()["id"] == "p2"
                )
            )[0].json()
            assert refused["ok"] is False and "cooling down" in refused["error"]
    finally:
        await sim.stop()


async def test_rs232_projector_alerts_through_the_daemon(
    tmp_path: Path, mosquitto: Mosquitto, recorder_factory: Any
) -> None:
    from roomd.simulators.escvp21 import EscVp21Sim, EscVp21State

    sim = EscVp21Sim(EscVp21State(lamp_hours=4600)).start()
    cfg = write_config(
        tmp_path / "roomd.yaml",
        site(
            tmp_path,
            mosquitto,
            [
                {
                    "id": "side",
                    "driver": "serial-projector",
                    "model": "epson-escvp21",
                    "port": sim.path,
                    "poll": "200ms",
                    "timeout": "500ms",
                },
            ],
            thresholds={},
        ),
    )
    rec = recorder_factory(mosquitto.port, topic="roomd/#")
    try:
        async with running(cfg):
            life = (await rec.wait_for(active("r301.side.lamp_life_pct.max")))[0].json()
            assert life["value"] == 92.0 and life["severity"] == "IV"
            sim.state.error = "04"  # high internal temperature
            hot = (await rec.wait_for(active("r301.side.projector_error_temperature.error")))[0]
            assert hot.json()["severity"] == "II"
            sim.state.error = "00"
            await rec.wait_for(cleared("r301.side.projector_error_temperature.error"))
            sim.state.faults.add("silent")
            await rec.wait_for(active("r301.side.online.min"))
            sim.state.faults.clear()
            await rec.wait_for(cleared("r301.side.online.min"), timeout=15)
    finally:
        sim.stop()
