"""Sign-in readers over ptys → daemon → SQLite + MQTT."""

from __future__ import annotations

import asyncio
import csv
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from roomd.daemon.clock import FakeClock
from roomd.daemon.config import load_config
from roomd.daemon.supervisor import Daemon
from roomd.simulators.nfc import ReaderSim, card_uid
from tests.conftest import Mosquitto, free_port, until, write_config
from tests.integration.test_daemon import BASE, running

ROSTER = [(card_uid(i), f"Attendee {i:03d}") for i in range(60)]


def roster_file(tmp_path: Path) -> Path:
    path = tmp_path / "roster.csv"
    path.write_text("uid,name\n" + "".join(f"{u},{n}\n" for u, n in ROSTER))
    return path


def config(
    tmp_path: Path, broker: Mosquitto, reader: ReaderSim, area: float = 60, **reader_kw: Any
) -> Path:
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
                    "area_m2": area,
                    "roster": str(roster_file(tmp_path)),
                    "devices": [
                        {
                            "id": "reader",
                            "driver": "nfc-serial",
                            "port": reader.path,
                            "framing": reader.framing,
                            "poll": "100ms",
                            "ack": "\a",
                            **reader_kw,
                        }
                    ],
                }
            ],
        },
    )


def signin_events(rec: Any) -> list[dict[str, Any]]:
    return [m.json() for m in rec.on(f"{BASE}/r301/events") if m.json()["type"] == "signin"]


async def test_a_burst_is_recorded_once_in_order_with_latencies_and_no_raw_uid(
    tmp_path: Path, mosquitto: Mosquitto, recorder_factory: Any
) -> None:
    reader = ReaderSim(tmp_path / "reader0").plug()
    cfg = config(tmp_path, mosquitto, reader)
    rec = recorder_factory(mosquitto.port, topic="roomd/#")
    try:
        async with running(cfg) as daemon:
            await until(lambda: daemon.pollers[("r301", "reader")].online is True, 5, "reader")
            for uid, _ in ROSTER[:40]:
                reader.tap(uid, repeats=3)  # held: three frames each
            reader.corrupt()
            reader.tap(card_uid(5000))  # not on the roster
            await until(lambda: len(signin_events(rec)) >= 41, 15, "41 sign-ins")
            await asyncio.sleep(0.5)
            events = signin_events(rec)
            assert len(events) == 41  # once each, despite the repeats
            # STANDARD §5: no names on the shared bus unless `signins.publish_names` is set.
            assert all("attendee" not in e for e in events)
            assert [e["known"] for e in events] == [True] * 40 + [False]
            assert [e["attendees"] for e in events] == list(range(1, 42))
            assert all(0 < e["latency_ms"] < 1000 for e in events)
            assert not any("uid" in e or card_uid(0) in str(e) for e in events)
            meeting = events[0]["meeting"]
            rows = daemon.store.signins(meeting)
            assert len(rows) == 41 and all(r.attendee is None for r in rows)
            assert all(r.latency > 0 for r in rows)
            room = await rec.wait_for(
                lambda m: m.topic == f"{BASE}/r301/state" and m.json().get("attendees") == 41
            )
            assert room
            state = await rec.wait_for(
                lambda m: (
                    m.topic == f"{BASE}/r301/reader/state"
                    and m.json()["readings"]["bad_frames"] >= 1
                )
            )
            assert state
            assert reader.received.count(b"\a") == 41  # each sign-in acknowledged to the reader
            assert daemon.metrics.signin_latency.collect()[0].samples  # histogram exported
        # The database never holds a raw UID, in any form the reader sent it.
        db = (tmp_path / "state" / "state.db").read_bytes()
        wal = tmp_path / "state" / "state.db-wal"
        blob = db + (wal.read_bytes() if wal.exists() else b"")
        for uid, name in ROSTER[:40]:
            assert uid.encode() not in blob and uid.lower().encode() not in blob
            assert str(int(uid, 16)).encode() not in blob
            assert name.encode() not in blob  # names stay in the roster
        # Private whatever the umask (this test runs under 0022): dir 0700, files 0600.
        state = tmp_path / "state"
        assert state.stat().st_mode & 0o777 == 0o700
        for f in state.rglob("*"):
            assert f.stat().st_mode & 0o777 == (0o700 if f.is_dir() else 0o600), f
        # The organiser's export.
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "roomd",
                "signins",
                "export",
                "--meeting",
                meeting,
                "-c",
                str(cfg),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        rows_csv = list(csv.DictReader(io.StringIO(out.stdout)))
        assert [r["attendee"] for r in rows_csv[:3]] == [
            "Attendee 000",
            "Attendee 001",
            "Attendee 002",
        ]
        assert rows_csv[40]["attendee"] == "unknown" and len(rows_csv) == 41
        missing = subprocess.run(
            [
                sys.executable,
                "-m",
                "roomd",
                "signins",
                "export",
                "--meeting",
                "nope",
                "-c",
                str(cfg),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert missing.returncode == 1 and "no sign-ins for meeting 'nope'" in missing.stderr
    finally:
        reader.unplug()


async def test_unplugged_reader_alerts_and_recovers(
    tmp_path: Path, mosquitto: Mosquitto, recorder_factory: Any
) -> None:
    reader = ReaderSim(tmp_path / "reader0", framing="line").plug()
    cfg = config(tmp_path, mosquitto, reader)
    rec = recorder_factory(mosquitto.port, topic="roomd/#")
    topic = f"{BASE}/r301/alerts/r301.reader.online.min"
    try:
        async with running(cfg) as daemon:
            await until(lambda: daemon.pollers[("r301", "reader")].online is True, 5, "reader")
            reader.tap(card_uid(1))
            await until(lambda: len(signin_events(rec)) == 1, 5, "a sign-in")
            reader.unplug()
            alert = (await rec.wait_for(lambda m: m.topic == topic and m.payload))[0].json()
            assert alert["severity"] == "II"
            reader.plug()
            await rec.wait_for(lambda m: m.topic == topic and m.payload == b"", timeout=15)
            reader.tap(card_uid(2))
            await until(lambda: len(signin_events(rec)) == 2, 5, "a sign-in after replug")
    finally:
        reader.unplug()


async def test_over_capacity_alert_raised_and_cleared(
    tmp_path: Path, mosquitto: Mosquitto, recorder_factory: Any
) -> None:
    reader = ReaderSim(tmp_path / "reader0").plug()
    cfg = config(tmp_path, mosquitto, reader, area=6)  # 6 m²: 4 people at 1.5 m² each
    rec = recorder_factory(mosquitto.port, topic="roomd/#")
    topic = f"{BASE}/r301/alerts/r301._room.area_per_person_m2.min"
    try:
        async with running(cfg) as daemon:
            await until(lambda: daemon.pollers[("r301", "reader")].online is True, 5, "reader")
            for i in range(5):
                reader.tap(card_uid(i))
            alert = (await rec.wait_for(lambda m: m.topic == topic and m.payload))[0].json()
            assert alert["severity"] == "III" and alert["value"] == 1.2
            assert alert["message"] == "Floor area per person 1.2 m² below 1.5 m²"
            # A new day's meeting starts empty: the rule no longer applies.
            daemon.attendance.cards.clear()
            daemon.signins.room_readings(daemon.config.rooms[0], "r301-next")
            await rec.wait_for(lambda m: m.topic == topic and m.payload == b"")
    finally:
        reader.unplug()


async def test_records_past_retention_are_purged(tmp_path: Path, mosquitto: Mosquitto) -> None:
    reader = ReaderSim(tmp_path / "reader0").plug()
    cfg = config(tmp_path, mosquitto, reader)
    clock = FakeClock(start=1_790_000_000)
    daemon = Daemon(load_config(cfg), clock=clock)
    task = asyncio.create_task(daemon.run())
    try:
        await until(
            lambda: (
                daemon.pollers.get(("r301", "reader")) is not None
                and daemon.pollers[("r301", "reader")].online is True
            ),
            5,
            "reader",
        )
        reader.tap(card_uid(1))
        await until(lambda: bool(daemon.store.signins(daemon.current_meeting("r301"))), 5, "record")
        old_meeting = daemon.current_meeting("r301")
        clock.advance(730 * 86400 - 60)  # just inside two years: kept
        assert daemon.purge_signins() == 0
        clock.advance(120)  # past two years: destroyed
        assert daemon.purge_signins() == 1
        assert daemon.store.signins(old_meeting) == []
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 10)
        reader.unplug()


async def test_latency_limits_raise_alerts(
    tmp_path: Path, mosquitto: Mosquitto, recorder_factory: Any
) -> None:
    reader = ReaderSim(tmp_path / "reader0").plug()
    cfg = config(tmp_path, mosquitto, reader)
    data = yaml.safe_load(cfg.read_text())
    # Limits no real sign-in can meet, to see both rules fire: per sign-in, and a meeting's p95.
    data["signins"] = {"min_for_p95": 3}
    data["rooms"][0]["thresholds"] = {
        "signin_latency_s": {"max": 1e-9},
        "signin_latency_p95_seconds": {"max": 1e-9},
    }
    write_config(cfg, data)
    rec = recorder_factory(mosquitto.port, topic="roomd/#")
    each = f"{BASE}/r301/alerts/r301._room.signin_latency_s.max"
    p95 = f"{BASE}/r301/alerts/r301._room.signin_latency_p95_seconds.max"
    try:
        async with running(cfg) as daemon:
            await until(lambda: daemon.pollers[("r301", "reader")].online is True, 5, "reader")
            reader.tap(card_uid(1))
            slow = (await rec.wait_for(lambda m: m.topic == each and m.payload))[0].json()
            assert slow["severity"] == "III" and slow["unit"] == "s"
            assert not rec.matching(lambda m: m.topic == p95 and m.payload)  # 1 < min_for_p95
            reader.tap(card_uid(2))
            reader.tap(card_uid(3))
            worst = (await rec.wait_for(lambda m: m.topic == p95 and m.payload))[0].json()
            assert worst["severity"] == "IV" and worst["value"] > 0
    finally:
        reader.unplug()
