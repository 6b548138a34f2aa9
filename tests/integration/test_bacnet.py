"""BACnet/IP: the driver against an air terminal served by bacpypes3 in another process (a real
BACnet device stack: ReadProperty, its error replies), on 127.0.0.2 with roomd on 127.0.0.1;
then a room whose air changes an hour come from the measured supply air flow over its volume."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from roomd.daemon.clock import FakeClock
from roomd.daemon.config import load_config
from roomd.daemon.supervisor import Daemon
from roomd.drivers.bacnet import BacnetConfig, BacnetDriver
from roomd.drivers.base import DeviceProtocolError, DeviceRefused, DeviceTimeout, DriverContext
from tests.conftest import Mosquitto, until, write_config
from tests.integration.test_daemon import site

DEVICE_HOST = "127.0.0.2"  # another loopback address: the device has a port of its own
OBJECTS = {
    "supply_airflow_m3h": "analog-input,1",
    "temperature_c": "analog-input,2",
    "damper_pct": "analog-output,1",
}


class VavSim:
    def __init__(self, *args: str) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((DEVICE_HOST, 0))
            self.port = int(s.getsockname()[1])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "roomd.simulators.bacnet",
             "--address", f"{DEVICE_HOST}/8:{self.port}", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    @property
    def address(self) -> str:
        return f"{DEVICE_HOST}:{self.port}"

    def set(self, obj: str, value: float) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"set {obj} {value}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def vav() -> Iterator[VavSim]:
    sim = VavSim("--flow", "150", "--flow-units", "liters-per-second")
    try:
        yield sim
    finally:
        sim.stop()


def bacnet(host: str, context: DriverContext, **kw: Any) -> BacnetDriver:
    fields: dict[str, Any] = {"id": "vav", "driver": "bacnet", "host": host, "model": "vav-box"}
    fields |= {"objects": OBJECTS, "local_address": "127.0.0.1:0", "timeout": 1.0}
    return BacnetDriver(BacnetConfig(**(fields | kw)), context)


async def test_air_terminal_over_bacnet_ip(vav: VavSim) -> None:
    ctx = DriverContext()
    try:
        d = bacnet(vav.address, ctx)
        # 150 L/s from a device that speaks litres: 540 m³/h to roomd.
        assert await d.poll() == {"supply_airflow_m3h": 540, "temperature_c": 22.0,
                                  "damper_pct": 40}  # fmt: skip
        vav.set("analog-input,1", 50)
        assert (await d.poll())["supply_airflow_m3h"] == 180
        # An object the device does not have: its error, named.
        wrong = bacnet(vav.address, ctx, objects={"co2_ppm": "analog-input,9"})
        with pytest.raises(DeviceRefused, match="analog-input,9 units: object: unknown-object"):
            await wrong.poll()
        # A sensor fault the device reports as NaN is no reading of 0 or of anything.
        vav.set("analog-input,1", float("nan"))
        with pytest.raises(DeviceProtocolError, match="nan is not a finite number"):
            await d.poll()
        vav.stop()
        with pytest.raises(DeviceTimeout, match="no BACnet reply"):
            await d.poll()
    finally:
        ctx.shared["bacnet-app"].close()


def test_config_checks_points_and_objects() -> None:
    base: dict[str, Any] = {"id": "v", "driver": "bacnet", "host": "127.0.0.2", "model": "vav-box"}
    with pytest.raises(ValueError, match="'fan_speed' is not a point of vav-box"):
        BacnetConfig(**base, objects={"fan_speed": "analog-input,1"})
    with pytest.raises(ValueError, match="is not an object identifier"):
        BacnetConfig(**base, objects={"co2_ppm": "ai:1"})


async def test_room_air_changes_from_the_measured_supply_flow(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    sim = VavSim("--flow", "900")  # m³/h into a 60 m² × 3 m room: 5 air changes an hour
    device = {"id": "vav", "driver": "bacnet", "host": sim.address, "model": "vav-box",
              "objects": OBJECTS, "local_address": "127.0.0.1:0", "poll": "200ms"}  # fmt: skip
    data = site(tmp_path, mosquitto, [device], {"air_changes_per_hour": {"hold": "0s"}})
    data["rooms"][0]["height_m"] = 3
    cfg = write_config(tmp_path / "roomd.yaml", data)
    clock = FakeClock(1_795_000_000.0)
    daemon = Daemon(load_config(cfg), clock=clock)
    task = asyncio.create_task(daemon.run())
    try:
        await daemon.mqtt.wait_connected(10)
        poller = daemon.pollers[("r301", "vav")]
        await until(lambda: poller.online is True, 10, "VAV polled")
        clock.advance(60)
        daemon.ventilation.tick()
        assert daemon.site.room_values["r301"]["air_changes_per_hour"] == 5.0
        report = await daemon.check_room("r301", 1)
        items = {(i["device"], i["item"]): i for i in report["items"]}
        assert items[("_room", "Ventilation")]["measured"] == "5 1/h"
        assert items[("_room", "Ventilation")]["passed"]
        # The damper closes: 540 m³/h is 3 air changes, below the standard's 4.
        sim.set("analog-input,1", 540)
        await until(lambda: poller.readings.get("supply_airflow_m3h") == 540, 10, "new flow")
        clock.advance(60)
        daemon.ventilation.tick()
        alert = daemon.book.active.get("r301._room.air_changes_per_hour.min")
        assert alert is not None and alert.severity == "III"
        assert alert.message == (
            "Ventilation: 3 air changes an hour: supply air 540 m³/h over 180 m³"
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        sim.stop()
