"""Input nobody should trust: poison on every subscribed topic, strangers on the broker, long
HTTP lines. The daemon answers, keeps polling, logs a bounded number of lines, holds its
memory, and obeys only the principals its authorization config names."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from roomd.daemon.authz import sign
from roomd.simulators.modbus import ModbusTcpSim, SimSensor
from tests.conftest import Mosquitto, Recorder, free_port, until, write_config
from tests.integration.test_daemon import BASE, NORMAL, dev, running, site


@pytest.fixture
async def one_sensor(
    tmp_path: Path, mosquitto: Mosquitto, recorder_factory: Any
) -> AsyncIterator[tuple[SimSensor, Path, Recorder]]:
    """A room with one simulated Modbus sensor, its config, and a recorder on `roomd/#`."""
    env = SimSensor.of("generic-iaq", **NORMAL)
    tcp = await ModbusTcpSim([env]).start()
    cfg = write_config(
        tmp_path / "roomd.yaml", site(tmp_path, mosquitto, [dev("env", "generic-iaq", tcp)])
    )
    yield env, cfg, recorder_factory(mosquitto.port, topic="roomd/#")
    await tcp.stop()


POISON: list[tuple[str, bytes]] = [
    ("deep", b"[" * 1024),  # made paho's loop handle the same packet forever
    ("deep_closed", b"[" * 900 + b"]" * 900),
    ("deep_object", b'{"a":' * 500 + b"1" + b"}" * 500),
    ("huge", b'{"command": "status", "args": {"x": "' + b"A" * 200_000 + b'"}}'),
    ("not_utf8", b'{"command": "\xff\xfe"}'),
    ("array", b"[]"),
    ("string", b'"ack"'),
    ("number", b"1e999"),
    ("nan", b'{"command": "status", "args": {"x": NaN}}'),
    ("command_type", b'{"command": 5}'),
    ("args_type", b'{"command": "ack", "args": []}'),
    ("id_type", b'{"command": "status", "id": {"x": 1}}'),
    ("empty", b""),
]


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def test_poison_on_every_topic_is_answered_and_the_daemon_goes_on(
    one_sensor: tuple[SimSensor, Path, Recorder],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    _env, cfg, rec = one_sensor
    # Retained poison on the bookings topic: met again at every start.
    rec.publish(f"{BASE}/r301/bookings", b"[" * 1024, retain=True)
    try:
        async with running(cfg) as daemon:
            bookings_alert = f"{BASE}/r301/alerts/r301._room.bookings.error"
            raised = await rec.wait_for(lambda m: m.topic == bookings_alert and m.payload)
            assert "not JSON: nested deeper than 16 levels" in raised[0].json()["message"]
            records_before = len(caplog.records)
            rss_before = rss_kib()
            for round_ in range(20):
                for _name, payload in POISON:
                    rec.publish(f"{BASE}/_daemon/cmd", payload)
                    rec.publish(f"{BASE}/r301/env/cmd", payload)
                    rec.publish(f"{BASE}/r301/env/cmd/by/someone", payload)
                    rec.publish(f"{BASE}/r302/bookings", payload)  # not a room of this site
                    if round_ == 0:
                        rec.publish(f"{BASE}/r301/bookings", payload)
            # Every command message gets its ok:false (the empty one included).
            results = f"{BASE}/_daemon/cmd/result"
            got = await rec.wait_for(lambda m: m.topic == results, 20, count=20 * len(POISON))
            errors = {r.json()["error"] for r in got}
            assert all(not r.json()["ok"] for r in got)
            assert any("over the limit of 65536" in e for e in errors), errors
            assert any(e.startswith("bad command: not JSON") for e in errors), errors
            assert any("nested deeper than 16" in e for e in errors), errors
            assert "bad command: a command must be a JSON object" in errors
            assert "bad command: command: missing or not a short string" in errors
            assert "bad command: args: must be an object" in errors
            assert "bad command: id: must be a string or a number" in errors
            # ...and it still answers and polls.
            rec.publish(f"{BASE}/_daemon/cmd", {"command": "status", "id": "alive"})
            alive = await rec.wait_for(
                lambda m: m.topic == results and m.json().get("id") == "alive", 5
            )
            assert alive[0].json()["ok"] is True
            polls = daemon.pollers[("r301", "env")].polls
            await until(lambda: daemon.pollers[("r301", "env")].polls > polls + 5, 5, "polling")
            # Bounded logging: one line per source and reason per minute, not one per message.
            flood_lines = len(caplog.records) - records_before
            assert flood_lines < 40, [r.getMessage()[:100] for r in caplog.records[-40:]]
            assert not any(r.exc_info for r in caplog.records), "a traceback was logged"
            assert rss_kib() - rss_before < 30 * 1024
            refused = daemon.metrics.commands_refused.labels("hq", "malformed")._value.get()
            assert refused >= 20 * len(POISON)
        # Restart: the retained poison is met again, handled again, and nothing is stuck.
        async with running(cfg) as daemon:
            rec.publish(f"{BASE}/_daemon/cmd", {"command": "status", "id": "after-restart"})
            again = await rec.wait_for(
                lambda m: m.topic == results and m.json().get("id") == "after-restart", 5
            )
            assert again[0].json()["ok"] is True
            assert "r301._room.bookings.error" in daemon.book.active
            # A good list replaces the poison and clears the alert.
            rec.publish(f"{BASE}/r301/bookings", b"[]", retain=True)
            await rec.wait_for(lambda m: m.topic == bookings_alert and m.payload == b"", 5)
    finally:
        rec.publish(f"{BASE}/r301/bookings", b"", retain=True)


async def test_a_retained_command_is_not_obeyed(
    one_sensor: tuple[SimSensor, Path, Recorder],
) -> None:
    env, cfg, rec = one_sensor
    cmd = {"command": "write", "args": {"register": "unoccupied_setpoint_c"}, "id": "r1"}
    rec.publish(f"{BASE}/r301/env/cmd", cmd, retain=True)
    try:
        async with running(cfg) as daemon:
            await until(lambda: daemon.pollers[("r301", "env")].online is True, 5, "online")
            await asyncio.sleep(0.5)
            assert env.written == {}
            assert daemon.metrics.input_rejected.labels("hq", "retained_command")._value.get() == 1
    finally:
        rec.publish(f"{BASE}/r301/env/cmd", b"", retain=True)


async def test_modbus_writes_out_of_range_are_refused_precisely(
    one_sensor: tuple[SimSensor, Path, Recorder],
) -> None:
    env, cfg, rec = one_sensor
    result = f"{BASE}/r301/env/cmd/result"
    async with running(cfg):
        for i, value in enumerate([1e308, -1e308, True, "26", 1e6]):
            args = {"register": "unoccupied_setpoint_c", "value": value}
            rec.publish(f"{BASE}/r301/env/cmd", {"command": "write", "args": args, "id": i})
        got = await rec.wait_for(lambda m: m.topic == result, 10, count=5)
        by_id = {m.json()["id"]: m.json() for m in got}
        assert all(not r["ok"] for r in by_id.values()), by_id
        assert "does not fit the int16 register" in by_id[0]["error"]
        assert "does not fit the int16 register" in by_id[1]["error"]
        assert by_id[2]["error"] == "args.value: a number"
        assert by_id[3]["error"] == "args.value: a number"
        assert "internal error" not in str(by_id)
        assert env.written == {}


def test_long_http_request_lines_get_431_and_no_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from roomd.daemon.sinks.prometheus import HttpServer, Metrics

    async def main() -> list[bytes]:
        server = HttpServer("127.0.0.1", 0, Metrics("hq"), lambda: {"status": "ok"})
        await server.start()
        replies = []
        try:
            for request in (
                b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
                b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 500 + b"\r\n",
                b"GET /healthz HTTP/1.1\r\n\r\n",
            ):
                r, w = await asyncio.open_connection("127.0.0.1", server.port)
                w.write(request)
                await w.drain()
                replies.append(await r.read())
                w.close()
        finally:
            await server.stop()
        return replies

    caplog.set_level(logging.DEBUG)
    replies = asyncio.run(main())
    assert replies[0].startswith(b"HTTP/1.1 431 ")
    assert replies[1].startswith(b"HTTP/1.1 431 ")
    assert replies[2].startswith(b"HTTP/1.1 200 ")
    assert not any(r.exc_info for r in caplog.records)
    assert "Traceback" not in caplog.text


# ---- authorization: a real Mosquitto with accounts and the ACL from docs/operations.md ------

ACL = """\
user roomd
topic readwrite roomd/#

# Everyone with an account may read the site and write commands and bookings under their own
# login only (the /by/%u suffix is how roomd knows who sent it).
pattern read roomd/hq/#
pattern write roomd/hq/+/+/cmd/by/%u
pattern write roomd/hq/_daemon/cmd/by/%u
pattern write roomd/hq/+/bookings/by/%u
# A shared account for a control processor writes the plain topics; roomd checks signatures.
user crestron
topic write roomd/hq/+/+/cmd
# An ordinary account that may write the plain command topics (a misconfigured broker).
user intruder
topic write roomd/hq/+/+/cmd
topic write roomd/hq/_daemon/cmd
topic write roomd/hq/+/bookings
"""
USERS = ("roomd", "ha", "ops", "crestron", "intruder", "booking-system")


@pytest.fixture
def acl_broker(tmp_path: Path) -> Any:
    d = tmp_path / "acl"
    d.mkdir()
    passwd = d / "passwd"
    passwd.write_text("")
    for user in USERS:
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, f"{user}-pw"], check=True)
    (d / "acl").write_text(ACL)
    port = free_port()
    (d / "mosquitto.conf").write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n"
        f"acl_file {d}/acl\n" + ("user root\n" if os.geteuid() == 0 else "")
    )
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen(
        [binary, "-c", str(d / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(10)


class Client:
    def __init__(self, port: int, user: str) -> None:
        self.got: list[tuple[str, Any]] = []
        self.lock = threading.Lock()
        ready = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{user}")
        self.c.username_pw_set(user, f"{user}-pw")
        self.c.on_connect = lambda c, *_: c.subscribe(f"{BASE}/#", 1)
        self.c.on_subscribe = lambda *_: ready.set()
        self.c.on_message = self._message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert ready.wait(10)

    def _message(self, c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        import json

        with self.lock:
            try:
                self.got.append((m.topic, json.loads(m.payload) if m.payload else None))
            except ValueError:
                self.got.append((m.topic, m.payload))

    def send(self, topic: str, body: dict[str, Any] | list[Any]) -> None:
        import json

        self.c.publish(topic, json.dumps(body), qos=1).wait_for_publish(5)

    async def result(self, cmd_id: str, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for topic, body in self.got:
                    if (
                        topic.endswith("/cmd/result")
                        and isinstance(body, dict)
                        and body.get("id") == cmd_id
                    ):
                        return body
            await asyncio.sleep(0.02)
        raise AssertionError(f"no result for {cmd_id}")

    def results(self, cmd_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [
                b
                for t, b in self.got
                if t.endswith("/cmd/result") and isinstance(b, dict) and b.get("id") == cmd_id
            ]

    def stop(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


async def test_only_authorised_principals_drive_devices_and_ack(
    tmp_path: Path, acl_broker: int
) -> None:
    env = SimSensor.of("generic-iaq", **{**NORMAL, "co2_ppm": 1500})
    tcp = await ModbusTcpSim([env]).start()
    key = tmp_path / "crestron.key"
    key.write_bytes(b"k" * 32)
    broker = SimpleNamespace(url=f"mqtt://127.0.0.1:{acl_broker}")
    cfg_data = site(tmp_path, broker, [dev("env", "generic-iaq", tcp)])
    cfg_data["mqtt"] = {
        "url": f"mqtt://127.0.0.1:{acl_broker}",
        "username": "roomd",
        "password": "roomd-pw",
    }
    cfg_data["authorization"] = {
        "principals": {"crestron": {"key_file": str(key)}},
        "rules": [
            {"principals": ["ha", "crestron"], "rooms": ["r3*"], "devices": ["sensor"],
             "commands": ["write"]},
            {"principals": ["ops"], "site_commands": ["ack", "status"]},
        ],
        "bookings": ["booking-system"],
    }  # fmt: skip
    cfg = write_config(tmp_path / "roomd.yaml", cfg_data)
    write = {"command": "write", "args": {"register": "unoccupied_setpoint_c"}}
    env_cmd = f"{BASE}/r301/env/cmd"
    clients = {
        u: Client(acl_broker, u) for u in ("ha", "ops", "crestron", "intruder", "booking-system")
    }
    try:
        async with running(cfg) as daemon:
            await until(lambda: "r301.env.co2_ppm.max" in daemon.book.active, 10, "alert")
            intruder, ha, ops, crestron = (
                clients[u] for u in ("intruder", "ha", "ops", "crestron")
            )
            # A stranger on the plain topic is `anonymous`, which no rule names.
            intruder.send(env_cmd, {**write, "id": "i1"})
            r = await intruder.result("i1")
            assert r["ok"] is False and "anonymous may not send 'write' to r301/env" in r["error"]
            # ...and cannot pose as ha: the broker drops writes under another login.
            intruder.send(f"{env_cmd}/by/ha", {**write, "id": "i2"})
            intruder.send(
                f"{BASE}/_daemon/cmd",
                {"command": "ack", "args": {"alert": "r301.env.co2_ppm.max", "by": "boss"},
                 "id": "i3"},
            )  # fmt: skip
            r = await intruder.result("i3")
            assert (
                r["ok"] is False and "anonymous may not send the site command 'ack'" in r["error"]
            )
            await asyncio.sleep(0.3)
            assert env.written == {}
            with pytest.raises(AssertionError):
                await intruder.result("i2", timeout=0.5)
            # ha under its own login: allowed to write to sensors, not to ack.
            ha.send(f"{env_cmd}/by/ha", {**write, "id": "h1"})
            assert (await ha.result("h1"))["ok"] is True
            assert env.written == {0x100: 260}
            ha.send(f"{BASE}/_daemon/cmd/by/ha", {"command": "reload", "id": "h2"})
            assert "ha may not send the site command 'reload'" in (await ha.result("h2"))["error"]
            # ops acknowledges; `by` is the login, a claimed name is kept beside it.
            ops.send(
                f"{BASE}/_daemon/cmd/by/ops",
                {"command": "ack", "args": {"alert": "r301.env.co2_ppm.max", "by": "boss"},
                 "id": "o1"},
            )  # fmt: skip
            assert (await ops.result("o1"))["ok"] is True
            acked = daemon.book.active["r301.env.co2_ppm.max"]
            assert acked.state == "acknowledged"
            assert acked.extra["acknowledged_by"] == "ops (boss)"
            # The shared control-processor account signs; a replay and a tampered copy fail.
            env.written.clear()
            now = int(time.time())
            signed = sign(key.read_bytes(), env_cmd, {**write, "id": "c1"}, "crestron", now)
            crestron.send(env_cmd, signed)
            assert (await crestron.result("c1"))["ok"] is True
            assert env.written == {0x100: 260}
            crestron.send(env_cmd, signed)  # the same message again: a replay
            await until(lambda: len(crestron.results("c1")) == 2, 5, "the replay's answer")
            assert crestron.results("c1")[1] == {
                "id": "c1",
                "ok": False,
                "error": "auth: this signed command was already used",
                "ts": crestron.results("c1")[1]["ts"],
            }
            tampered = {**signed, "id": "c2"}
            crestron.send(env_cmd, tampered)
            r = await crestron.result("c2")
            assert r["ok"] is False and r["error"] == "auth: signature does not match"
            old = sign(key.read_bytes(), env_cmd, {**write, "id": "c3"}, "crestron", 1)
            crestron.send(env_cmd, old)
            assert "too old" in (await crestron.result("c3"))["error"]
            # Bookings drive pre-warm, shutdown and no-show: only the booking system's login.
            now, fmt = time.time(), "%Y-%m-%dT%H:%M:%SZ"
            start, end = time.gmtime(now - 60), time.gmtime(now + 3600)
            meeting = [
                {"id": "m1", "start": time.strftime(fmt, start), "end": time.strftime(fmt, end)}
            ]
            intruder.send(f"{BASE}/r301/bookings", meeting)
            await asyncio.sleep(0.5)
            assert daemon.meetings.current("r301") is None
            assert not daemon.meetings.rooms["r301"].pushed
            clients["booking-system"].send(f"{BASE}/r301/bookings/by/booking-system", meeting)
            await until(lambda: daemon.meetings.current("r301") is not None, 5, "booking taken")
            refused = daemon.metrics.commands_refused
            assert refused.labels("hq", "unauthorised")._value.get() >= 4
            assert refused.labels("hq", "bad_signature")._value.get() >= 2
    finally:
        for c in clients.values():
            c.stop()
        await tcp.stop()


async def test_a_huge_bookings_push_is_capped_and_parsed_off_the_loop(
    one_sensor: tuple[SimSensor, Path, Recorder],
) -> None:
    _env, cfg, rec = one_sensor
    start = 1795392000  # 2026-11-23

    def at(t: int) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

    items = [
        {"id": f"m{i}", "start": at(start + i * 60), "end": at(start + i * 60 + 30), "title": "x"}
        for i in range(9000)
    ]
    payload = json.dumps(items).encode()
    assert 64 * 1024 < len(payload) < 1024 * 1024
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    try:
        async with running(cfg) as daemon:
            tick = asyncio.create_task(ticker())
            rec.publish(f"{BASE}/r301/bookings", payload, retain=True)
            alert = f"{BASE}/r301/alerts/r301._room.bookings.error"
            got = await rec.wait_for(lambda m: m.topic == alert and m.payload, 20)
            tick.cancel()
            assert "more than 2000 bookings; the first 2000 are used" in got[0].json()["message"]
            assert len(daemon.meetings.rooms["r301"].all()) == 2000
            assert max(gaps) < 0.25, f"the event loop stalled {max(gaps):.3f} s"
    finally:
        rec.publish(f"{BASE}/r301/bookings", b"", retain=True)
