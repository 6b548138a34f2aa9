"""The daemon end to end: simulated sensors → rules → real Mosquitto and /metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from roomd.daemon.config import load_config
from roomd.daemon.supervisor import Daemon
from roomd.simulators.modbus import ModbusRtuSim, ModbusTcpSim, SimSensor
from tests.conftest import Mosquitto, Recorder, free_port, until, write_config

BASE = "roomd/hq"
NORMAL = {
    "temperature_c": 22.0,
    "humidity_pct": 50.0,
    "co2_ppm": 600,
    "illuminance_lux": 650,
    "color_temp_k": 4500,
}
FAST = {"co2_ppm": {"hold": "0s"}, "temperature_c": {"hold": "0s"}}


def site(
    tmp_path: Path,
    broker: Mosquitto,
    devices: list[dict[str, Any]],
    thresholds: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "site": "hq",
        "mqtt": {"url": broker.url},
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "state_dir": str(tmp_path / "state"),
        "rooms": [
            {
                "id": "r301",
                "name": "City Hall 301",
                "area_m2": 60,
                "thresholds": thresholds if thresholds is not None else FAST,
                "devices": devices,
            }
        ],
    }


@asynccontextmanager
async def running(cfg_path: Path) -> AsyncIterator[Daemon]:
    daemon = Daemon(load_config(cfg_path))
    task = asyncio.create_task(daemon.run())
    await asyncio.wait_for(daemon.ready.wait(), 5)
    assert await daemon.mqtt.wait_connected(10), "daemon did not connect to mosquitto"
    try:
        yield daemon
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 10)


def dev(
    dev_id: str, model: str, sim: ModbusTcpSim, poll: str = "50ms", **kw: Any
) -> dict[str, Any]:
    """A Modbus TCP device entry for the site config, polling `sim`."""
    return {
        "id": dev_id,
        "driver": "modbus",
        "model": model,
        "host": sim.address,
        "poll": poll,
        **kw,
    }


async def http_get(port: int, path: str) -> tuple[int, str]:
    # The server runs on this test's event loop: fetch from a thread.
    return await asyncio.to_thread(_http_get, port, path)


def _http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def alert_events(rec: Recorder, room: str = "r301") -> list[dict[str, Any]]:
    out = []
    for m in rec.on(f"{BASE}/{room}/events"):
        data = m.json()
        if data.get("type") == "alert":
            out.append(data)
    return out


async def test_contract_topics_alert_lifecycle_and_metrics(
    tmp_path: Path, mosquitto: Mosquitto, recorder_factory: Any
) -> None:
    env = SimSensor.of("generic-iaq", **NORMAL)
    tcp = await ModbusTcpSim([env]).start()
    bus = ModbusRtuSim([SimSensor.of("xy-md02", temperature_c=22.5, humidity_pct=45.0)]).start()
    config = site(
        tmp_path,
        mosquitto,
        [
            dev("env", "generic-iaq", tcp, "100ms"),
            {"id": "climate", "driver": "modbus", "model": "xy-md02", "port": bus.path,
             "poll": "100ms"},
        ],
    )  # fmt: skip
    config["mqtt"]["state_min_interval"] = "1s"
    cfg = write_config(tmp_path / "roomd.yaml", config)
    rec = recorder_factory(mosquitto.port, topic="roomd/#")
    try:
        async with running(cfg) as daemon:
            await rec.wait_for(
                lambda m: m.topic == f"{BASE}/_daemon/availability" and m.payload == b"online"
            )
            state = (await rec.wait_for(lambda m: m.topic == f"{BASE}/r301/env/state"))[0].json()
            assert state["online"] is True
            assert state["readings"] == NORMAL
            assert state["ts"].endswith("Z")
            climate = (await rec.wait_for(lambda m: m.topic == f"{BASE}/r301/climate/state"))[
                0
            ].json()
            assert climate["readings"] == {"temperature_c": 22.5, "humidity_pct": 45.0}
            await rec.wait_for(
                lambda m: (
                    m.topic == f"{BASE}/r301/state"
                    and m.json()["devices"] == {"env": "online", "climate": "online"}
                    and m.json()["ok"] is True
                )
            )
            # The first room summary waits for every device: no guessed "offline".
            first = rec.on(f"{BASE}/r301/state")[0].json()
            assert first["devices"] == {"env": "online", "climate": "online"}

            # Published on change, not on every poll: constant readings → no new state message.
            before = len(rec.on(f"{BASE}/r301/env/state"))
            await asyncio.sleep(0.6)
            assert len(rec.on(f"{BASE}/r301/env/state")) == before
            # A move inside the profile's deadband (CO2: 10 ppm) updates /metrics, not MQTT...
            env.set(co2_ppm=605)
            await until(
                lambda: daemon.pollers[("r301", "env")].readings["co2_ppm"] == 605, 5, "poll"
            )
            _, body = await http_get(daemon.http.port, "/metrics")
            assert 'roomd_co2_ppm{device="env",room="r301",site="hq"} 605.0' in body
            await asyncio.sleep(0.3)
            assert len(rec.on(f"{BASE}/r301/env/state")) == before
            # ...a move past it is published...
            env.set(co2_ppm=615)
            await rec.wait_for(
                lambda m: (
                    m.topic == f"{BASE}/r301/env/state" and m.json()["readings"]["co2_ppm"] == 615
                )
            )
            # ...at most every state_min_interval (1 s here): noise polled every 100 ms is not
            # every poll on the bus.
            published = len(rec.on(f"{BASE}/r301/env/state"))
            env.set(co2_ppm=630)
            await asyncio.sleep(0.4)
            assert len(rec.on(f"{BASE}/r301/env/state")) == published
            await rec.wait_for(
                lambda m: (
                    m.topic == f"{BASE}/r301/env/state" and m.json()["readings"]["co2_ppm"] == 630
                )
            )
            # Readings a device pushes (a command's effect) are not held back.
            env_poller = daemon.pollers[("r301", "env")]
            daemon.site.pushed(env_poller, {"co2_ppm": 700})
            await rec.wait_for(
                lambda m: (
                    m.topic == f"{BASE}/r301/env/state" and m.json()["readings"]["co2_ppm"] == 700
                ),
                timeout=0.5,
            )

            env.set(co2_ppm=1240)
            topic = f"{BASE}/r301/alerts/r301.env.co2_ppm.max"
            raised = (await rec.wait_for(lambda m: m.topic == topic and m.payload != b""))[0].json()
            expected = {
                "id": "r301.env.co2_ppm.max",
                "room": "r301",
                "device": "env",
                "metric": "co2_ppm",
                "rule": "max",
                "limit": 1000,
                "value": 1240,
                "unit": "ppm",
                "severity": "III",
                "state": "active",
                "message": "CO2 1240 ppm above 1000 ppm",
            }
            assert {k: raised[k] for k in expected} == expected
            assert raised["since"] == raised["ts"]
            room = (
                await rec.wait_for(
                    lambda m: m.topic == f"{BASE}/r301/state" and m.json()["active_alerts"] == 1
                )
            )[0].json()
            assert room["ok"] is False and room["devices"]["env"] == "degraded"

            await until(lambda: daemon.store.outbox_depth == 0, 5, "broker acknowledgements")
            status, body = await http_get(daemon.http.port, "/metrics")
            assert status == 200
            assert 'roomd_co2_ppm{device="env",room="r301",site="hq"} 1240.0' in body
            assert 'roomd_device_up{device="climate",room="r301",site="hq"} 1.0' in body
            assert 'roomd_online{device="climate",room="r301",site="hq"} 1.0' in body
            assert 'roomd_alerts_active{severity="III",site="hq"} 1.0' in body
            assert 'roomd_poll_duration_seconds_bucket{driver="modbus",le="0.01",site="hq"}' in body
            assert 'roomd_mqtt_outbox_messages{site="hq"} 0.0' in body, [
                line for line in body.splitlines() if "outbox" in line
            ]
            status, health = await http_get(daemon.http.port, "/healthz")
            assert status == 200 and json.loads(health)["mqtt_connected"] is True

            env.set(co2_ppm=940)
            cleared = await rec.wait_for(lambda m: m.topic == topic and m.payload == b"")
            assert cleared
            events = await _wait_events(rec, 2)
            assert [(e["transition"], e["state"]) for e in events] == [
                ("raised", "active"),
                ("cleared", "cleared"),
            ]
            assert events[1]["id"] == events[0]["id"] == "r301.env.co2_ppm.max"
            await rec.wait_for(
                lambda m: (
                    m.topic == f"{BASE}/r301/state"
                    and m.json()["ok"] is True
                    and m.json()["active_alerts"] == 0
                )
            )
        await rec.wait_for(
            lambda m: m.topic == f"{BASE}/_daemon/availability" and m.payload == b"offline"
        )
        # A late subscriber sees the retained picture: availability, room and device states.
        late = recorder_factory(mosquitto.port, topic="roomd/#")
        await late.wait_for(lambda m: m.topic == f"{BASE}/r301/env/state" and m.retain)
        await late.wait_for(lambda m: m.topic == f"{BASE}/r301/state" and m.retain)
        assert not late.matching(lambda m: "/alerts/" in m.topic and m.payload)
    finally:
        await tcp.stop()
        bus.stop()


async def _wait_events(rec: Recorder, n: int, timeout: float = 10) -> list[dict[str, Any]]:
    await until(lambda: len(alert_events(rec)) >= n, timeout, f"{n} alert events")
    return alert_events(rec)


async def test_offline_alert_backoff_and_recovery_leave_other_devices_alone(
    tmp_path: Path, mosquitto: Mosquitto, recorder_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    flaky = SimSensor.of("senseair-s8", co2_ppm=700)
    steady = SimSensor.of("senseair-s8", co2_ppm=650)
    sims = [await ModbusTcpSim([flaky]).start(), await ModbusTcpSim([steady]).start()]
    cfg = write_config(
        tmp_path / "roomd.yaml",
        site(
            tmp_path,
            mosquitto,
            [
                dev("flaky", "senseair-s8", sims[0], "100ms", timeout="100ms"),
                dev("steady", "senseair-s8", sims[1], "100ms"),
            ],
        ),
    )
    rec = recorder_factory(mosquitto.port, topic="roomd/#")
    caplog.set_level(logging.INFO, logger="roomd")
    try:
        async with running(cfg) as daemon:
            await rec.wait_for(lambda m: m.topic == f"{BASE}/r301/flaky/state")
            flaky.fault = "silent"
            topic = f"{BASE}/r301/alerts/r301.flaky.online.min"
            alert = (await rec.wait_for(lambda m: m.topic == topic and m.payload))[0].json()
            assert alert["severity"] == "II" and alert["metric"] == "online"
            assert alert["message"].startswith("flaky offline: no reply within 0.1s")
            offline = (
                await rec.wait_for(
                    lambda m: m.topic == f"{BASE}/r301/flaky/state" and m.json()["online"] is False
                )
            )[0].json()
            assert "no reply" in offline["error"]
            # The other device keeps its cadence while this one times out and backs off.
            polls = daemon.pollers[("r301", "steady")].polls
            await asyncio.sleep(1.5)
            assert daemon.pollers[("r301", "steady")].polls - polls >= 10
            failures = daemon.pollers[("r301", "flaky")].failures
            assert 2 <= failures <= 8, failures  # retried with backoff, not hammered every 100 ms
            steady.set(co2_ppm=660)
            await rec.wait_for(
                lambda m: (
                    m.topic == f"{BASE}/r301/steady/state"
                    and m.json()["readings"] == {"co2_ppm": 660}
                )
            )
            flaky.fault = "none"
            await rec.wait_for(lambda m: m.topic == topic and m.payload == b"", timeout=15)
            await rec.wait_for(
                lambda m: (
                    m.topic == f"{BASE}/r301/state"
                    and m.json()["ok"] is True
                    and m.json()["devices"] == {"flaky": "online", "steady": "online"}
                )
            )
        text = caplog.text
        # Logged once on the way down and once on the way up, not on every failed poll.
        assert text.count("r301/flaky offline") == 1
        assert text.count("r301/flaky back online") == 1
    finally:
        for s in sims:
            await s.stop()


async def test_commands_ack_and_errors(
    tmp_path: Path, mosquitto: Mosquitto, recorder_factory: Any
) -> None:
    env = SimSensor.of("generic-iaq", **{**NORMAL, "co2_ppm": 1500})
    tcp = await ModbusTcpSim([env]).start()
    cfg = write_config(
        tmp_path / "roomd.yaml",
        site(tmp_path, mosquitto, [dev("env", "generic-iaq", tcp, "100ms")]),
    )
    rec = recorder_factory(mosquitto.port, topic="roomd/#")
    try:
        async with running(cfg):
            alert_topic = f"{BASE}/r301/alerts/r301.env.co2_ppm.max"
            await rec.wait_for(lambda m: m.topic == alert_topic and m.payload)

            def result(topic: str, cmd_id: str) -> Any:
                return lambda m: m.topic == topic and m.json().get("id") == cmd_id

            daemon_result = f"{BASE}/_daemon/cmd/result"
            rec.publish(
                f"{BASE}/_daemon/cmd",
                {"command": "ack", "args": {"alert": "r301.env.co2_ppm.max"}, "id": "a1"},
            )
            r = (await rec.wait_for(result(daemon_result, "a1")))[0].json()
            assert r["ok"] is True and r["result"]["state"] == "acknowledged"
            acked = await rec.wait_for(
                lambda m: (
                    m.topic == alert_topic and m.payload and m.json()["state"] == "acknowledged"
                )
            )
            assert acked
            rec.publish(
                f"{BASE}/_daemon/cmd", {"command": "ack", "args": {"alert": "nope"}, "id": "a2"}
            )
            r = (await rec.wait_for(result(daemon_result, "a2")))[0].json()
            assert r == {"id": "a2", "ok": False, "error": "no active alert 'nope'", "ts": r["ts"]}
            rec.publish(f"{BASE}/_daemon/cmd", {"command": "fly", "id": "a3"})
            r = (await rec.wait_for(result(daemon_result, "a3")))[0].json()
            assert r["ok"] is False and "unknown command 'fly'" in r["error"]
            rec.publish(f"{BASE}/_daemon/cmd", b"{not json")
            r = (await rec.wait_for(lambda m: m.topic == daemon_result and m.json()["id"] is None))[
                0
            ].json()
            assert r["ok"] is False and r["error"].startswith("bad command:")

            dev_result = f"{BASE}/r301/env/cmd/result"
            rec.publish(
                f"{BASE}/r301/env/cmd",
                {"command": "write", "args": {"register": "unoccupied_setpoint_c"}, "id": "d1"},
            )
            r = (await rec.wait_for(result(dev_result, "d1")))[0].json()
            assert r["ok"] is True and r["result"] == {
                "register": "unoccupied_setpoint_c",
                "raw": 260,
            }
            assert env.written == {0x100: 260}
            rec.publish(
                f"{BASE}/r301/env/cmd", {"command": "power", "args": {"state": "on"}, "id": "d2"}
            )
            r = (await rec.wait_for(result(dev_result, "d2")))[0].json()
            assert r["ok"] is False and "unknown command 'power'" in r["error"]
            rec.publish(f"{BASE}/r301/nodev/cmd", {"command": "x", "id": "d3"})
            r = (await rec.wait_for(result(f"{BASE}/r301/nodev/cmd/result", "d3")))[0].json()
            assert r["ok"] is False and "no device r301/nodev" in r["error"]
            cmd_events = [
                json.loads(m.payload)
                for m in rec.on(f"{BASE}/r301/events")
                if json.loads(m.payload)["type"] == "command"
            ]
            assert [(e["command"], e["ok"]) for e in cmd_events] == [
                ("write", True),
                ("power", False),
            ]
            # ...and the daemon goes on polling.
            env.set(co2_ppm=500)
            await rec.wait_for(lambda m: m.topic == alert_topic and m.payload == b"")
    finally:
        await tcp.stop()


async def test_broker_outage_loses_and_reorders_nothing(
    tmp_path: Path, mosquitto: Mosquitto, recorder_factory: Any
) -> None:
    env = SimSensor.of("senseair-s8", co2_ppm=600)
    tcp = await ModbusTcpSim([env]).start()
    cfg = write_config(
        tmp_path / "roomd.yaml", site(tmp_path, mosquitto, [dev("env", "senseair-s8", tcp, "50ms")])
    )
    # A persistent session: the broker keeps our subscription and queue across its restart.
    rec = recorder_factory(
        mosquitto.port, topic=f"{BASE}/r301/events", client_id="outage-rec", clean=False
    )
    try:
        async with running(cfg) as daemon:
            env.set(co2_ppm=1100)
            await _wait_events(rec, 1)
            mosquitto.stop()
            await until(
                lambda: not daemon.mqtt.connected.is_set(), 5, "daemon to notice the outage"
            )
            # Six transitions while the broker is away.
            for i in range(6):
                env.set(co2_ppm=600 if i % 2 == 0 else 1100 + i)
                want = 2 + i
                await until(
                    lambda w=want: daemon.store.outbox_depth >= 2 * (w - 1), 5, "transition"
                )
            assert daemon.store.outbox_depth >= 12  # alert topic + event per transition
            mosquitto.start()
            events = await _wait_events(rec, 7, timeout=40)
            assert [e["transition"] for e in events] == ["raised", "cleared"] * 3 + ["raised"]
            assert [e["value"] for e in events if e["transition"] == "raised"] == [
                1100,
                1101,
                1103,
                1105,
            ]
            await until(lambda: daemon.store.outbox_depth == 0, 10, "outbox to drain")
    finally:
        await tcp.stop()


async def test_restart_keeps_alerts_no_duplicate_raise_no_lost_clear(
    tmp_path: Path, mosquitto: Mosquitto, recorder_factory: Any
) -> None:
    env = SimSensor.of("senseair-s8", co2_ppm=1500)
    tcp = await ModbusTcpSim([env]).start()
    cfg = write_config(
        tmp_path / "roomd.yaml", site(tmp_path, mosquitto, [dev("env", "senseair-s8", tcp, "50ms")])
    )
    rec = recorder_factory(mosquitto.port, topic="roomd/#")
    topic = f"{BASE}/r301/alerts/r301.env.co2_ppm.max"
    try:
        async with running(cfg):
            await _wait_events(rec, 1)
        # Restart with the CO2 still high: the alert is known, not raised again.
        async with running(cfg) as daemon:
            assert "r301.env.co2_ppm.max" in daemon.book.active
            await until(lambda: daemon.pollers[("r301", "env")].polls >= 5, 5, "polls")
            assert [e["transition"] for e in alert_events(rec)] == ["raised"]
        # The CO2 drops while roomd is down: the clear is not lost on the next start.
        env.set(co2_ppm=500)
        async with running(cfg):
            events = await _wait_events(rec, 2)
            assert [e["transition"] for e in events] == ["raised", "cleared"]
            await rec.wait_for(lambda m: m.topic == topic and m.payload == b"")
        # A raise committed while the broker was down goes out after a restart.
        mosquitto.stop()
        env.set(co2_ppm=1700)
        daemon = Daemon(load_config(cfg))
        task = asyncio.create_task(daemon.run())
        await until(lambda: daemon.store.outbox_depth >= 2, 5, "raise in the outbox")
        daemon.stop()
        await asyncio.wait_for(task, 10)
        mosquitto.start()
        rec2 = recorder_factory(mosquitto.port, topic="roomd/#")
        async with running(cfg):
            got = await rec2.wait_for(lambda m: m.topic == topic and m.payload, timeout=10)
            assert got[0].json()["value"] == 1700
    finally:
        await tcp.stop()


async def test_config_removal_clears_alerts_with_a_reason(
    tmp_path: Path, mosquitto: Mosquitto, recorder_factory: Any
) -> None:
    a = SimSensor.of("senseair-s8", co2_ppm=1500)
    tcp = await ModbusTcpSim([a]).start()
    data = site(
        tmp_path,
        mosquitto,
        [
            dev("env", "senseair-s8", tcp, "50ms"),
            dev("env2", "senseair-s8", tcp, "50ms"),
        ],
    )
    cfg = write_config(tmp_path / "roomd.yaml", data)
    rec = recorder_factory(mosquitto.port, topic="roomd/#")
    try:
        async with running(cfg) as daemon:
            await _wait_events(rec, 2)
            env_polls = daemon.pollers[("r301", "env")].polls
            data["rooms"][0]["devices"] = data["rooms"][0]["devices"][:1]
            write_config(cfg, data)
            assert daemon.reload() is True
            ev = await rec.wait_for(
                lambda m: (
                    m.topic == f"{BASE}/r301/events" and m.json().get("transition") == "cleared"
                )
            )
            assert ev[0].json()["id"] == "r301.env2.co2_ppm.max"
            assert ev[0].json()["reason"] == "device removed from config"
            assert ("r301", "env2") not in daemon.pollers
            # The unchanged device kept its poller (no gap, no restart).
            await until(lambda: daemon.pollers[("r301", "env")].polls > env_polls + 3, 5, "polls")
            cfg.write_text("site: hq\nrooms: []\n")
            assert daemon.reload() is False  # invalid: the running config stays
            assert ("r301", "env") in daemon.pollers
    finally:
        await tcp.stop()
