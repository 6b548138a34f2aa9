"""A meeting day on a simulated clock: bookings from an .ics file (a recurring meeting with a
moved occurrence, an important meeting), the three-level check, grades during the meeting,
no-show, shutdown, usage records and the sealed room; failover to a backup projector; bookings
pushed over MQTT; `roomd check` and `roomd report usage`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from roomd.daemon.clock import FakeClock
from roomd.daemon.config import load_config
from roomd.daemon.supervisor import Daemon
from roomd.simulators.modbus import ModbusTcpSim, SimSensor
from roomd.simulators.nfc import ReaderSim, card_uid
from roomd.simulators.pjlink import PJLinkSim, ProjectorState
from tests.conftest import Mosquitto, Recorder, until, write_config
from tests.integration.test_daemon import BASE, NORMAL, site

DAY = datetime(2026, 11, 23, tzinfo=UTC).timestamp()
HOUR = 3600.0

ICS = """BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//roomd//tests//EN
BEGIN:VEVENT
UID:standup
DTSTART:20261123T090000Z
DTEND:20261123T093000Z
RRULE:FREQ=DAILY;COUNT=3
EXDATE:20261125T090000Z
SUMMARY:Standup
ORGANIZER;CN=Ann Lee:mailto:ann@example.org
END:VEVENT
BEGIN:VEVENT
UID:standup
RECURRENCE-ID:20261123T090000Z
DTSTART:20261123T100000Z
DTEND:20261123T103000Z
SUMMARY:Standup (moved to 10:00)
END:VEVENT
BEGIN:VEVENT
UID:board
DTSTART:20261123T130000Z
DTEND:20261123T150000Z
SUMMARY:Board meeting
CATEGORIES:important
ORGANIZER;CN=The Clerk:mailto:clerk@example.org
ATTENDEE:mailto:a@example.org
ATTENDEE:mailto:b@example.org
ATTENDEE:mailto:c@example.org
END:VEVENT
END:VCALENDAR
"""
STANDUP = "standup@2026-11-23T09:00:00Z"


@asynccontextmanager
async def daemon_at(cfg_path: Path, clock: FakeClock) -> AsyncIterator[Daemon]:
    daemon = Daemon(load_config(cfg_path), clock=clock)
    task = asyncio.create_task(daemon.run())
    await asyncio.wait_for(daemon.ready.wait(), 5)
    assert await daemon.mqtt.wait_connected(10)
    try:
        yield daemon
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 20)


async def at(daemon: Daemon, clock: FakeClock, hours: float) -> None:
    """Move the clock to DAY + hours, let the planner act, and wait for what it started."""
    clock.advance(DAY + hours * HOUR - clock.time())
    daemon.meetings.tick()
    await asyncio.sleep(0)
    await daemon.meetings.idle()


def checks(rec: Recorder) -> list[dict[str, Any]]:
    out = []
    for m in rec.on(f"{BASE}/r301/events"):
        data = m.json()
        if data.get("type") == "check":
            out.append(data)
    return out


def events(rec: Recorder, kind: str) -> list[dict[str, Any]]:
    return [m.json() for m in rec.on(f"{BASE}/r301/events") if m.json().get("type") == kind]


def alert(rec: Recorder, alert_id: str) -> dict[str, Any] | None:
    msgs = rec.on(f"{BASE}/r301/alerts/{alert_id}")
    if not msgs or not msgs[-1].payload:
        return None
    data: dict[str, Any] = json.loads(msgs[-1].payload)
    return data


def projector(sim: PJLinkSim, dev_id: str, **kw: Any) -> dict[str, Any]:
    return {
        "id": dev_id,
        "driver": "pjlink",
        "model": "roomd-simulator",
        "host": sim.address,
        "poll": "500ms",
        "timeout": "1s",
        **kw,
    }


async def test_a_meeting_day_from_an_ics_file(
    tmp_path: Path, mosquitto: Mosquitto, recorder_factory: Any
) -> None:
    env = SimSensor.of("generic-iaq", **NORMAL)
    env_sim = await ModbusTcpSim([env]).start()
    proj = await PJLinkSim(ProjectorState(warmup=0.3, cooldown=0.3)).start()
    reader = ReaderSim(tmp_path / "reader").plug()
    ics = tmp_path / "r301.ics"
    ics.write_text(ICS)
    data = site(
        tmp_path,
        mosquitto,
        [
            {
                "id": "env",
                "driver": "modbus",
                "model": "generic-iaq",
                "host": env_sim.address,
                "poll": "200ms",
            },
            projector(proj, "proj"),
            {"id": "reader", "driver": "nfc-serial", "port": str(reader.path)},
        ],
        thresholds={"co2_ppm": {"hold": "0s"}},
    )
    data["rooms"][0]["calendar"] = str(ics)
    data["meetings"] = {"prewarm": "15m"}
    cfg = write_config(tmp_path / "roomd.yaml", data)
    rec = recorder_factory(mosquitto.port)
    clock = FakeClock(DAY + 6 * HOUR)
    try:
        async with daemon_at(cfg, clock) as d:
            await until(lambda: all(p.online for p in d.pollers.values()), 10, "devices online")
            await d.meetings.refresh()
            titles = [b.title for b in d.meetings.rooms["r301"].all()]
            assert titles[:3] == ["Standup (moved to 10:00)", "Board meeting", "Standup"]
            assert len(titles) == 3  # 25th excluded by EXDATE; the expansion ends with day 2

            # 06:00: the important 13:00 meeting is within a day: its inspection runs now.
            await at(d, clock, 6)
            await until(lambda: len(checks(rec)) == 1, 5, "inspection report")
            inspection = checks(rec)[0]
            assert inspection["level"] == 0 and inspection["meeting"]["id"] == "board"
            assert inspection["passed"], inspection["failed"]
            items = {(i["device"], i["item"]) for i in inspection["items"]}
            assert {("proj", "power-on test"), ("reader", "answers"), ("env", "CO2")} <= items
            assert ("proj", "restored to standby") in items  # 7 h to go: switched off again
            # The moved standup (10:00) comes first: the seal begins when it ends.
            assert d.meetings.sealed("r301", clock.time()) is None

            # 07:59 nothing; 08:00 level 1, 09:00 level 2 of the moved standup.
            await at(d, clock, 7.99)
            assert len(checks(rec)) == 1
            await at(d, clock, 8)
            await at(d, clock, 9)
            await until(lambda: len(checks(rec)) == 3, 5, "levels 1 and 2")
            l1, l2 = checks(rec)[1:]
            assert (l1["level"], l2["level"]) == (1, 2)
            assert (
                l1["meeting"]["id"] == STANDUP and l1["meeting"]["start"] == "2026-11-23T10:00:00Z"
            )
            assert l1["passed"] and l2["passed"]
            latest = rec.on(f"{BASE}/r301/checks/latest")[-1]
            assert latest.retain or latest.json()["level"] == 2

            # 09:25 the lamp fails; the 09:30 level-3 check fails: grade I "room not ready".
            proj.state.faults.add("lamp")
            await until(lambda: alert(rec, "r301.proj.projector_error_lamp.error") is not None, 10,
                        "lamp alert")  # fmt: skip
            await at(d, clock, 9.5)
            await until(lambda: len(checks(rec)) == 4, 5, "level 3")
            l3 = checks(rec)[3]
            assert l3["level"] == 3 and not l3["passed"]
            assert any("grade III or worse" in f for f in l3["failed"])
            await until(lambda: alert(rec, "r301._room.room_ready.not_ready_final") is not None, 5,
                        "not-ready alert")  # fmt: skip
            not_ready = alert(rec, "r301._room.room_ready.not_ready_final")
            assert not_ready is not None and not_ready["severity"] == "I"
            assert "level 3" in not_ready["message"] and "lamp" in json.dumps(l3["items"])
            assert proj.state.power == "on"  # 30 min to go: the test leaves it on

            # Repaired; a technician's on-demand check passes and clears "not ready".
            proj.state.faults.clear()
            await until(lambda: alert(rec, "r301.proj.projector_error_lamp.error") is None, 10,
                        "lamp repaired")  # fmt: skip
            again = await d.check_room("r301", None)
            assert again["level"] == 3 and again["passed"], again["failed"]
            assert any(i["item"].startswith("findings of level 3") for i in again["items"])
            await until(lambda: alert(rec, "r301._room.room_ready.not_ready_final") is None, 5,
                        "not-ready cleared")  # fmt: skip

            # 09:45 pre-warm: someone switched the projector off; roomd powers it on again.
            proj.state.set_power(False)
            await until(lambda: d.pollers[("r301", "proj")].readings.get("projector_power")
                        == "off", 10, "projector off")  # fmt: skip
            await at(d, clock, 9.75)
            await until(lambda: len(events(rec, "prewarm")) == 1, 5, "prewarm")
            warm = events(rec, "prewarm")[0]
            assert warm["meeting"] == STANDUP and warm["failed"] == []
            assert warm["done"] == ["proj: projector powering on"]
            assert proj.state.power in ("warming", "on")
            await until(lambda: d.pollers[("r301", "proj")].readings.get("projector_power")
                        == "on", 10, "projector on")  # fmt: skip

            # 10:00 the meeting runs: a fault is one grade more severe (CO2: III → II).
            await at(d, clock, 10)
            assert "r301" in d.book.meeting_rooms and "r301" not in d.book.idle_rooms
            env.set(co2_ppm=1500)
            await until(lambda: alert(rec, "r301.env.co2_ppm.max") is not None, 10, "co2 alert")
            co2 = alert(rec, "r301.env.co2_ppm.max")
            assert co2 is not None and co2["severity"] == "II"
            assert co2["graded_up_for_meeting"] == "III"
            env.set(co2_ppm=600)
            await until(lambda: d.pollers[("r301", "env")].readings["co2_ppm"] == 600, 5, "co2")

            # 10:10 nobody has signed in: no-show.
            await at(d, clock, 10 + 11 / 60)
            await until(lambda: len(events(rec, "no_show")) == 1, 5, "no-show")
            assert events(rec, "no_show")[0]["meeting"] == STANDUP

            # 10:30 the end: usage records; 10:40 (grace) shutdown.
            await at(d, clock, 10.5)
            await until(lambda: len(events(rec, "usage")) == 1, 5, "usage event")
            rows = d.store.usage()
            assert {r.device for r in rows} == {"env", "proj", "reader"}
            proj_row = next(r for r in rows if r.device == "proj")
            assert proj_row.alerts == 0 and proj_row.meeting == STANDUP
            env_row = next(r for r in rows if r.device == "env")
            assert env_row.alerts == 1 and "CO2" in env_row.anomalies[0]
            await at(d, clock, 10 + 40 / 60)
            await until(lambda: len(events(rec, "shutdown")) == 1, 10, "shutdown")
            shutdown = events(rec, "shutdown")[0]
            assert "proj: projector powered off" in shutdown["done"]
            assert any(s.startswith("env: climate set") for s in shutdown["done"])
            assert shutdown["failed"] == []
            assert env.written[0x0100] == 260  # 26.0 °C unoccupied setpoint
            await until(lambda: proj.state.power in ("cooling", "off"), 5, "projector off")

            # 11:00: level 1 of the board meeting; the room is sealed: a card read is reported.
            await until(lambda: alert(rec, "r301.env.co2_ppm.max") is None, 10, "co2 clear")
            await at(d, clock, 11)
            await until(lambda: len(checks(rec)) == 6, 10, "board level 1")
            reader.tap(card_uid(7))
            await until(lambda: len(events(rec, "seal_breach")) == 1, 10, "seal breach")
            assert alert(rec, "r301._room.room_sealed.breached") is not None
            board_l1 = checks(rec)[5]
            assert board_l1["passed"], [i for i in board_l1["items"] if not i["passed"]]
            await at(d, clock, 12)
            await at(d, clock, 12.5)
            # 13:00 the meeting starts: the seal ends and its alert clears.
            await at(d, clock, 13)
            await until(lambda: alert(rec, "r301._room.room_sealed.breached") is None, 5,
                        "seal lifted")  # fmt: skip
            stored = d.store.checks("r301")
            assert [c["level"] for c in stored] == [0, 1, 2, 3, 3, 1, 2, 3]
        saved = sorted((tmp_path / "state" / "checks" / "r301").glob("*.html"))
        assert len(saved) == 8
        not_ready = [p.name for p in saved if "NOT READY" in p.read_text()]
        assert not_ready == ["2026-11-23T093000-L3.html"]

        # The usage report, from the store, as a technician would print it.
        out = subprocess.run(
            [sys.executable, "-m", "roomd", "report", "usage", "-c", str(cfg), "--format", "csv",
             "--since", "2026-11-23"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        lines = out.stdout.strip().splitlines()
        assert lines[0].startswith("meeting,room,device,driver,start,end,online_min")
        assert len(lines) == 4 and all(STANDUP in line for line in lines[1:])
    finally:
        await env_sim.stop()
        await proj.stop()
        reader.unplug()


async def test_failover_to_the_backup_projector_and_no_switch_back(
    tmp_path: Path, mosquitto: Mosquitto, recorder_factory: Any
) -> None:
    main = await PJLinkSim(ProjectorState(warmup=0.3, cooldown=0.3, power="on", input="32")).start()
    spare = await PJLinkSim(ProjectorState(warmup=0.3, cooldown=0.3)).start()
    data = site(
        tmp_path,
        mosquitto,
        [projector(main, "proj", backup="spare"), projector(spare, "spare")],
        thresholds={},
    )
    cfg = write_config(tmp_path / "roomd.yaml", data)
    rec = recorder_factory(mosquitto.port)
    clock = FakeClock(DAY + 10 * HOUR + 60)
    try:
        async with daemon_at(cfg, clock) as d:
            rec.publish(
                f"{BASE}/r301/bookings",
                [{"id": "m1", "start": "2026-11-23T10:00:00Z", "end": "2026-11-23T11:00:00Z",
                  "title": "Review", "organiser": "Ann", "attendees": 8, "class": "large"}],
                retain=True,  # as booking systems do (contract): the daemon may subscribe later
            )  # fmt: skip
            await until(lambda: d.meetings.current("r301") is not None, 10, "bookings pushed")
            await until(lambda: all(p.online for p in d.pollers.values()), 10, "online")
            d.meetings.tick()
            main.state.faults.add("silent")  # the main projector stops answering mid-meeting
            await until(lambda: len(events(rec, "failover")) == 1, 20, "failover")
            event = events(rec, "failover")[0]
            assert event["primary"] == "proj" and event["backup"] == "spare" and event["ok"], event[
                "detail"
            ]
            assert "input hdmi2 selected" in event["detail"]
            await until(lambda: spare.state.power in ("warming", "on"), 5, "spare on")
            assert spare.state.input == "32"
            offline = alert(rec, "r301.proj.online.min")
            assert offline is not None and offline["severity"] == "I"  # II, one up in a meeting
            assert offline["failover"]["backup"] == "spare"
            # The primary recovers: no switch back during the meeting, no second failover.
            main.state.faults.discard("silent")
            await until(lambda: alert(rec, "r301.proj.online.min") is None, 30, "primary back")
            main.state.faults.add("silent")
            await until(lambda: alert(rec, "r301.proj.online.min") is not None, 20, "again")
            await asyncio.sleep(0.5)
            assert len(events(rec, "failover")) == 1
            assert spare.state.power in ("warming", "on")

            # A malformed bookings message: an alert naming the problem; the last good ones stay.
            rec.publish(f"{BASE}/r301/bookings", b'[{"id": "x", "start": "soon"}]', retain=True)
            await until(lambda: alert(rec, "r301._room.bookings.error") is not None, 10,
                        "bookings alert")  # fmt: skip
            bad = alert(rec, "r301._room.bookings.error")
            assert bad is not None and "[0].start" in bad["message"]
            assert d.meetings.current("r301") is not None
    finally:
        main.state.faults.discard("silent")
        await main.stop()
        await spare.stop()


async def test_a_failed_microphone_channel_fails_over_to_its_backup_channel(
    tmp_path: Path, mosquitto: Mosquitto, recorder_factory: Any
) -> None:
    from roomd.simulators.mixer import CALIBRATION_DB, MixerSim, RoomAudio, RtpAudioSource
    from roomd.simulators.site import _free_port

    desk = MixerSim("x32", room=RoomAudio(talking=True))
    desk.params["/ch/05/mix/on"] = 0  # the spare microphone waits muted
    await desk.start()
    port = _free_port(udp=True)
    source = RtpAudioSource(desk.room, ("127.0.0.1", port))
    await source.start()
    data = site(
        tmp_path,
        mosquitto,
        [{"id": "mixer", "driver": "x32", "host": f"127.0.0.1:{desk.port}", "channels": [1, 2],
          "backup_channels": {1: 5}},
         {"id": "mic", "driver": "audio-probe", "listen": f"127.0.0.1:{port}",
          "calibration_db": CALIBRATION_DB}],
        thresholds={},
    )  # fmt: skip
    cfg = write_config(tmp_path / "roomd.yaml", data)
    rec = recorder_factory(mosquitto.port)
    clock = FakeClock(DAY + 10 * HOUR + 60)
    try:
        async with daemon_at(cfg, clock) as d:
            rec.publish(
                f"{BASE}/r301/bookings",
                [{"id": "m1", "start": "2026-11-23T10:00:00Z", "end": "2026-11-23T11:00:00Z"}],
                retain=True,
            )
            await until(lambda: d.meetings.current("r301") is not None, 10, "bookings pushed")
            d.meetings.tick()
            desk.params["/ch/01/mix/on"] = 0  # the lectern microphone drops out (muted)
            desk._set("/ch/01/mix/on", 0, None)  # pushed to the daemon over /xremote
            mixer = d.pollers[("r301", "mixer")]
            await until(lambda: mixer.readings.get("ch01_mute") == "on", 10, "mute seen")
            clock.advance(3)  # past the profile's 2 s hold
            await until(lambda: len(events(rec, "failover")) == 1, 10, "channel failover")
            event = events(rec, "failover")[0]
            assert event["backup"] == "mixer:ch05" and event["ok"], event
            assert desk.params["/ch/05/mix/on"] == 1
            muted = alert(rec, "r301.mixer.ch01_mute.on")
            assert muted is not None and muted["severity"] == "II"  # III, one up in a meeting
            assert muted["failover"]["backup"] == "mixer:ch05"
            # A check during the meeting does not play a test tone into it.
            report = await d.check_room("r301", None)
            sound = [i for i in report["items"] if i["item"].startswith("sound check")]
            assert [i["measured"] for i in sound] == ["skipped: a meeting is in progress"]
            assert "/config/osc/level" not in desk.log  # the oscillator was never set up
    finally:
        await source.stop()
        await desk.stop()


async def test_failover_across_makes_selects_the_same_input_by_name(
    tmp_path: Path, mosquitto: Mosquitto, recorder_factory: Any
) -> None:
    """The primary (PJLink) shows HDMI 1 = "31"; the backup is an Epson on RS-232, where HDMI 1
    is SOURCE 30. The code "31" used to go across unchanged, selecting nothing right."""
    from roomd.simulators.escvp21 import EscVp21Sim, EscVp21State

    main = await PJLinkSim(ProjectorState(warmup=0.3, cooldown=0.3, power="on", input="31")).start()
    spare = EscVp21Sim(EscVp21State(warmup=0.3, cooldown=0.3, source="11")).start()
    backup = {"id": "spare", "driver": "serial-projector", "port": spare.path, "poll": "500ms",
              "timeout": "1s"}  # fmt: skip
    data = site(tmp_path, mosquitto, [projector(main, "proj", backup="spare"), backup], {})
    cfg = write_config(tmp_path / "roomd.yaml", data)
    rec = recorder_factory(mosquitto.port)
    clock = FakeClock(DAY + 10 * HOUR + 60)
    try:
        async with daemon_at(cfg, clock) as d:
            rec.publish(
                f"{BASE}/r301/bookings",
                [{"id": "m1", "start": "2026-11-23T10:00:00Z", "end": "2026-11-23T11:00:00Z"}],
                retain=True,
            )
            await until(lambda: d.meetings.current("r301") is not None, 10, "bookings pushed")
            await until(lambda: all(p.online for p in d.pollers.values()), 10, "online")
            assert d.pollers[("r301", "proj")].readings["input_name"] == "hdmi1"
            main.state.faults.add("silent")
            await until(lambda: len(events(rec, "failover")) == 1, 20, "failover")
            event = events(rec, "failover")[0]
            assert event["ok"] and "input hdmi1 selected" in event["detail"], event
            assert spare.state.source == "30"  # Epson's HDMI 1
    finally:
        main.state.faults.discard("silent")
        rec.publish(f"{BASE}/r301/bookings", b"", retain=True)
        await main.stop()
        spare.stop()
