"""The PJLink driver against the simulated projector over real TCP, and the simulator against a
third-party client."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from roomd.discover import discover
from roomd.drivers.base import (
    CommandError,
    DeviceAuthError,
    DeviceProtocolError,
    DeviceRefused,
    DeviceTimeout,
    DeviceUnreachable,
    DriverContext,
)
from roomd.drivers.pjlink import PJLinkConfig, PJLinkDriver
from roomd.simulators.pjlink import PJLinkSim, ProjectorState
from roomd.simulators.site import SimulatedSite

SPEC_PASSWORD = "JBMIAProjectorLink"


def driver(sim: PJLinkSim, **kw: Any) -> PJLinkDriver:
    cfg = PJLinkConfig.model_validate(
        {
            "id": "proj",
            "driver": "pjlink",
            "host": sim.address,
            "model": "roomd-simulator",
            "timeout": 0.5,
            "poll": 1,
            **kw,
        }
    )
    return PJLinkDriver(cfg, DriverContext())


async def started(**state: Any) -> PJLinkSim:
    return await PJLinkSim(ProjectorState(warmup=0.3, cooldown=0.3, **state)).start()


@pytest.mark.parametrize("password", [None, SPEC_PASSWORD])
async def test_poll_with_and_without_password(password: str | None) -> None:
    sim = await started(password=password)
    try:
        d = driver(sim, password=password)
        r = await d.poll()
        assert r["projector_power"] == "off"
        assert {
            r[f"projector_error_{f}"]
            for f in ("fan", "lamp", "temperature", "cover", "filter", "other")
        } == {"ok"}
        assert r["lamp_hours"] == 1200 and r["lamp_life_pct"] == 40.0  # of 3000 h rated
        assert r["filter_hours"] == 800 and r["input"] == "31" and r["av_mute"] == "off"
        assert r["input_lines"] is None  # off: the signal rule does not apply
        assert r["rated_lumens"] == 4500 and r["projector_fault"] == 0
        assert d.info["name"] == "Room Projector" and d.info["serial"] == "SIM0001"
        assert d.info["input_names"] == "11=RGB, 31=HDMI 1, 32=HDMI 2, 51=LAN"
        # The digest is sent in front of the first command only.
        assert sim.commands[0] == "%1CLSS ?"
    finally:
        await sim.stop()


async def test_wrong_or_missing_password_is_an_auth_error() -> None:
    sim = await started(password=SPEC_PASSWORD)
    try:
        with pytest.raises(DeviceAuthError, match="wrong password"):
            await driver(sim, password="nope").poll()
        with pytest.raises(DeviceAuthError, match="requires a password"):
            await driver(sim).poll()
    finally:
        await sim.stop()


@pytest.mark.parametrize("quirk", ["lowercase", "nul_padding", "class_text", "lkup_before_reply"])
async def test_field_quirks_are_tolerated(quirk: str) -> None:
    sim = await started(quirks={quirk})
    try:
        d = driver(sim)
        r = await d.poll()
        assert r["projector_power"] == "off" and r["lamp_hours"] == 1200
        assert d.pj_class == 2
    finally:
        await sim.stop()


async def test_one_connection_at_a_time_and_idle_close() -> None:
    sim = await started(quirks={"one_connection"}, idle_close=0.2)
    try:
        d = driver(sim)
        # A command while a poll runs waits for it (one operation, one connection at a time).
        results = await asyncio.gather(d.poll(), d.command("power", {"state": "on"}), d.poll())
        assert results[1] == {"projector_power": "warming"}
        await asyncio.sleep(0.4)  # the projector closes idle connections; each poll opens its own
        assert (await d.poll())["projector_power"] == "on"
    finally:
        await sim.stop()


async def test_err3_in_standby_is_not_a_failure() -> None:
    sim = await started(faults={"err3_standby"})
    try:
        r = await driver(sim).poll()
        assert r["projector_power"] == "off"
        assert "lamp_hours" not in r and "projector_error_lamp" not in r and "input" not in r
    finally:
        await sim.stop()


@pytest.mark.parametrize(
    ("fault", "error", "match"),
    [
        ("silent", DeviceTimeout, "no reply"),
        ("drop", DeviceUnreachable, "closed"),
        ("garbage", DeviceProtocolError, "not a PJLink line|empty line|longer"),
        ("slow", DeviceTimeout, "no reply"),
    ],
)
async def test_faults_then_recovery(fault: str, error: type[Exception], match: str) -> None:
    sim = await started(slow_delay=1.0)
    try:
        d = driver(sim)
        await d.poll()
        sim.state.faults.add(fault)
        with pytest.raises(error, match=match):
            await d.poll()
        sim.state.faults.clear()
        assert (await d.poll())["projector_power"] == "off"
    finally:
        await sim.stop()


async def test_erst_faults_lamp_life_and_signal() -> None:
    sim = await started(faults={"lamp", "fan"}, lamp_hours=2800)
    try:
        d = driver(sim)
        r = await d.poll()
        assert r["projector_error_lamp"] == "error" and r["projector_error_fan"] == "warning"
        assert r["lamp_life_pct"] == pytest.approx(93.3)
        await d.command("power", {"state": "on"})
        await asyncio.sleep(0.4)
        await d.command("input", {"input": "32"})  # a 1280x720 source
        r = await d.poll()
        assert r["input_resolution"] == "1280x720" and r["input_lines"] == 720
    finally:
        await sim.stop()


async def test_commands_and_their_refusals() -> None:
    sim = await started()
    try:
        d = driver(sim)
        pushed: list[dict[str, Any]] = []
        d.push = pushed.append
        with pytest.raises(DeviceRefused, match=r"ERR3 \(unavailable time\)"):
            await d.command("input", {"input": "32"})  # not while off
        assert await d.command("power", {"state": "on"}) == {"projector_power": "warming"}
        assert pushed == [{"projector_power": "warming"}]
        with pytest.raises(CommandError, match="warming up"):
            await d.command("power", {"state": "off"})
        await asyncio.sleep(0.4)
        assert await d.command("mute", {"target": "video", "state": "on"}) == {"av_mute": "video"}
        assert sim.state.av_mute == "11"
        with pytest.raises(DeviceRefused, match="ERR2"):
            await d.command("input", {"input": "59"})  # no such input on this projector
        assert await d.command("power", {"state": "off"}) == {"projector_power": "cooling"}
        with pytest.raises(CommandError, match="cooling down"):
            await d.command("power", {"state": "on"})
        for bad in ({"state": "maybe"}, {}):
            with pytest.raises(CommandError, match=r"args\.state"):
                await d.command("power", bad)
        with pytest.raises(CommandError, match=r"args\.input"):
            await d.command("input", {"input": "HDMI"})
        with pytest.raises(CommandError, match="unknown command 'zoom'"):
            await d.command("zoom", {})
    finally:
        await sim.stop()


async def test_a_third_party_client_can_query_the_simulator() -> None:
    from pypjlink import Projector  # pypjlink2 from PyPI

    sim = await started(password=SPEC_PASSWORD)
    try:

        def use() -> tuple[Any, ...]:
            with Projector.from_address(sim.host, sim.port, timeout=5) as p:
                assert p.authenticate(SPEC_PASSWORD) is True
                return (
                    p.get_power(),
                    p.get_name(),
                    p.get_manufacturer(),
                    p.get_errors(),
                    p.get_lamps(),
                )

        power, name, maker, errors, lamps = await asyncio.to_thread(use)
        assert (power, name, maker) == ("off", "Room Projector", "ROOMD")
        assert errors["lamp"] == "ok" and lamps == [(1200, False)]

        def wrong() -> Any:
            with Projector.from_address(sim.host, sim.port, timeout=5) as p:
                return p.authenticate("wrong")

        assert await asyncio.to_thread(wrong) is False
    finally:
        await sim.stop()


async def test_discovery_finds_the_simulated_class2_projectors() -> None:
    site = await SimulatedSite(3, rtu=False).start()
    try:
        found = await discover("127.0.0.1", site.search_port, site.projector_port, 0.5, None)
        assert [f.info["name"] for f in found] == [
            "City Hall 301 projector",
            "City Hall 302 projector",
            "City Hall 303 projector",
        ]
        assert all(f.info["class"] == "2" for f in found)
        assert len({f.mac for f in found}) == 3
    finally:
        await site.stop()


def test_config_rejects_polling_faster_than_the_model_allows() -> None:
    with pytest.raises(ValueError, match="faster than model sony-vpl-fhz75 allows"):
        PJLinkConfig.model_validate(
            {
                "id": "p",
                "driver": "pjlink",
                "host": "10.0.0.9",
                "model": "sony-vpl-fhz75",
                "poll": "2s",
            }
        )


async def test_class2_notifications_update_state_at_once() -> None:
    from tests.conftest import free_port

    port = free_port()
    sim = await started()
    d = driver(sim, notify_listen=f"127.0.0.1:{port}")
    pushed: list[dict[str, Any]] = []
    d.push = pushed.append
    try:
        await d.poll()  # starts the listener
        sim.notify(("127.0.0.1", port), "%2ERST=020000")
        sim.notify(("127.0.0.1", port), "%2POWR=3")
        sim.notify(("127.0.0.1", port), "%2LKUP=00:11:22:33:44:55")
        sim.notify(("127.0.0.1", port), "garbage")
        for _ in range(100):
            if len(pushed) >= 2:
                break
            await asyncio.sleep(0.01)
        assert pushed[0]["projector_error_lamp"] == "error"
        assert pushed[1] == {"projector_power": "warming"}
        assert len(pushed) == 2
    finally:
        for shared in d.context.shared.values():
            shared.close()
        await sim.stop()


async def test_a_set_reports_what_the_projector_did_not_what_was_asked() -> None:
    """Audio unmuted while video stays muted: the projector still mutes video (AVMT 11); the
    result used to say what was asked ("audio off")."""
    sim = await started(power="on")
    try:
        d = driver(sim)
        pushed: list[dict[str, Any]] = []
        d.push = pushed.append
        assert await d.command("mute", {"target": "both", "state": "on"}) == {"av_mute": "both"}
        assert await d.command("mute", {"target": "audio", "state": "off"}) == {"av_mute": "video"}
        assert sim.state.av_mute == "11" and pushed[-1] == {"av_mute": "video"}
        assert await d.command("input", {"input": "32"}) == {"input": "32", "input_name": "hdmi2"}
        # Logical names, mapped by the model (roomd-simulator: hdmi1 is PJLink "31").
        assert await d.command("input", {"input": "hdmi1"}) == {
            "input": "31",
            "input_name": "hdmi1",
        }
        with pytest.raises(CommandError, match=r"'hdbaset1' is not an input .*known: hdmi1, hdmi2"):
            await d.command("input", {"input": "hdbaset1"})
        assert (await d.poll())["input_name"] == "hdmi1"
        assert await d.command("freeze", {"state": "on"}) == {"freeze": "on"}
        assert sim.state.frozen
        assert await d.command("volume", {"target": "speaker", "step": "up"}) == {"ok": True}
        assert sim.state.speaker_volume == 11
        assert "%1AVMT ?" in sim.commands and "%2FREZ ?" in sim.commands
    finally:
        await sim.stop()


async def test_the_simulator_answers_like_a_strict_projector() -> None:
    sim = await started(power="on")
    try:
        reader, writer = await asyncio.open_connection(sim.host, sim.port)
        assert await reader.readuntil(b"\r") == b"PJLINK 0\r"

        async def ask(line: bytes, expect_reply: bool = True) -> bytes | None:
            writer.write(line + b"\r")
            await writer.drain()
            if not expect_reply:
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.3):
                        await reader.readuntil(b"\r")
                return None
            return await reader.readuntil(b"\r")

        assert await ask(b"%1ZOOM 1") == b"%1ZOOM=ERR1\r"  # undefined command with a parameter
        assert await ask(b"%1ZOOM ?") == b"%1ZOOM=ERR1\r"
        assert await ask(b"%2FREZ 1") == b"%2FREZ=OK\r"
        assert await ask(b"%2FREZ ?") == b"%2FREZ=1\r"
        assert await ask(b"%2SVOL 0") == b"%2SVOL=OK\r"
        assert await ask(b"%2MVOL ?") == b"%2MVOL=ERR2\r"  # volume has no query
        assert await ask(b"hello", expect_reply=False) is None  # not a request: no reply
        assert await ask(b"%1POWR", expect_reply=False) is None
        sim.state.faults.add("failure")
        assert await ask(b"%1POWR ?") == b"%1POWR=ERR4\r"
        assert await ask(b"%1NAME ?") == b"%1NAME=Room Projector\r"  # identity still answers
        writer.close()
        d = driver(sim)
        readings = await d.poll()
        assert readings["projector_fault"] == 1  # ERR4 → the profile's grade II failure
    finally:
        await sim.stop()


async def test_a_second_third_party_client_aiopjlink_drives_the_simulator() -> None:
    """aiopjlink (PyPI, Class 1 and 2) checks replies strictly: mute states as two flags,
    FREZ, SVOL/MVOL, ERR codes as its own exception types."""
    from aiopjlink import PJLink  # type: ignore[import-untyped]
    from aiopjlink.projector import PJLinkERR3, PJLinkERR4  # type: ignore[import-untyped]

    sim = await started(power="on")
    try:
        async with PJLink(address=sim.host, port=sim.port, timeout=2) as link:
            assert str(await link.power.get()) == "State.ON"
            await link.mute.both(True)
            await link.mute.audio(False)
            assert await link.mute.status() == (True, False)  # video stays muted
            await link.freeze.set(True)
            assert await link.freeze.get() is True
            await link.speaker.turn_up()
            await link.microphone.turn_down()
            assert (sim.state.speaker_volume, sim.state.mic_volume) == (11, 9)
            await link.power.turn_off()
            await asyncio.sleep(0.5)  # cooled down
            with pytest.raises(PJLinkERR3):
                await link.freeze.set(False)  # not in standby
            sim.state.faults.add("failure")
            with pytest.raises(PJLinkERR4):
                await link.power.get()
    finally:
        await sim.stop()
