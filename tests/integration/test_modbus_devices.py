"""The Modbus driver against simulated sensors over real TCP sockets and pseudo-terminals."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from roomd.drivers.base import (
    CommandError,
    DeviceProtocolError,
    DeviceRefused,
    DeviceTimeout,
    DeviceUnreachable,
    DriverContext,
)
from roomd.drivers.modbus import ModbusConfig, ModbusDriver
from roomd.simulators.modbus import ModbusRtuSim, ModbusTcpSim, SimSensor
from tests.conftest import until


def driver(ctx: DriverContext, model: str, timeout: float = 0.3, **kw: object) -> ModbusDriver:
    cfg = ModbusConfig.model_validate(
        {"id": "d", "driver": "modbus", "model": model, "timeout": timeout, **kw}
    )
    return ModbusDriver(cfg, ctx)


@pytest.mark.parametrize(
    ("model", "values"),
    [
        ("xy-md02", {"temperature_c": -4.5, "humidity_pct": 61.2}),
        ("scd30", {"co2_ppm": 1234.5, "temperature_c": 21.25, "humidity_pct": 44.5}),
        ("senseair-s8", {"co2_ppm": 987}),
        ("rs485-lux", {"illuminance_lux": 123456}),
        (
            "generic-iaq",
            {
                "temperature_c": 22.31,
                "humidity_pct": 47.5,
                "co2_ppm": 812,
                "illuminance_lux": 70000,
                "color_temp_k": 4500,
            },
        ),
    ],
)
async def test_every_model_over_tcp(model: str, values: dict[str, float]) -> None:
    sim = await ModbusTcpSim([SimSensor.of(model, **values)]).start()
    try:
        d = driver(DriverContext(), model, host=sim.address)
        assert await d.poll() == pytest.approx(values)
        await d.close()
    finally:
        await sim.stop()


async def test_rtu_bus_shared_by_two_units_on_a_pty() -> None:
    bus = ModbusRtuSim(
        [
            SimSensor.of("xy-md02", temperature_c=23.5, humidity_pct=40.1),
            SimSensor.of("senseair-s8", co2_ppm=654),
        ]
    ).start()
    ctx = DriverContext()
    try:
        th = driver(ctx, "xy-md02", port=bus.path)
        co2 = driver(ctx, "senseair-s8", port=bus.path)
        results = await asyncio.gather(*(d.poll() for d in (th, co2, th, co2)))
        assert results == [{"temperature_c": 23.5, "humidity_pct": 40.1}, {"co2_ppm": 654}] * 2
        assert len(ctx.shared) == 1  # one port, one bus
    finally:
        for b in ctx.shared.values():
            b.close()
        bus.stop()


async def test_a_silent_unit_costs_one_timeout_and_never_stalls_the_bus() -> None:
    silent = SimSensor.of("xy-md02", unit=2, temperature_c=1, humidity_pct=1)
    silent.fault = "silent"
    bus = ModbusRtuSim([SimSensor.of("senseair-s8", co2_ppm=700), silent]).start()
    ctx = DriverContext()
    try:
        quiet = driver(ctx, "xy-md02", unit=2, port=bus.path, timeout=0.2, quiet_after_timeout=0.1)
        good = driver(ctx, "senseair-s8", port=bus.path, timeout=0.2, quiet_after_timeout=0.1)

        async def poll_good() -> tuple[float, dict[str, object]]:
            t0 = time.monotonic()
            r = await good.poll()
            return time.monotonic() - t0, dict(r)

        outcome = await asyncio.gather(quiet.poll(), poll_good(), return_exceptions=True)
        assert isinstance(outcome[0], DeviceTimeout)
        elapsed, readings = outcome[1]  # type: ignore[misc]
        assert readings == {"co2_ppm": 700}
        assert elapsed < 0.2 + 0.1 + 0.15  # at most the silent unit's timeout and quiet gap
        # And the good unit keeps answering at full speed afterwards.
        t0 = time.monotonic()
        for _ in range(10):
            assert await good.poll() == {"co2_ppm": 700}
        assert time.monotonic() - t0 < 1.0
    finally:
        for b in ctx.shared.values():
            b.close()
        bus.stop()


@pytest.mark.parametrize(
    ("fault", "error", "match"),
    [
        ("silent", DeviceTimeout, "no reply within"),
        ("exception", DeviceRefused, r"Modbus exception 4 \(device failure\)"),
        ("corrupt", DeviceProtocolError, "corrupt Modbus TCP frame"),
        ("slow", DeviceTimeout, "no reply within"),
        ("disconnect", DeviceUnreachable, "connection closed"),
    ],
)
async def test_tcp_faults_then_recovery(fault: str, error: type[Exception], match: str) -> None:
    sensor = SimSensor.of("senseair-s8", co2_ppm=800)
    sim = await ModbusTcpSim([sensor]).start()
    d = driver(DriverContext(), "senseair-s8", host=sim.address, timeout=0.3)
    try:
        assert await d.poll() == {"co2_ppm": 800}
        sensor.fault = fault  # type: ignore[assignment]
        sensor.slow_delay = 0.6
        with pytest.raises(error, match=match):
            await d.poll()
        await d.close()
        sensor.fault = "none"
        sensor.set(co2_ppm=810)
        assert await d.poll() == {"co2_ppm": 810}
    finally:
        await d.close()
        await sim.stop()


async def fast_poll(d: ModbusDriver) -> object:
    """One poll the way the daemon's engine makes it: `start_poll` and its callback."""
    done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    assert d.start_poll(done.set_result), "the fast path needs an open link"
    return await asyncio.wait_for(done, 2)


@pytest.mark.parametrize(
    ("fault", "error", "match"),
    [
        ("exception", DeviceRefused, r"Modbus exception 4 \(device failure\) for function 4"),
        ("wrong_unit", DeviceProtocolError, "reply from unit"),
        ("silent", DeviceTimeout, "no reply within"),
    ],
)
async def test_fast_path_decodes_and_refuses_as_poll_does(
    fault: str, error: type[Exception], match: str
) -> None:
    """The engine's path (no task or future a poll; each reply checked inline) reads a model
    as `poll()` does, and names a refused, misaddressed or missing reply as `poll()` would."""
    values = {"temperature_c": 22.31, "humidity_pct": 47.5, "co2_ppm": 812,
              "illuminance_lux": 70000, "color_temp_k": 4500}  # fmt: skip
    sensor = SimSensor.of("generic-iaq", **values)
    sim = await ModbusTcpSim([sensor]).start()
    d = driver(DriverContext(), "generic-iaq", host=sim.address)
    try:
        assert await d.poll() == pytest.approx(values)  # opens the link
        assert await fast_poll(d) == pytest.approx(values)
        sensor.fault = fault  # type: ignore[assignment]
        got = await fast_poll(d)
        assert isinstance(got, error), got
        assert re.search(match, str(got)), got
    finally:
        await d.close()
        await sim.stop()


async def test_fast_path_reads_every_block_of_a_model() -> None:
    """Two requests a poll (coils, then discrete inputs), chained by the reply callback."""
    sensor = SimSensor.of("io-8di-8do-room")
    sensor.set_bits(door="open")
    sim = await ModbusTcpSim([sensor]).start()
    d = driver(DriverContext(), "io-8di-8do-room", host=sim.address)
    try:
        assert len(d.blocks) == 2
        want = await d.poll()
        assert want["door"] == "open"
        assert await fast_poll(d) == want
        sensor.set_bits(door="closed")
        assert await fast_poll(d) == {**want, "door": "closed"}
    finally:
        await d.close()
        await sim.stop()


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("silent", DeviceTimeout),
        ("exception", DeviceRefused),
        ("corrupt", DeviceProtocolError),
        ("slow", DeviceTimeout),
    ],
)
async def test_rtu_faults_then_recovery(fault: str, error: type[Exception]) -> None:
    sensor = SimSensor.of("xy-md02", temperature_c=21.0, humidity_pct=50.0)
    bus = ModbusRtuSim([sensor]).start()
    ctx = DriverContext()
    d = driver(ctx, "xy-md02", port=bus.path, timeout=0.3)
    try:
        assert await d.poll() == {"temperature_c": 21.0, "humidity_pct": 50.0}
        sensor.fault = fault  # type: ignore[assignment]
        sensor.slow_delay = 0.5
        with pytest.raises(error):
            await d.poll()
        sensor.fault = "none"
        await asyncio.sleep(0.5)  # let a slow reply arrive late: it must not confuse the next poll
        assert await d.poll() == {"temperature_c": 21.0, "humidity_pct": 50.0}
    finally:
        for b in ctx.shared.values():
            b.close()
        bus.stop()


async def test_unreachable_host_and_missing_port() -> None:
    from tests.conftest import free_port

    d = driver(DriverContext(), "senseair-s8", host=f"127.0.0.1:{free_port()}")
    with pytest.raises(DeviceUnreachable, match="cannot connect"):
        await d.poll()
    ctx = DriverContext()
    d2 = driver(ctx, "senseair-s8", port="/dev/does-not-exist")
    with pytest.raises(DeviceUnreachable, match="cannot open /dev/does-not-exist"):
        await d2.poll()


async def test_illegal_address_and_write_command() -> None:
    sensor = SimSensor.of("generic-iaq", temperature_c=22)
    sim = await ModbusTcpSim([sensor]).start()
    try:
        d = driver(DriverContext(), "generic-iaq", host=sim.address)
        result = await d.command("write", {"register": "unoccupied_setpoint_c"})
        assert result == {"register": "unoccupied_setpoint_c", "raw": 260}
        assert sensor.written == {0x100: 260}
        with pytest.raises(CommandError, match="has no write 'nope'"):
            await d.command("write", {"register": "nope"})
        with pytest.raises(CommandError, match="unknown command 'explode'"):
            await d.command("explode", {})
        # A model whose map asks for registers the device does not have → exception 2.
        wrong = driver(DriverContext(), "scd30", host=sim.address, unit=1)
        with pytest.raises(DeviceRefused, match="illegal data address"):
            await wrong.poll()
        # A unit that is not behind this gateway → exception 11.
        absent = driver(DriverContext(), "scd30", host=sim.address)
        with pytest.raises(DeviceRefused, match=r"exception 11 \(gateway target failed"):
            await absent.poll()
        await absent.close()
        await d.close()
        await wrong.close()
    finally:
        await sim.stop()


async def test_even_parity_opens_on_a_pseudo_terminal() -> None:
    """Linux ptys reject PARENB with termios.error, which is not an OSError: the XY-MD02 (8E1)
    stayed offline with a traceback per retry. Now the open falls back to no parity."""
    import os
    import pty

    from roomd.drivers.serial_port import open_serial

    master, slave = pty.openpty()
    try:
        for parity in ("N", "E", "E"):  # after a first open (a restart), E failed
            transport = await open_serial(
                os.ttyname(slave), lambda data: None, lambda exc: None, baudrate=9600, parity=parity
            )
            transport.close()
    finally:
        os.close(master)
        os.close(slave)


async def test_after_a_timeout_the_bus_stays_quiet_before_the_next_request() -> None:
    """A slave still waiting for the rest of a frame loses its framing when the next request
    follows at once (2 ms was measured): the bus leaves `quiet_after_timeout` of silence."""
    silent = SimSensor.of("xy-md02", unit=2, temperature_c=1, humidity_pct=1)
    silent.fault = "silent"
    bus = ModbusRtuSim([SimSensor.of("senseair-s8", co2_ppm=700), silent]).start()
    ctx = DriverContext()
    try:
        quiet = driver(ctx, "xy-md02", unit=2, port=bus.path, timeout=0.1, parity="N")
        good = driver(ctx, "senseair-s8", port=bus.path, timeout=0.2, quiet_after_timeout=0.25)
        with pytest.raises(DeviceTimeout):
            await quiet.poll()
        assert await good.poll() == {"co2_ppm": 700}
        (t_silent, unit_a), (t_good, unit_b) = bus.frame_times[-2:]
        assert (unit_a, unit_b) == (2, 254)
        assert t_good - t_silent >= 0.1 + 0.25 - 0.01  # its timeout, then the quiet gap
        assert await good.poll() == {"co2_ppm": 700}  # no quiet gap after an answer
        assert bus.frame_times[-1][0] - t_good < 0.1
    finally:
        for b in ctx.shared.values():
            b.close()
        bus.stop()


async def test_units_behind_a_single_client_gateway_share_one_connection() -> None:
    """RS-485-to-TCP gateways often take one client: a connection per device meant the
    second device never connected. Units share the gateway's connection, matched by
    transaction id, and a reply is checked against the unit it was asked of."""
    th = SimSensor.of("xy-md02", unit=1, temperature_c=21.5, humidity_pct=40.0)
    co2 = SimSensor.of("senseair-s8", unit=254, co2_ppm=640)
    silent = SimSensor.of("xy-md02", unit=7, temperature_c=1, humidity_pct=1)
    silent.fault = "silent"
    gw = await ModbusTcpSim([th, co2, silent], max_clients=1).start()
    ctx = DriverContext()
    devices = [
        driver(ctx, "xy-md02", host=gw.address, unit=1),
        driver(ctx, "senseair-s8", host=gw.address, unit=254),
        driver(ctx, "xy-md02", host=gw.address, unit=7, timeout=0.2),
    ]
    try:
        for _ in range(3):
            results = await asyncio.gather(*(d.poll() for d in devices), return_exceptions=True)
            assert results[0] == {"temperature_c": 21.5, "humidity_pct": 40.0}
            assert results[1] == {"co2_ppm": 640}
            assert isinstance(results[2], DeviceTimeout)  # one silent unit, the others unharmed
        assert (gw.connections, gw.refused) == (1, 0)
        co2.fault = "wrong_unit"
        with pytest.raises(
            DeviceProtocolError, match="reply from unit 255 to a request for unit 254"
        ):
            await devices[1].poll()
        co2.fault = "none"
        assert await devices[1].poll() == {"co2_ppm": 640}
        assert gw.connections == 1  # a wrong unit id does not cost the shared connection
        for d in devices:
            await d.close()
        await until(lambda: not gw.sessions, 2, "the connection closes with its last device")
    finally:
        await gw.stop()


async def test_a_gateway_connection_limit_above_one_spreads_requests() -> None:
    sensors = [SimSensor.of("senseair-s8", unit=u, co2_ppm=600 + u) for u in range(1, 7)]
    gw = await ModbusTcpSim(sensors, max_clients=2).start()
    ctx = DriverContext()
    devices = [
        driver(ctx, "senseair-s8", host=gw.address, unit=u, max_connections=2) for u in range(1, 7)
    ]
    try:
        results = await asyncio.gather(*(d.poll() for d in devices))
        assert results == [{"co2_ppm": 600 + u} for u in range(1, 7)]
        assert gw.connections == 2 and gw.refused == 0
    finally:
        for d in devices:
            await d.close()
        await gw.stop()
