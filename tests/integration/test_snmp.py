"""SNMP: the switch-port and access-point models against Debian's net-snmp `snmpd` (v2c and
v3 authPriv, values served by a `pass` script from a file the test writes) and against roomd's
own agent simulator; then a room whose port and Wi-Fi go bad, in the daemon and its check."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from roomd.daemon.config import load_config
from roomd.daemon.supervisor import Daemon
from roomd.drivers.base import (
    DeviceAuthError,
    DeviceProtocolError,
    DeviceRefused,
    DeviceTimeout,
    DriverContext,
)
from roomd.drivers.snmp import SnmpConfig, SnmpDriver
from roomd.simulators.site import _free_port
from roomd.simulators.snmp import IF_TABLE, IF_X_TABLE, MIKROTIK_RTAB_STRENGTH, SnmpAgentSim
from tests.conftest import Mosquitto, until, write_config
from tests.integration.test_daemon import site

PASS = Path(__file__).parent.parent / "peers" / "snmp_pass.py"
MODULES = ("-I", "-ifTable,ifXTable,interfaces")
SUBTREES = (IF_TABLE, IF_X_TABLE, "1.3.6.1.2.1.105.1.1.1", MIKROTIK_RTAB_STRENGTH)


class Snmpd:
    """Debian's snmpd on 127.0.0.1, its IF-MIB replaced by values the test sets."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("snmpd") or "/usr/sbin/snmpd"
        if not Path(binary).exists():
            pytest.fail("snmpd is not installed: run ./scripts/test, which installs it")
        self.port = _free_port(udp=True)
        self.values_file = workdir / "values.json"
        self.values: dict[str, list[Any]] = {}
        self.write()
        script = workdir / "pass.sh"
        script.write_text(
            f'#!/bin/sh\nexec "{sys.executable}" "{PASS}" "{self.values_file}" "$@"\n'
        )
        script.chmod(0o755)
        conf = workdir / "snmpd.conf"
        conf.write_text(
            f"agentAddress udp:127.0.0.1:{self.port}\n"
            "rocommunity roomdtest 127.0.0.1\n"
            'createUser roomdv3 SHA "authpass123" AES "privpass123"\n'
            "rouser roomdv3 priv\n" + "".join(f"pass .{tree} {script}\n" for tree in SUBTREES)
        )
        persist = workdir / "persist"
        persist.mkdir()
        self.proc = subprocess.Popen(
            # -C: no other config file; MODULES: its own IF-MIB off, the test's `pass` serves it
            [binary, "-f", "-Lf", str(workdir / "snmpd.log"), "-C", "-c", str(conf), *MODULES],
            env={"SNMP_PERSISTENT_DIR": str(persist), "PATH": "/usr/sbin:/usr/bin:/bin"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set(self, oid: str, kind: str, value: Any) -> None:
        self.values[oid] = [kind, value]
        self.write()

    def write(self) -> None:
        tmp = self.values_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.values))
        tmp.replace(self.values_file)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def snmpd(tmp_path: Path) -> Iterator[Snmpd]:
    agent = Snmpd(tmp_path)
    try:
        yield agent
    finally:
        agent.stop()


def port_values(target: Snmpd | SnmpAgentSim, index: int = 5, errors: int = 0) -> None:
    target.set(f"{IF_TABLE}.8.{index}", "integer", 1)
    for column in (13, 19, 20):
        target.set(f"{IF_TABLE}.{column}.{index}", "counter", 0)
    target.set(f"{IF_TABLE}.14.{index}", "counter", errors)
    target.set(f"{IF_X_TABLE}.15.{index}", "gauge", 1000)


def driver(host: str, **kw: Any) -> SnmpDriver:
    fields: dict[str, Any] = {"id": "sw", "driver": "snmp", "host": host}
    fields.update({"model": "if-mib-port", "index": 5, "timeout": 1.0} | kw)
    return SnmpDriver(SnmpConfig(**fields), DriverContext())


async def first_answer(d: SnmpDriver, within: float = 10.0) -> dict[str, Any]:
    """snmpd takes a moment to start: poll until it answers."""
    deadline = time.monotonic() + within
    while True:
        try:
            return dict(await d.poll())
        except DeviceTimeout:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_switch_port_from_snmpd_v2c(snmpd: Snmpd) -> None:
    port_values(snmpd, errors=100)
    d = driver(snmpd.address, community="roomdtest")
    first = await first_answer(d)
    assert first["link_state"] == "up" and first["link_mbps"] == 1000
    assert first["if_in_errors_per_min"] is None  # a rate needs two polls
    assert first["poe_state"] is None  # this "switch" has no PoE: optional, not an error
    await asyncio.sleep(0.5)
    snmpd.set(f"{IF_TABLE}.14.5", "counter", 160)  # 60 errors in about half a second
    second = await d.poll()
    rate = second["if_in_errors_per_min"]
    assert isinstance(rate, float) and 1000 < rate < 12_000, rate
    assert second["if_out_errors_per_min"] == 0
    # A port negotiated down to 10 Mbit/s, then unplugged: no speed while it is down.
    snmpd.set(f"{IF_X_TABLE}.15.5", "gauge", 10)
    assert (await d.poll())["link_mbps"] == 10
    snmpd.set(f"{IF_TABLE}.8.5", "integer", 2)
    down = await d.poll()
    assert down["link_state"] == "down" and down["link_mbps"] is None
    # The wrong community: snmpd does not answer at all.
    with pytest.raises(DeviceTimeout, match="wrong community"):
        await driver(snmpd.address, community="guess", timeout=0.3, retries=0).poll()
    # A port the switch does not have.
    with pytest.raises(DeviceRefused, match=r"2\.2\.1\.8\.9 \(link_state\): wrong `index`"):
        await driver(snmpd.address, community="roomdtest", index=9).poll()


async def test_switch_port_from_snmpd_v3_auth_priv(snmpd: Snmpd) -> None:
    port_values(snmpd)
    v3: dict[str, Any] = {"version": "3", "user": "roomdv3", "auth_key": "authpass123"}
    d = driver(snmpd.address, **v3, priv_key="privpass123")
    assert (await first_answer(d))["link_mbps"] == 1000
    wrong = driver(snmpd.address, **v3 | {"auth_key": "wrongpass123"}, priv_key="privpass123")
    with pytest.raises((DeviceAuthError, DeviceTimeout)):
        await wrong.poll()


async def test_access_point_signal_from_snmpd(snmpd: Snmpd) -> None:
    for n, dbm in enumerate((-48, -58, -61, -77)):
        snmpd.set(f"{MIKROTIK_RTAB_STRENGTH}.76.94.12.0.0.{n + 1}.2", "integer", dbm)
    d = driver(snmpd.address, model="mikrotik-wireless", index=None, community="roomdtest")
    got = await first_answer(d)
    assert got == {"wifi_rssi_dbm": -60, "wifi_rssi_min_dbm": -77, "wifi_clients": 4}


async def test_simulator_is_as_strict_as_an_agent() -> None:
    sim = await SnmpAgentSim.switch_port(index=5, mbps=100, community="roomdtest").start()
    try:
        d = driver(sim.address, community="roomdtest")
        got = await d.poll()
        assert got["link_mbps"] == 100 and got["poe_state"] == "delivering"
        with pytest.raises(DeviceTimeout):
            await driver(sim.address, community="public", timeout=0.2, retries=0).poll()
        sim.silent = True
        with pytest.raises(DeviceTimeout):
            await driver(sim.address, community="roomdtest", timeout=0.2, retries=0).poll()
    finally:
        sim.close()


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="give its ifIndex as `index`"):
        SnmpConfig(id="sw", driver="snmp", host="127.0.0.1", model="if-mib-port")
    with pytest.raises(ValueError, match="SNMPv3 needs `user`"):
        SnmpConfig(id="sw", driver="snmp", host="127.0.0.1", model="if-mib-port", index=1,
                   version="3")  # fmt: skip
    with pytest.raises(ValueError, match="unknown SNMP model 'nope'"):
        SnmpConfig(id="sw", driver="snmp", host="127.0.0.1", model="nope")


async def test_room_network_in_the_daemon_and_its_check(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    switch = await SnmpAgentSim.switch_port(index=5, mbps=1000).start()
    ap = await SnmpAgentSim.access_point([-52, -58, -60]).start()
    fast = {"hold": "0s"}
    devices = [
        {"id": "port", "driver": "snmp", "model": "if-mib-port", "index": 5,
         "host": switch.address, "poll": "100ms"},
        {"id": "wifi", "driver": "snmp", "model": "mikrotik-wireless", "host": ap.address,
         "poll": "100ms"},
    ]  # fmt: skip
    thresholds = {"link_mbps": fast, "wifi_rssi_dbm": fast, "link_state": fast}
    cfg = write_config(tmp_path / "roomd.yaml", site(tmp_path, mosquitto, devices, thresholds))
    daemon = Daemon(load_config(cfg))
    task = asyncio.create_task(daemon.run())
    try:
        await daemon.mqtt.wait_connected(10)
        await until(lambda: daemon.pollers[("r301", "wifi")].online is True, 10, "Wi-Fi polled")
        report = await daemon.check_room("r301", 1)
        items = {(i["device"], i["item"]): i for i in report["items"]}
        assert items[("port", "Wired link")]["measured"] == "1000 Mbit/s"
        assert items[("port", "Wired link")]["expected"] == ">= 100 Mbit/s"
        assert items[("port", "Wired link state")]["measured"] == "up"
        assert items[("wifi", "Wi-Fi signal")]["measured"] == "-58 dBm"
        assert report["passed"], report["failed"]
        # The port falls back to 10 Mbit/s and the clients drift away from the AP.
        switch.set(f"{IF_X_TABLE}.15.5", "gauge", 10)
        ap.clients([-70, -74, -81])
        await until(
            lambda: (
                {"r301.port.link_mbps.min", "r301.wifi.wifi_rssi_dbm.min"}
                <= set(daemon.book.active)
            ),
            10,
            "network alerts",
        )
        report = await daemon.check_room("r301", 1)
        assert not report["passed"]
        items = {(i["device"], i["item"]): i for i in report["items"]}
        assert items[("port", "Wired link")]["measured"] == "10 Mbit/s"
        assert items[("wifi", "Wi-Fi signal")]["measured"] == "-74 dBm"
        # Unplugged: a grade II link alert, and the speed no longer judged.
        switch.set(f"{IF_TABLE}.8.5", "integer", 2)
        await until(lambda: "r301.port.link_state.down" in daemon.book.active, 10, "link down")
        assert "r301.port.link_mbps.min" not in daemon.book.active
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        switch.close()
        ap.close()


async def test_an_agent_answering_nonsense_is_refused_precisely() -> None:
    """Values of the wrong type, a state code nobody defined, a huge client table: bounded,
    named, and the next good answer is read again."""
    sim = await SnmpAgentSim.switch_port(index=5).start()
    try:
        d = driver(sim.address)
        sim.set(f"{IF_X_TABLE}.15.5", "string", "fast")
        with pytest.raises(DeviceProtocolError, match="link_mbps: fast is not a number"):
            await d.poll()
        sim.set(f"{IF_X_TABLE}.15.5", "gauge", 100)
        sim.set(f"{IF_TABLE}.8.5", "integer", 42)
        assert (await d.poll())["link_state"] == "unknown_42"  # not an alert, not a crash
        ap = SnmpAgentSim.access_point([-60] * 10_050)
        await ap.start()
        try:
            wifi = driver(ap.address, model="mikrotik-wireless", index=None, timeout=5.0)
            with pytest.raises(DeviceProtocolError, match="over 10,000 rows"):
                await wifi.poll()
        finally:
            ap.close()
    finally:
        sim.close()
