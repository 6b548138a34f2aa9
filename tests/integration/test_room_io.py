"""Lights, blinds, doors and windows through a Modbus digital I/O module, over a meeting day on a
fake clock: lights on for the check (and the illuminance then measured), lights off and blinds up
after the meeting, a window left open after it, and a door opened in a sealed room."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from roomd.daemon.clock import FakeClock
from roomd.simulators.modbus import ModbusTcpSim, SimSensor
from tests.conftest import Mosquitto, until, write_config
from tests.integration.test_daemon import site
from tests.integration.test_meetings import DAY, HOUR, alert, at, checks, daemon_at, events

BOOKINGS = [
    {"id": "m1", "start": "2026-11-23T10:00:00Z", "end": "2026-11-23T11:00:00Z",
     "title": "Review", "class": "small"},
    {"id": "board", "start": "2026-11-23T16:00:00Z", "end": "2026-11-23T17:00:00Z",
     "title": "Board", "class": "large"},
]  # fmt: skip


async def test_lights_blinds_doors_and_windows_over_a_meeting_day(
    tmp_path: Path, mosquitto: Mosquitto, recorder_factory: Any
) -> None:
    io = SimSensor.of("io-8di-8do-room")
    lux = SimSensor.of("rs485-lux", unit=2)
    # The lux sensor sees the lights the I/O module switches: 80 lx of daylight, 650 lit.
    lux.source = lambda metric: 650.0 if io.coils.get(0) else 80.0
    sim = await ModbusTcpSim([io, lux]).start()
    fast = {"hold": "0s"}
    devices = [
        {"id": "io", "driver": "modbus", "model": "io-8di-8do-room", "host": sim.address,
         "poll": "100ms"},
        {"id": "lux", "driver": "modbus", "model": "rs485-lux", "host": sim.address,
         "unit": 2, "poll": "100ms"},
    ]  # fmt: skip
    data = site(tmp_path, mosquitto, devices, {"window": fast, "illuminance_lux": fast})
    cfg = write_config(tmp_path / "roomd.yaml", data)
    rec = recorder_factory(mosquitto.port)
    clock = FakeClock(DAY + 7 * HOUR)
    try:
        async with daemon_at(cfg, clock) as d:
            rec.publish(f"{d.mqtt.base}/r301/bookings", BOOKINGS, retain=True)
            await until(lambda: d.meetings.next_booking("r301", clock.time()) is not None, 10,
                        "bookings")  # fmt: skip
            await until(lambda: all(p.online for p in d.pollers.values()), 10, "online")
            assert d.pollers[("r301", "lux")].readings["illuminance_lux"] == 80

            # 07:00 the board meeting's inspection (the day before, or as soon as known): it
            # switches the lights on and judges the lit room, then switches them off again.
            await at(d, clock, 7)
            await until(lambda: len(checks(rec)) == 1, 10, "inspection")
            report = checks(rec)[0]
            assert report["level"] == 0 and report["meeting"]["id"] == "board"
            items = {(i["device"], i["item"]): i for i in report["items"]}
            assert items[("io", "prepare")]["measured"] == "lights on"
            assert items[("lux", "Illuminance")]["measured"] == "650 lx"
            assert items[("io", "Window left open")]["measured"] == "closed"
            assert items[("io", "restored after the check")]["measured"] == "lights off"
            assert report["passed"], report["failed"]
            assert io.coils[0] is False
            assert not [a for a in d.book.active if a.startswith("r301.io.")]
            # Another meeting comes first: the seal waits for its end.
            assert d.meetings.sealed("r301", clock.time()) is None

            # In the meeting an open window is nobody's business.
            await at(d, clock, 10.5)
            io.set_bits(window="open")
            await until(lambda: d.pollers[("r301", "io")].readings["window"] == "open", 5, "open")
            await until(lambda: d.pollers[("r301", "io")].polls > 20, 5, "a few polls")
            assert "r301.io.window.open" not in d.book.active

            # 11:00 the end; after the grace, lights off and blinds up.
            await at(d, clock, 11)
            await at(d, clock, 11.25)
            await until(lambda: len(events(rec, "shutdown")) == 1, 10, "shutdown")
            shutdown = events(rec, "shutdown")[0]
            assert shutdown["done"] == ["io: lights off, blinds up"], shutdown
            assert io.coils[0] is False and io.coils[1] is True
            # ... and the window left open is now an alert (grade III).
            await until(lambda: alert(rec, "r301.io.window.open") is not None, 10, "window")
            window = alert(rec, "r301.io.window.open")
            assert window is not None and window["severity"] == "III"
            # The room is sealed from the end of the earlier meeting, but a window open then is
            # the "left open" alert's business, not a breach.
            await at(d, clock, 11.5)
            assert d.meetings.sealed("r301", clock.time()) is not None
            assert not events(rec, "seal_breach")
            io.set_bits(window="closed")
            await until(lambda: alert(rec, "r301.io.window.open") is None, 10, "window closed")

            # 13:30 the large meeting's inspection seals the room; a door opening breaks it.
            await at(d, clock, 13.5)
            await until(lambda: d.meetings.sealed("r301", clock.time()) is not None, 10, "seal")
            io.set_bits(door="open")
            await until(lambda: d.pollers[("r301", "io")].readings["door"] == "open", 5, "door")
            await at(d, clock, 13.6)
            await until(lambda: len(events(rec, "seal_breach")) == 1, 10, "seal breach")
            breach = events(rec, "seal_breach")[0]
            assert breach["contact"] == "door" and breach["meeting"] == "board"
            assert alert(rec, "r301._room.room_sealed.breached") is not None
            await at(d, clock, 13.7)  # still open: one breach, not one a second
            assert len(events(rec, "seal_breach")) == 1
    finally:
        await sim.stop()
