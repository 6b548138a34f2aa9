"""roomd's Modbus driver against an implementation nobody on the project wrote: a server built
on Debian's libmodbus (tests/peers/libmodbus_server.c), over TCP (libmodbus serves one client at
a time, like the gateways it is built into) and RTU on a pseudo-terminal pair from socat."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from roomd.drivers.base import DeviceRefused, DeviceTimeout, DriverContext
from tests.conftest import free_port
from tests.integration.test_modbus_devices import driver

SOURCE = Path(__file__).resolve().parent.parent / "peers" / "libmodbus_server.c"
EXPECTED = {
    "temperature_c": -4.55,
    "humidity_pct": 45.2,
    "co2_ppm": 734,
    "illuminance_lux": 65536 + 612,
    "color_temp_k": 4300,
}


@pytest.fixture(scope="session")
def libmodbus_server(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None or shutil.which("pkg-config") is None:
        pytest.fail("gcc and pkg-config are missing: ./scripts/test installs them")
    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "libmodbus"], capture_output=True, text=True
    )
    if flags.returncode != 0:
        pytest.fail("libmodbus-dev is missing: ./scripts/test installs it")
    binary = tmp_path_factory.mktemp("peers") / "libmodbus_server"
    subprocess.run(
        ["gcc", "-O1", "-o", str(binary), str(SOURCE), *flags.stdout.split()],
        check=True,
        timeout=120,
    )
    return binary


def start(cmd: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read() if proc.stderr else line
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture
def tcp_peer(libmodbus_server: Path) -> Iterator[str]:
    port = free_port()
    proc = start([str(libmodbus_server), "tcp", "127.0.0.1", str(port), "1"])
    yield f"127.0.0.1:{port}"
    stop(proc)


async def test_values_exact_over_tcp_and_two_units_share_its_single_client_slot(
    tcp_peer: str,
) -> None:
    ctx = DriverContext()
    first = driver(ctx, "generic-iaq", host=tcp_peer, unit=1, timeout=1.0)
    second = driver(ctx, "generic-iaq", host=tcp_peer, unit=1, timeout=1.0)
    try:
        for _ in range(3):
            a, b = await asyncio.gather(first.poll(), second.poll())
            assert a == EXPECTED and b == EXPECTED
        # A write the model defines: libmodbus echoes FC06 as the standard says.
        assert await first.write("unoccupied_setpoint_c") == 260
        # An address the server does not have: exception 2, a clean refusal.
        from pymodbus.pdu.register_message import ReadInputRegistersRequest

        with pytest.raises(DeviceRefused, match=r"Modbus exception 2 \(illegal data address\)"):
            await first._request(ReadInputRegistersRequest(address=400, count=2, dev_id=1))
    finally:
        await first.close()
        await second.close()


async def test_contacts_and_relays_of_the_io_model_over_tcp(tcp_peer: str) -> None:
    """Discrete inputs (FC02), coils (FC01) and a coil write (FC05) against libmodbus."""
    io = driver(DriverContext(), "io-8di-8do-room", host=tcp_peer, unit=1, timeout=1.0)
    try:
        got = await io.poll()
        assert got == {
            "door": "open",
            "window": "closed",
            "lights": "off",
            "blinds": "up",
            "projector_circuit": "off",
        }
        assert await io.prepare_check() == "lights on"
        assert (await io.poll())["lights"] == "on"
        assert await io.shutdown() == "lights off, blinds up"
        after = await io.poll()
        assert after["lights"] == "off" and after["blinds"] == "up"
        assert await io.prewarm() == "lights on, projector circuit on"
        assert (await io.poll())["projector_circuit"] == "on"
    finally:
        await io.close()


@pytest.fixture
def rtu_line(libmodbus_server: Path, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    socat = shutil.which("socat")
    if socat is None:
        pytest.fail("socat is missing: ./scripts/test installs it")
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    link = subprocess.Popen(
        [socat, "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        if a.exists() and b.exists():
            break
        subprocess.run(["sleep", "0.05"])
    proc = start([str(libmodbus_server), "rtu", str(a), "9600", "N", "1"])
    yield str(b), proc
    stop(proc)
    link.terminate()
    link.wait(5)


async def test_values_exact_over_rtu_and_a_missing_unit_costs_one_timeout(
    rtu_line: tuple[str, subprocess.Popen[str]],
) -> None:
    port, _proc = rtu_line
    ctx = DriverContext()
    good = driver(ctx, "generic-iaq", port=port, unit=1, timeout=0.5)
    missing = driver(ctx, "generic-iaq", port=port, unit=9, timeout=0.3)
    try:
        assert await good.poll() == EXPECTED
        for _ in range(3):
            with pytest.raises(DeviceTimeout, match="no reply within"):
                await missing.poll()
            # After the default quiet gap (500 ms) libmodbus is in step again: the very next
            # request is answered. With 100 ms it lost that request (measured).
            assert await good.poll() == EXPECTED
    finally:
        for bus in ctx.shared.values():
            bus.close()
