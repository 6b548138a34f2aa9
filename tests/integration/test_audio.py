"""Mixers (X32 and X-Air over OSC/UDP) and the audio probe (RTP) against the daemon and a real
Mosquitto: meters, subscriptions kept alive, mute alerts, commands, the sound check."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest

from roomd.daemon.supervisor import Daemon
from roomd.simulators.mixer import CALIBRATION_DB, MixerSim, RoomAudio, RtpAudioSource
from roomd.simulators.site import _free_port
from tests.conftest import Mosquitto, Recorder, until, write_config
from tests.integration.test_daemon import BASE, running


def _room(room_id: str, devices: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": room_id, "name": room_id, "devices": devices}


def _site(tmp_path: Path, broker: Mosquitto, rooms: list[dict[str, Any]]) -> Path:
    data = {
        "site": "hq",
        "mqtt": {"url": broker.url},
        "http": {"listen": f"127.0.0.1:{_free_port()}"},
        "state_dir": str(tmp_path / "state"),
        "rooms": rooms,
    }
    return write_config(tmp_path / "site.yaml", data)


def _state(daemon: Daemon, room: str, device: str) -> dict[str, Any]:
    p = daemon.pollers[(room, device)]
    return dict(p.readings) if p.online else {}


async def _command(
    rec: Recorder, room: str, device: str, command: str, args: dict[str, Any], timeout: float = 30
) -> dict[str, Any]:
    cmd_id = f"{command}-{time.monotonic_ns()}"
    rec.publish(f"{BASE}/{room}/{device}/cmd", {"command": command, "args": args, "id": cmd_id})
    [msg] = await rec.wait_for(
        lambda m: m.topic == f"{BASE}/{room}/{device}/cmd/result" and m.json()["id"] == cmd_id,
        timeout=timeout,
    )
    result: dict[str, Any] = msg.json()
    return result


def _alert(rec: Recorder, room: str, alert_id: str) -> dict[str, Any] | None:
    msgs = rec.on(f"{BASE}/{room}/alerts/{alert_id}")
    if not msgs or not msgs[-1].payload:
        return None
    data: dict[str, Any] = json.loads(msgs[-1].payload)
    return data


async def test_mixers_meters_subscriptions_mute_alerts_and_commands(
    tmp_path: Path, mosquitto: Mosquitto, recorder_factory: Any
) -> None:
    x32 = MixerSim("x32", room=RoomAudio(talking=True))
    xair = MixerSim("xair", room=RoomAudio(talking=True), tone_channel=16)
    await x32.start()
    await xair.start()
    cfg = _site(
        tmp_path,
        mosquitto,
        [
            _room("r301", [{"id": "mixer", "driver": "x32", "host": f"127.0.0.1:{x32.port}",
                            "channels": [1, 2, 3]}]),
            _room("r302", [{"id": "mixer", "driver": "xair", "host": f"127.0.0.1:{xair.port}",
                            "channels": [1, 2], "test_channel": 16}]),
        ],
    )  # fmt: skip
    rec = recorder_factory(mosquitto.port)
    started = time.monotonic()
    try:
        async with running(cfg) as daemon:
            # Meters decoded: X32 float32 LE banks, X-Air int16 LE in 1/256 dB.
            for room in ("r301", "r302"):
                await until(
                    lambda room=room: (
                        isinstance(_state(daemon, room, "mixer").get("ch01_level_dbfs"), float)
                        and isinstance(_state(daemon, room, "mixer").get("main_level_dbfs"), float)
                    ),
                    10,
                    f"{room} meters",
                )
            r301 = _state(daemon, "r301", "mixer")
            assert -30 < r301["ch01_level_dbfs"] < -10  # the simulated talker, about -22 dBFS
            assert isinstance(r301["ch03_level_dbfs"], float) and r301["ch03_silent_seconds"] < 3
            assert r301["main_mute"] == "off" and r301["main_fader_db"] == 0.0
            assert daemon.pollers[("r301", "mixer")].driver.info["model"] == "X32"
            assert daemon.pollers[("r302", "mixer")].driver.info["model"] == "XAIR"

            # Main muted (the room counts as in use: it has no bookings) → grade II, and back.
            x32.mute_main()
            await until(lambda: _alert(rec, "r301", "r301.mixer.main_mute.on") is not None, 10,
                        "main mute alert")  # fmt: skip
            alert = _alert(rec, "r301", "r301.mixer.main_mute.on")
            assert alert is not None and alert["severity"] == "II"
            x32.mute_main(False)
            await until(lambda: _alert(rec, "r301", "r301.mixer.main_mute.on") is None, 10,
                        "main mute clear")  # fmt: skip

            # A command mutes a channel on the desk; its alert names the channel.
            result = await _command(rec, "r302", "mixer", "mute", {"channel": 2, "state": "on"})
            assert result["ok"] and result["result"] == {"channel": 2, "mute": "on"}
            assert xair.params["/ch/02/mix/on"] == 0
            await until(lambda: _alert(rec, "r302", "r302.mixer.ch02_mute.on") is not None, 10,
                        "channel mute alert")  # fmt: skip
            msg = _alert(rec, "r302", "r302.mixer.ch02_mute.on")
            assert msg is not None and "Mic channel 2" in msg["message"]
            result = await _command(rec, "r301", "mixer", "fader", {"channel": "main", "db": -12})
            assert result["ok"] and result["result"]["db"] == -12.0
            bad = await _command(rec, "r301", "mixer", "fader", {"channel": 40, "db": 0})
            assert not bad["ok"] and "channel" in bad["error"]
            scene = await _command(rec, "r302", "mixer", "scene", {"number": 2})
            assert scene["ok"] and xair.params["/lr/mix/on"] == 0
            await until(lambda: _state(daemon, "r302", "mixer").get("main_mute") == "on", 5,
                        "scene read back")  # fmt: skip

            # After a meeting the daemon mutes the main mix (the driver's shutdown hook).
            mixer = daemon.pollers[("r301", "mixer")].driver
            assert await mixer.shutdown() == "main mix muted"
            assert x32.params["/main/st/mix/on"] == 0
            assert await mixer.shutdown() is None  # already muted: nothing to do
            assert await mixer.take_over({}) == "main mix unmuted"

            # Garbage is counted and dropped; a desk that forgets us is asked again.
            x32.send_junk()
            await until(lambda: _state(daemon, "r301", "mixer").get("bad_packets") == 2, 5,
                        "bad packets counted")  # fmt: skip
            x32.drop_subscriptions()
            # Meters stop, so both are asked for again at once; a drop that falls between the
            # two requests is mended by the next periodic renewal (≤ 6 s).
            await until(lambda: len(x32.meters) == 2 and len(x32.remote) == 1, 12,
                        "re-subscribed")  # fmt: skip

            # Past 30 s: still subscribed (renewed before the desks' 10 s lapse), meters fresh.
            while time.monotonic() - started < 32:
                await until(lambda: len(xair.meters) == 1 and len(xair.remote) == 1, 2,
                            "xair subscriptions alive")  # fmt: skip
                await until(lambda: len(x32.remote) == 1, 2, "x32 xremote alive")
                import asyncio

                await asyncio.sleep(1)
            assert xair.log.count("/xremote") >= 3 and xair.log.count("/meters") >= 3
            # Renewed on a timer well inside the desks' 10 s, whatever the poll interval (it was
            # 9.0–10.08 s apart, and the desk dropped us): never a lapsed subscription.
            for what in ("/xremote", "/meters /meters/1"):
                times = [t for t, _addr, w in xair.renewals if w == what]
                gaps = [b - a for a, b in itertools.pairwise(times)]
                assert gaps and max(gaps) <= 6.5, (what, gaps)
            assert xair.lapses == []
            for room in ("r301", "r302"):
                state = _state(daemon, room, "mixer")
                assert isinstance(state.get("ch01_level_dbfs"), float), state

            # A desk that stops answering goes offline; it comes back by itself.
            xair.silent = True
            await until(lambda: _alert(rec, "r302", "r302.mixer.online.min") is not None, 15,
                        "mixer offline alert")  # fmt: skip
            assert daemon.pollers[("r301", "mixer")].online  # the other desk is untouched
            xair.silent = False
            await until(lambda: _alert(rec, "r302", "r302.mixer.online.min") is None, 30,
                        "mixer back online")  # fmt: skip
    finally:
        await x32.stop()
        await xair.stop()


async def test_soundcheck_passes_in_a_good_room_and_fails_with_reasons(
    tmp_path: Path, mosquitto: Mosquitto, recorder_factory: Any
) -> None:
    rooms: list[dict[str, Any]] = []
    sims: list[tuple[MixerSim, RtpAudioSource]] = []
    for room_id, kind in (("r301", "x32"), ("r302", "xair")):
        audio = RoomAudio()
        mixer = MixerSim(kind, room=audio, tone_channel=16 if kind == "xair" else None)
        await mixer.start()
        port = _free_port(udp=True)
        source = RtpAudioSource(
            audio, ("127.0.0.1", port), encoding="L16" if kind == "xair" else "L24"
        )
        await source.start()
        sims.append((mixer, source))
        mixer_cfg: dict[str, Any] = {
            "id": "mixer",
            "driver": kind,
            "host": f"127.0.0.1:{mixer.port}",
        }
        if kind == "xair":
            mixer_cfg["test_channel"] = 16
        rooms.append(_room(room_id, [
            mixer_cfg,
            {"id": "mic", "driver": "audio-probe", "listen": f"127.0.0.1:{port}",
             "encoding": source.encoding, "calibration_db": CALIBRATION_DB},
        ]))  # fmt: skip
    cfg = _site(tmp_path, mosquitto, rooms)
    rec = recorder_factory(mosquitto.port)
    (x32, _), (xair, xair_source) = sims
    room = x32.room
    try:
        async with running(cfg) as daemon:
            await until(
                lambda: _state(daemon, "r301", "mic").get("sound_level_db") is not None,
                10,
                "probe measuring",
            )
            readings = _state(daemon, "r301", "mic")
            assert 30 < readings["sound_level_db"] < 45  # the quiet room, about 35 dB(A)

            good = await _command(rec, "r301", "mixer", "soundcheck", {})
            assert good["ok"], good
            report = good["result"]
            assert report["passed"], report
            assert report["measured"]["tone"]["level_db"] >= 85
            assert report["measured"]["snr_db"] >= 40
            assert x32.params["/-stat/osc/on"] == 0  # switched off again
            await rec.wait_for(
                lambda m: m.topic == f"{BASE}/r301/events" and m.json().get("type") == "soundcheck"
            )
            xair_ok = await _command(rec, "r302", "mic", "soundcheck", {})
            assert xair_ok["ok"] and xair_ok["result"]["passed"], xair_ok
            assert xair.params["/ch/16/mix/on"] == 0

            room.noise_db = 60.0  # noisy: the air handling roars
            noisy = (await _command(rec, "r301", "mixer", "soundcheck", {}))["result"]
            assert not noisy["passed"]
            assert any(r.startswith("signal-to-noise") for r in noisy["reasons"]), noisy
            room.noise_db = 38.0

            x32.params["/main/st/mix/fader"] = 0.5  # quiet: main at -10 dB → 80 dB in the room
            quiet = (await _command(rec, "r301", "mixer", "soundcheck", {}))["result"]
            assert not quiet["passed"]
            assert [r.split(":")[0] for r in quiet["reasons"]] == ["sound level"], quiet
            x32.params["/main/st/mix/fader"] = 0.75

            room.dropouts_per_s = 4.0
            broken = (await _command(rec, "r301", "mixer", "soundcheck", {}))["result"]
            assert not broken["passed"]
            assert any(r.startswith("dropouts") for r in broken["reasons"]), broken
            room.dropouts_per_s = 0.0

            room.hum_db = 55.0
            hum = (await _command(rec, "r301", "mixer", "soundcheck", {}))["result"]
            assert not hum["passed"]
            assert any("50 Hz" in r for r in hum["reasons"]), hum
            await until(lambda: _alert(rec, "r301", "r301.mic.hum_db.max") is not None, 20,
                        "hum alert from the continuous probe")  # fmt: skip
            room.hum_db = None

            # A stream that stops: the probe goes offline, the mixer is unaffected.
            xair_source.paused = True
            await until(lambda: _alert(rec, "r302", "r302.mic.online.min") is not None, 10,
                        "probe offline")  # fmt: skip
            assert daemon.pollers[("r302", "mixer")].online
            xair_source.paused = False
            await until(lambda: _alert(rec, "r302", "r302.mic.online.min") is None, 30,
                        "probe back")  # fmt: skip
    finally:
        for mixer, source in sims:
            await source.stop()
            await mixer.stop()


async def test_probe_plays_a_wav_file_in_real_time(tmp_path: Path) -> None:
    import wave

    import numpy as np

    from roomd.audio import synth
    from roomd.drivers.audio_probe import AudioProbeConfig, AudioProbeDriver
    from roomd.drivers.base import DriverContext

    x = synth.tone(1000, -26.0, 48000) + synth.noise(-80.0, 48000, np.random.default_rng(1))
    path = tmp_path / "cal.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(np.clip(np.round(x * 32768), -32768, 32767).astype("<i2").tobytes())
    cfg = AudioProbeConfig(
        id="mic", driver="audio-probe", source="wav", file=path, calibration_db=120.0
    )
    probe = AudioProbeDriver(cfg, DriverContext())
    try:
        first = await probe.poll()
        assert first["sound_level_db"] is None  # nothing heard yet
        await asyncio.sleep(1.1)
        readings = await probe.poll()
        assert readings["sound_level_db"] == pytest.approx(94.0, abs=0.3)  # the calibrator
        assert readings["audio_dropouts"] == 0
    finally:
        await probe.close()
