"""`roomd top` against a running daemon over a real Mosquitto, and its view's layout rules."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from roomd.daemon.config import load_config
from roomd.simulators.modbus import ModbusTcpSim, SimSensor
from roomd.top import SiteView
from tests.conftest import Mosquitto, free_port, until, write_config
from tests.integration.test_daemon import running

ROOMD = [sys.executable, "-m", "roomd"]


def config(tmp_path: Path, broker: Mosquitto, sim: ModbusTcpSim, rooms: int = 1) -> Path:
    def dev(i: int, dev_id: str) -> dict[str, Any]:
        return {
            "id": dev_id,
            "driver": "modbus",
            "model": "senseair-s8",
            "host": sim.address,
            "unit": i,
            "poll": "100ms",
            "timeout": "100ms",
        }

    return write_config(
        tmp_path / "roomd.yaml",
        {
            "site": "hq",
            "mqtt": {"url": broker.url},
            "http": {"listen": f"127.0.0.1:{free_port()}"},
            "state_dir": str(tmp_path / "state"),
            "rooms": [
                {
                    "id": "r301",
                    "name": "市政厅 301",
                    "thresholds": {"co2_ppm": {"hold": "0s"}},
                    "devices": [dev(1, "env"), dev(2, "env2"), dev(3, "hall")],
                },
                *[{"id": f"r4{i:02d}", "devices": []} for i in range(rooms - 1)],
            ],
        },
    )


def top(cfg: Path, *extra: str) -> str:
    out = subprocess.run(
        [*ROOMD, "top", "--once", "-c", str(cfg), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "160"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


async def test_top_shows_rooms_grouped_alerts_and_stale_devices(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    sensors = [SimSensor.of("senseair-s8", unit=u, co2_ppm=700) for u in (1, 2, 3)]
    sim = await ModbusTcpSim(sensors).start()
    cfg = config(tmp_path, mosquitto, sim)
    try:
        async with running(cfg) as daemon:
            await until(lambda: all(p.online for p in daemon.pollers.values()), 10, "online")
            text = await asyncio.to_thread(top, cfg)
            assert "市政厅 301 (r301) ready" in text and "CO₂ 700ppm" in text
            # One CO₂ condition seen by two sensors: one line; the third sensor goes silent.
            sensors[0].set(co2_ppm=1250)
            sensors[1].set(co2_ppm=1300)
            sensors[2].fault = "silent"
            await until(lambda: len(daemon.book.active) == 3, 10, "three alerts")
            daemon.commands.acknowledge("r301.env.co2_ppm.max", "ana@console")
            await asyncio.sleep(1.5)
            text = await asyncio.to_thread(top, cfg)
            lines = text.splitlines()
            co2 = [line for line in lines if "above 1000 ppm" in line]
            assert len(co2) == 1 and "seen by env, env2" in co2[0], text
            assert "acknowledged by ana@console" in co2[0]
            assert any("hall" in line and "offline" in line and "old" in line for line in lines)
            assert "not ready" in text  # the offline sensor is grade II
            assert "Grades:" in text and "very serious" in text
            zh = await asyncio.to_thread(top, cfg, "--lang", "zh-CN")
            assert "未就绪" in zh and "二氧化碳" in zh and "高于 1000 ppm" in zh
            assert "由 env, env2 发现" in zh and "等级：" in zh
    finally:
        await sim.stop()


def test_the_view_fits_the_terminal(tmp_path: Path) -> None:
    cfg = load_config(
        write_config(
            tmp_path / "roomd.yaml",
            {
                "site": "hq",
                "state_dir": str(tmp_path / "state"),
                "rooms": [{"id": f"r{i:03d}", "devices": []} for i in range(60)],
            },
        )
    )
    view = SiteView(cfg)
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(now))
    for i in range(60):
        state = {"online": True, "readings": {"co2_ppm": 600.0}, "ts": stamp}
        view.on_message(f"roomd/hq/r{i:03d}/env/state", json.dumps(state).encode())
    alert = {
        "id": "r007.env.co2_ppm.max",
        "room": "r007",
        "device": "env",
        "metric": "co2_ppm",
        "rule": "max",
        "limit": 1000,
        "value": 1200,
        "unit": "ppm",
        "severity": "III",
        "state": "active",
        "since": stamp,
        "ts": stamp,
        "message": "CO2 1200 ppm above 1000 ppm",
    }
    view.on_message("roomd/hq/r007/alerts/r007.env.co2_ppm.max", json.dumps(alert).encode())
    lines = view.render(100, 50, "en", now)
    assert len(lines) <= 50
    text = "\n".join(line.plain for line in lines)
    # Ready rooms fold into one line; the room with an alert keeps its detail.
    assert "Ready: r000, r001" in text and "r007 (r007) degraded" in text
    assert "CO2 1200 ppm above 1000 ppm" in text
    # A cleared alert (empty retained payload) leaves the view.
    view.on_message("roomd/hq/r007/alerts/r007.env.co2_ppm.max", b"")
    assert "above" not in "\n".join(line.plain for line in view.render(100, 50, "en", now))
    # Idle microphones are said to be idle, not "SNR 0.6 dB".
    mic = {"online": True, "readings": {"snr_db": 0.6, "sound_level_db": 31.0}, "ts": stamp}
    view.on_message("roomd/hq/r001/mic/state", json.dumps(mic).encode())
    text = "\n".join(line.plain for line in view.render(200, 500, "en", now))
    assert "microphone idle" in text and "SNR 0.6" not in text
