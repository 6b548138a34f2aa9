"""KNX/IP: the driver through Debian's knxd (a KNXnet/IP tunnelling server on 127.0.0.1, its bus
a dummy, no multicast routing) to a switch actuator and contacts played by a second xknx tunnel
client; then roomd's own gateway simulator (one tunnel only) and a room on it in the daemon."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from xknx import XKNX
from xknx.dpt import DPTBinary, DPTLux
from xknx.io import ConnectionConfig, ConnectionType
from xknx.telegram import GroupAddress, Telegram
from xknx.telegram.apci import GroupValueRead, GroupValueResponse, GroupValueWrite

from roomd.daemon.clock import FakeClock
from roomd.drivers.base import DeviceUnreachable, DriverContext
from roomd.drivers.knx import KnxConfig, KnxDriver
from roomd.simulators.knx import ROOM_ADDRESSES, KnxGatewaySim
from roomd.simulators.site import _free_port
from tests.conftest import Mosquitto, until, write_config
from tests.integration.test_daemon import site
from tests.integration.test_meetings import DAY, HOUR, at, checks, daemon_at, events


def tunnel(port: int) -> ConnectionConfig:
    return ConnectionConfig(
        connection_type=ConnectionType.TUNNELING,
        gateway_ip="127.0.0.1",
        gateway_port=port,
        local_ip="127.0.0.1",
        auto_reconnect=False,
    )


@pytest.fixture
def knxd(tmp_path: Path) -> Iterator[int]:
    binary = shutil.which("knxd") or "/usr/bin/knxd"
    if not Path(binary).exists():
        pytest.fail("knxd is not installed: run ./scripts/test, which installs it")
    port = _free_port(udp=True)
    ini = tmp_path / "knxd.ini"
    # Tunnelling only: no `router` (multicast routing) and no discovery, so nothing is sent to
    # 224.0.23.12; bound to the loopback interface. The bus behind it is a dummy.
    ini.write_text(
        "[main]\naddr = 0.0.1\nclient-addrs = 0.0.2:8\nconnections = server,bus\n"
        f"[server]\nserver = ets_router\ntunnel = tunnel\ninterface = lo\nport = {port}\n"
        "discover = false\n[bus]\ndriver = dummy\n"
    )
    with open(tmp_path / "knxd.log", "wb") as log:
        proc = subprocess.Popen([binary, str(ini)], stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not udp_bound(port):
        time.sleep(0.05)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def udp_bound(port: int) -> bool:
    """Some process has a UDP socket on this port (knxd is listening)."""
    with open("/proc/net/udp", encoding="ascii") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return any(int(row[1].rpartition(":")[2], 16) == port for row in rows if len(row) > 1)


class Actuator:
    """The room's KNX devices on the bus: a lights channel with its status object, contacts and
    a lux sensor, answering reads, as installed devices do (an xknx tunnel client)."""

    def __init__(self, port: int) -> None:
        self.objects: dict[str, Any] = {
            "1/0/2": DPTBinary(0), "1/2/1": DPTBinary(0), "1/2/2": DPTBinary(0),
            "1/3/1": DPTLux.to_knx(80),
        }  # fmt: skip
        self.writes: list[str] = []
        self.xknx = XKNX(connection_config=tunnel(port), telegram_received_cb=self._telegram)

    def _telegram(self, telegram: Telegram) -> None:
        address = str(telegram.destination_address)
        if isinstance(telegram.payload, GroupValueRead) and address in self.objects:
            self.send(address, GroupValueResponse(self.objects[address]))
        elif isinstance(telegram.payload, GroupValueWrite) and address == "1/0/1":
            value = telegram.payload.value
            self.writes.append(f"lights {value.value}")
            self.objects["1/0/2"] = value
            self.send("1/0/2", GroupValueWrite(value))
            lux = DPTLux.to_knx(650 if value.value else 80)
            self.objects["1/3/1"] = lux
            self.send("1/3/1", GroupValueWrite(lux))

    def send(self, address: str, payload: Any) -> None:
        self.xknx.telegrams.put_nowait(
            Telegram(destination_address=GroupAddress(address), payload=payload)
        )

    def contact(self, address: str, is_open: bool) -> None:
        self.objects[address] = DPTBinary(int(is_open))
        self.send(address, GroupValueWrite(self.objects[address]))


@pytest.fixture
async def actuator(knxd: int) -> AsyncIterator[Actuator]:
    peer = Actuator(knxd)
    await peer.xknx.start()
    try:
        yield peer
    finally:
        await peer.xknx.stop()


def knx_driver(gateway: str, **kw: Any) -> KnxDriver:
    fields: dict[str, Any] = {"id": "knx", "driver": "knx", "gateway": gateway}
    fields |= {"local_ip": "127.0.0.1", "model": "knx-room", "addresses": ROOM_ADDRESSES}
    return KnxDriver(KnxConfig(**(fields | kw)), DriverContext())


async def test_through_knxd_to_the_rooms_devices(knxd: int, actuator: Actuator) -> None:
    addresses = {k: v for k, v in ROOM_ADDRESSES.items() if k in ("lights", "door", "window")}
    addresses["illuminance_lux"] = "1/3/1"
    d = knx_driver(f"127.0.0.1:{knxd}", addresses=addresses)
    pushed: list[dict[str, Any]] = []
    d.push = pushed.append
    try:
        got = await d.poll()
        assert got == {"lights": "off", "door": "closed", "window": "closed", "illuminance_lux": 80}
        # Lights on for the check: the write goes through knxd to the actuator, whose status
        # and the lux sensor's new value come back through knxd.
        assert await d.prepare_check() == "lights on"
        await until(lambda: d.values.get("illuminance_lux") == 650, 5, "lit room")
        assert actuator.writes == ["lights 1"] and d.values["lights"] == "on"
        # A window opens: its telegram reaches roomd between polls.
        actuator.contact("1/2/2", True)
        await until(lambda: {"window": "open"} in pushed, 5, "window telegram")
        # This room has no blinds on KNX: the shutdown does what the room has.
        assert await d.shutdown() == "lights off"
        await until(lambda: actuator.writes == ["lights 1", "lights 0"], 5, "lights off")
    finally:
        await d.close()


async def test_simulator_takes_one_tunnel_and_answers_reads() -> None:
    sim = await KnxGatewaySim().start()
    first, second = knx_driver(sim.address), knx_driver(sim.address)
    try:
        assert (await first.poll())["lights"] == "off"
        with pytest.raises(DeviceUnreachable, match="no KNX tunnel"):
            await second.poll()  # a second tunnel: E_NO_MORE_CONNECTIONS, as a 1-tunnel interface
        assert await first.act("lights_on") == "lights on"
        assert sim.lights_on and sim.writes == [("1/0/1", DPTBinary(1))]
        await until(lambda: first.values.get("illuminance_lux") == 650, 5, "lux follows")
    finally:
        await first.close()
        await second.close()
        await asyncio.sleep(0.1)
        sim.close()


def test_config_names_points_and_addresses() -> None:
    with pytest.raises(ValueError, match="'fan' is not a point of knx-room"):
        KnxConfig(id="k", driver="knx", gateway="127.0.0.1", model="knx-room",
                  addresses={"fan": "1/0/1"})  # fmt: skip
    with pytest.raises(ValueError, match="not a KNX group address"):
        KnxConfig(id="k", driver="knx", gateway="127.0.0.1", model="knx-room",
                  addresses={"lights": "1.0.1"})  # fmt: skip


async def test_a_knx_room_over_a_meeting_day(
    tmp_path: Path, mosquitto: Mosquitto, recorder_factory: Any
) -> None:
    sim = await KnxGatewaySim().start()
    device = {"id": "knx", "driver": "knx", "gateway": sim.address, "local_ip": "127.0.0.1",
              "model": "knx-room", "addresses": ROOM_ADDRESSES, "poll": "1s"}  # fmt: skip
    data = site(tmp_path, mosquitto, [device], {"window": {"hold": "0s"}})
    cfg = write_config(tmp_path / "roomd.yaml", data)
    rec = recorder_factory(mosquitto.port)
    clock = FakeClock(DAY + 7 * HOUR)
    try:
        async with daemon_at(cfg, clock) as d:
            rec.publish(f"{d.mqtt.base}/r301/bookings", [
                {"id": "m1", "start": "2026-11-23T09:00:00Z", "end": "2026-11-23T10:00:00Z",
                 "title": "Review", "class": "small"}], retain=True)  # fmt: skip
            await until(lambda: d.meetings.next_booking("r301", clock.time()) is not None, 10,
                        "bookings")  # fmt: skip
            await until(lambda: d.pollers[("r301", "knx")].online is True, 10, "online")
            await at(d, clock, 7)  # T-2h: level 1; lights on for it, and off again after
            await until(lambda: len(checks(rec)) == 1, 10, "level 1")
            items = {i["item"]: i for i in checks(rec)[0]["items"]}
            assert items["prepare"]["measured"] == "lights on"
            assert items["Illuminance"]["measured"] == "650 lx"
            assert items["restored after the check"]["measured"] == "lights off"
            assert not sim.lights_on
            await at(d, clock, 10.25)  # after the meeting and its grace: the shutdown
            await until(lambda: len(events(rec, "shutdown")) == 1, 10, "shutdown")
            assert events(rec, "shutdown")[0]["done"] == ["knx: lights off, blinds up"]
            sim.set_contact("1/2/2", True)  # a window left open in the vacant room
            await until(lambda: "r301.knx.window.open" in d.book.active, 10, "window alert")
    finally:
        sim.close()


def test_home_assistant_sees_contacts_and_switches_lights() -> None:
    """Room controllers get the door and window as binary sensors and the lights as a switch
    whose payloads are the driver's own command (KNX `act`, a Modbus coil `write`)."""
    from roomd.daemon.sinks.homeassistant import DeviceInfo, discovery_configs

    def info(device: str, commands: tuple[str, ...]) -> DeviceInfo:
        metrics = ("lights", "door", "window", "illuminance_lux")
        return DeviceInfo("r301", "City Hall 301", device, "", "x", "m", metrics, {}, commands)

    configs = discovery_configs(
        "homeassistant", "roomd/hq", "hq", {"r301": "City Hall 301"},
        [info("knx", ("act",)), info("io", ("write",))],
    )  # fmt: skip
    door = configs["homeassistant/binary_sensor/roomd_hq_r301_knx/door/config"]
    assert door["device_class"] == "door" and "== 'open'" in door["value_template"]
    knx = configs["homeassistant/switch/roomd_hq_r301_knx/lights/config"]
    assert json.loads(knx["payload_on"]) == {
        "command": "act", "args": {"action": "lights_on"}, "id": "ha"
    }  # fmt: skip
    assert knx["command_topic"] == "roomd/hq/r301/knx/cmd"
    io = configs["homeassistant/switch/roomd_hq_r301_io/lights/config"]
    assert json.loads(io["payload_off"])["args"] == {"register": "lights_off"}


async def test_telegrams_of_the_wrong_type_are_ignored() -> None:
    """A misconfigured device sending a 1-bit value to the lux sensor's address, or a lux value
    to a contact's: the reading keeps its last good value; nothing is taken for what it is not."""
    from xknx.dpt import DPTArray

    sim = await KnxGatewaySim().start()
    d = knx_driver(sim.address)
    try:
        assert (await d.poll())["illuminance_lux"] == 80
        # Sent as they are, nothing after them repeating the good values.
        sim._indicate("1/3/1", GroupValueWrite(DPTBinary(1)))  # 1 bit where 2 bytes belong
        sim._indicate("1/2/2", GroupValueWrite(DPTArray((0x0C, 0x1A))))  # 2 bytes to a contact
        sim.set_contact("1/2/1", True)  # then a good telegram: it arrives
        await until(lambda: d.values.get("door") == "open", 5, "good telegram")
        assert d.values["illuminance_lux"] == 80 and d.values["window"] == "closed"
    finally:
        await d.close()
        await asyncio.sleep(0.1)
        sim.close()
