"""The profile-driven RS-232 projector driver (Epson ESC/VP21) over a pseudo-terminal."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from roomd.drivers.base import (
    CommandError,
    DeviceProtocolError,
    DeviceRefused,
    DeviceTimeout,
    DriverContext,
)
from roomd.drivers.serial_projector import (
    SerialProjectorConfig,
    SerialProjectorDriver,
    load_serial_profile,
)
from roomd.simulators.escvp21 import EscVp21Sim, EscVp21State


def driver(sim: EscVp21Sim, **kw: Any) -> SerialProjectorDriver:
    cfg = SerialProjectorConfig.model_validate(
        {"id": "proj", "driver": "serial-projector", "port": sim.path, "timeout": 0.5, **kw}
    )
    return SerialProjectorDriver(cfg, DriverContext())


async def test_poll_commands_and_errors_over_a_pty() -> None:
    sim = EscVp21Sim(EscVp21State(warmup=0.3, cooldown=0.3)).start()
    d = driver(sim, rated_lumens=3200)
    try:
        r = await d.poll()
        assert r == {
            "projector_power": "off",
            "lamp_hours": 1500,
            "lamp_life_pct": 30.0,
            **{
                f"projector_error_{f}": "ok"
                for f in ("fan", "lamp", "temperature", "cover", "filter", "other")
            },
            "rated_lumens": 3200,
        }  # SOURCE? answers ERR in standby: left out
        assert sim.commands == ["PWR?", "LAMP?", "SOURCE?", "ERR?"]
        with pytest.raises(DeviceRefused, match="not available now"):
            await d.command("input", {"input": "30"})
        assert await d.command("power", {"state": "on"}) == {"projector_power": "warming"}
        with pytest.raises(CommandError, match="warming up"):
            await d.command("power", {"state": "off"})
        await asyncio.sleep(0.4)
        assert await d.command("input", {"input": "a0"}) == {"input": "A0", "input_name": "hdmi2"}
        assert (await d.poll())["input"] == "A0"
        # By name: Epson's HDMI 1 is SOURCE 30 (PJLink says 31); a code the model lacks is ERR.
        assert await d.command("input", {"input": "hdmi1"}) == {
            "input": "30",
            "input_name": "hdmi1",
        }
        assert (await d.poll())["input_name"] == "hdmi1"
        with pytest.raises(DeviceRefused, match="not available now"):
            await d.command("input", {"input": "31"})  # a PJLink code: no such source here
        assert sim.state.source == "30"
        assert await d.command("mute", {"state": "on"}) == {"mute": "on"}
        assert sim.state.muted
        sim.state.error = "06"  # lamp error
        r = await d.poll()
        assert r["projector_error_lamp"] == "error" and r["projector_error_fan"] == "ok"
        sim.state.error = "0B"  # not in the profile's map
        assert (await d.poll())["projector_error_other"] == "error"
        sim.state.faults.add("silent")
        with pytest.raises(DeviceTimeout, match="no reply to 'PWR\\?'"):
            await d.poll()
        sim.state.faults = {"garbage"}
        with pytest.raises(DeviceProtocolError, match="garbage"):
            await d.poll()
        sim.state.faults.clear()
        await asyncio.sleep(0.1)
        assert (await d.poll())["projector_power"] == "on"
    finally:
        await d.close()
        sim.stop()


def test_profile_validation() -> None:
    p = load_serial_profile("epson-escvp21")
    assert p.prompt == ":" and p.queries[0].command == "PWR?"
    with pytest.raises(ValueError, match="unknown serial projector profile 'nec'"):
        load_serial_profile("nec")


async def test_serial_io_works_past_1024_file_descriptors(tmp_path: Any) -> None:
    """pyserial's read() selects, which fails for fd ≥ 1024; roomd reads the fd itself."""
    import os
    import resource

    from roomd.drivers.nfc import NfcReaderDriver, NfcSerialConfig
    from roomd.simulators.nfc import ReaderSim, card_uid

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.fail(f"this machine allows only {hard} open files; the test needs 1200")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1050)]
    reader = ReaderSim(tmp_path / "reader").plug()
    try:
        cfg = NfcSerialConfig.model_validate(
            {"id": "r", "driver": "nfc-serial", "port": reader.path, "framing": "rdm6300"}
        )
        d = NfcReaderDriver(cfg, DriverContext())
        seen: list[str] = []
        d.on_card = lambda uid, at: seen.append(uid)
        await d.poll()
        assert d.transport is not None
        assert d.transport._fd >= 1024  # type: ignore[attr-defined]  # the case that broke
        reader.tap(card_uid(7))
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        assert seen == [card_uid(7)]
        await d.close()
    finally:
        reader.unplug()
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
