"""Past one core and one machine: `roomd run --workers 2` and `roomd run --shard i/2`.

Four rooms, one Modbus TCP sensor each, pinned two to each shard. Checked: every room is polled
by exactly one process (each simulator sees one connection), alerts from rooms of both shards
reach MQTT under the usual topics, each shard announces its own availability, the worker pool
serves one /metrics with every device (labelled by shard), and stops cleanly.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from roomd.daemon.config import load_config
from roomd.daemon.shards import ShardError, for_shard, parse_shard, shard_of
from roomd.simulators.modbus import ModbusTcpSim, SimSensor
from tests.conftest import Mosquitto, free_port, until, write_config

ROOT = Path(__file__).resolve().parents[2]
BASE = "roomd/hq"
ROOMS = {"r1": 1, "r2": 1, "r3": 2, "r4": 2}


def site(tmp_path: Path, broker: Mosquitto, sims: dict[str, ModbusTcpSim]) -> dict[str, Any]:
    return {
        "site": "hq",
        "mqtt": {"url": broker.url},
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "state_dir": str(tmp_path / "state"),
        "shard_map": ROOMS,
        "rooms": [
            {
                "id": room,
                "thresholds": {"co2_ppm": {"hold": "0s"}},
                "devices": [
                    {
                        "id": "env",
                        "driver": "modbus",
                        "model": "senseair-s8",
                        "host": sim.address,
                        "poll": "100ms",
                    }
                ],
            }
            for room, sim in sims.items()
        ],
    }


def spawn(cfg: Path, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "roomd", "--log-level", "warning", "run", "-c", str(cfg)]
    return subprocess.Popen([*cmd, *extra], cwd=ROOT)


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return str(r.read().decode())


def reachable(url: str) -> bool:
    try:
        get(url)
        return True
    except OSError:
        return False


async def start_sims() -> dict[str, ModbusTcpSim]:
    return {
        room: await ModbusTcpSim([SimSensor.of("senseair-s8", co2_ppm=600)]).start()
        for room in ROOMS
    }


async def test_two_workers_split_the_rooms_and_serve_one_metrics_endpoint(
    tmp_path: Path, mosquitto: Mosquitto, recorder_factory: Any
) -> None:
    sims = await start_sims()
    cfg_path = write_config(tmp_path / "roomd.yaml", site(tmp_path, mosquitto, sims))
    port = load_config(cfg_path).http.port
    rec = recorder_factory(mosquitto.port, topic=f"{BASE}/#")
    proc = spawn(cfg_path, "--workers", "2")
    try:
        for i in (1, 2):
            topic = f"{BASE}/_daemon/availability/shard-{i}-of-2"
            await rec.wait_for(lambda m, t=topic: m.topic == t and m.payload == b"online", 30)
        # Alerts from a room of each shard, on the contract's topics.
        for room in ("r1", "r4"):
            sims[room].sensor.set(co2_ppm=1500)
            topic = f"{BASE}/{room}/alerts/{room}.env.co2_ppm.max"
            await rec.wait_for(lambda m, t=topic: m.topic == t and bool(m.payload), 20)
        url = f"http://127.0.0.1:{port}"
        await until(lambda: reachable(f"{url}/metrics"), 20, "the pool's /metrics")
        body = get(f"{url}/metrics")
        for room, shard in ROOMS.items():
            series = (
                f'roomd_device_up{{device="env",room="{room}",shard="{shard}/2",site="hq"}} 1.0'
            )
            assert series in body, series
        assert body.count("# TYPE roomd_device_up gauge") == 1  # each family once
        # The pool's /healthz is what it last read from its workers (every 2 s).
        await until(lambda: json.loads(get(f"{url}/healthz"))["devices"] == 4, 20, "health")
        health = json.loads(get(f"{url}/healthz"))
        assert health["status"] == "ok" and [w["devices"] for w in health["workers"]] == [2, 2]
        # Each room polled by one process only: one connection per simulator.
        assert all(sim.connections == 1 for sim in sims.values())
        assert stop(proc) == 0
        for i in (1, 2):  # a clean stop: each shard says offline, retained
            topic = f"{BASE}/_daemon/availability/shard-{i}-of-2"
            await rec.wait_for(lambda m, t=topic: m.topic == t and m.payload == b"offline", 20)
        assert not (tmp_path / "state" / "roomd.db").exists()  # each shard keeps its own store
        assert (tmp_path / "state" / "shard-1-of-2").is_dir()
    finally:
        if proc.poll() is None:
            stop(proc)
        for sim in sims.values():
            await sim.stop()


async def test_instances_on_two_machines_own_disjoint_rooms(
    tmp_path: Path, mosquitto: Mosquitto, recorder_factory: Any
) -> None:
    sims = await start_sims()
    cfg_path = write_config(tmp_path / "roomd.yaml", site(tmp_path, mosquitto, sims))
    rec = recorder_factory(mosquitto.port, topic=f"{BASE}/#")
    ports = [free_port(), free_port()]
    procs = [
        spawn(cfg_path, "--shard", f"{i}/2", "--listen", f"127.0.0.1:{ports[i - 1]}")
        for i in (1, 2)
    ]
    try:
        for port, rooms in zip(ports, (["r1", "r2"], ["r3", "r4"]), strict=True):
            url = f"http://127.0.0.1:{port}/healthz"
            await until(lambda u=url: reachable(u), 20, "instance up")
            health = json.loads(get(url))
            assert health["devices"] == 2 and health["shard"] in ("1/2", "2/2")
            body = get(url.replace("healthz", "metrics"))
            for room in ROOMS:
                assert (f'room="{room}"' in body) == (room in rooms), (room, rooms)
        await until(lambda: all(s.connections == 1 for s in sims.values()), 10, "each polled")
        # Both instances announce themselves; neither claims the other's rooms.
        await rec.wait_for(lambda m: m.topic == f"{BASE}/_daemon/instances", 20)
        assert not rec.matching(lambda m: "instance_conflict" in m.topic)
        # Site commands: `ack` answered by the shard owning the alert's room only, `status` by
        # every shard, each result naming its shard.
        result = f"{BASE}/_daemon/cmd/result"

        def answers(cmd_id: str) -> list[dict[str, Any]]:
            got = [m.json() for m in rec.on(result)]
            return [r for r in got if r.get("id") == cmd_id]

        for attempt in range(20):  # until both instances' subscriptions are live
            rec.publish(f"{BASE}/_daemon/cmd", {"command": "status", "id": f"s{attempt}"})
            await asyncio.sleep(0.25)
            if len(answers(f"s{attempt}")) == 2:
                break
        assert sorted(r["shard"] for r in answers(f"s{attempt}")) == ["1/2", "2/2"]
        for cmd_id, alert, shard in (
            ("a1", "r1.env.co2_ppm.max", "1/2"),
            ("a4", "r4.x.y.max", "2/2"),
        ):
            rec.publish(
                f"{BASE}/_daemon/cmd", {"command": "ack", "args": {"alert": alert}, "id": cmd_id}
            )
            await until(lambda c=cmd_id: bool(answers(c)), 10, f"an answer to {cmd_id}")
            await asyncio.sleep(0.5)  # time for a second, wrong answer to arrive
            got = answers(cmd_id)
            assert len(got) == 1 and got[0]["shard"] == shard and got[0]["ok"] is False, got
        # A reload keeps each instance to its own shard (it re-read the whole site before).
        rec.publish(f"{BASE}/_daemon/cmd", {"command": "reload", "id": "re"})
        await until(lambda: len(answers("re")) == 2, 10, "both shards reloaded")
        assert all(r["ok"] for r in answers("re"))
        for port in ports:
            health = json.loads(get(f"http://127.0.0.1:{port}/healthz"))
            assert health["devices"] == 2, health
        assert all(stop(p) == 0 for p in procs)
        assert all(s.connections == 1 for s in sims.values())
    finally:
        for p in procs:
            if p.poll() is None:
                stop(p)
        for sim in sims.values():
            await sim.stop()


def test_shard_arguments_and_assignment(tmp_path: Path) -> None:
    assert parse_shard("2/4") == (2, 4)
    for bad in ("0/2", "3/2", "x", "1/0", "1/2000"):
        with pytest.raises(ShardError):
            parse_shard(bad)
    # Stable: the same on every machine (not Python's salted hash); spread over the shards.
    assert [shard_of(f"r{i:04d}", 2, {}) for i in range(8)] == [1, 2, 2, 1, 2, 1, 1, 1]
    assert shard_of("r0000", 2, {"r0000": 2}) == 2
    cfg = load_config(
        write_config(
            tmp_path / "roomd.yaml",
            {
                "site": "hq",
                "state_dir": str(tmp_path / "state"),
                "shard_map": {"a": 3},
                "console": {
                    "enabled": True,
                    "users": [{"name": "t", "password_hash": "$argon2id$v=19$x"}],
                },
                "rooms": [{"id": "a"}, {"id": "b"}],
            },
        )
    )
    with pytest.raises(ShardError, match="pinned to shard 3 of 2"):
        for_shard(cfg, 1, 2)
    shards = [for_shard(cfg, i, 3) for i in (1, 2, 3)]
    assert "a" in [r.id for r in shards[2].rooms] and shards[2].state_dir.name == "shard-3-of-3"
    assert sorted(r.id for s in shards for r in s.rooms) == ["a", "b"]  # each room once
    # One console per shard, each on a port of its own.
    assert [s.console.listen for s in shards] == [f"127.0.0.1:{p}" for p in (9881, 9882, 9883)]
