"""A simulated site: every room's devices served on 127.0.0.1 and pseudo-terminals, plus the
site config that polls them."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..daemon.units import parse_duration
from .escvp21 import EscVp21Sim
from .knx import ROOM_ADDRESSES, KnxGatewaySim
from .mixer import CALIBRATION_DB, MixerSim, RoomAudio, RtpAudioSource
from .modbus import ModbusRtuSim, ModbusTcpSim, SimSensor
from .nfc import ReaderSim, card_uid, tap_script
from .pjlink import FAULTS as PJ_FAULTS
from .pjlink import PJLinkSim, ProjectorState, SearchResponder
from .scenario import SCENARIOS, Scenario
from .snmp import SnmpAgentSim


@dataclass
class SimRoom:
    index: int
    id: str
    name: str
    tcp: dict[str, ModbusTcpSim] = field(default_factory=dict)
    rtu: ModbusRtuSim | None = None
    rtu_units: dict[str, SimSensor] = field(default_factory=dict)
    projector: PJLinkSim | None = None
    planned_projector_faults: frozenset[str] = frozenset()
    serial_projector: EscVp21Sim | None = None  # an RS-232 (ESC/VP21) projector on a pty
    reader: ReaderSim | None = None  # the sign-in reader at the door
    roster: Path | None = None
    audio: RoomAudio | None = None
    mixer: MixerSim | None = None
    audio_source: RtpAudioSource | None = None
    probe_port: int = 0
    planned_main_mute: bool = False
    knx: KnxGatewaySim | None = None  # lights, blinds, contacts on KNX (r301)
    access_point: SnmpAgentSim | None = None
    switch_port: int = 0  # the room's ifIndex on the site's switch

    def sensor(self, device: str) -> SimSensor:
        if device in self.tcp:
            return self.tcp[device].sensor
        return self.rtu_units[device]


class SimulatedSite:
    def __init__(
        self,
        rooms: int = 3,
        scenario: str = "normal",
        rtu: bool = True,
        projectors: bool = True,
        readers: bool | None = None,
        tap_period: float = 8.0,
        audio: bool = True,
        building: bool = True,
    ) -> None:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r} (known: {', '.join(SCENARIOS)})")
        self.scenario: Scenario = SCENARIOS[scenario]
        self.n_rooms = rooms
        self.with_rtu = rtu
        self.with_projectors = projectors
        self.with_readers = rtu if readers is None else readers  # readers live on ptys too
        self.tap_period = tap_period
        self.with_audio = audio
        # The room's network (one switch for the site, an access point a room) and its
        # lights, blinds and contacts (KNX in the first room, a Modbus I/O module elsewhere).
        self.with_building = building
        self.switch: SnmpAgentSim | None = None
        self.workdir = Path(tempfile.mkdtemp(prefix="roomd-sim-"))
        self._taps: list[asyncio.Task[None]] = []
        self.rooms: list[SimRoom] = []
        self.search: SearchResponder | None = None
        self.search_port = 0
        self.projector_port = 0
        self.t0 = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def _source(self, room: int) -> Any:
        return lambda metric: self.scenario.value(room, metric, self.elapsed())

    async def start(self) -> SimulatedSite:
        for i in range(self.n_rooms):
            number = 301 + i
            room = SimRoom(index=i, id=f"r{number}", name=f"City Hall {number}")
            env = SimSensor.of("generic-iaq")
            env.source = self._source(i)
            room.tcp["env"] = await ModbusTcpSim([env]).start()
            if i == 1:  # every shipped model is served somewhere: SCD30 on TCP here
                scd30 = SimSensor.of("scd30")
                scd30.source = self._source(i)
                room.tcp["scd30"] = await ModbusTcpSim([scd30]).start()
            if self.with_rtu:
                climate = SimSensor.of("xy-md02", unit=1)
                co2 = SimSensor.of("senseair-s8", unit=254)
                climate.source = co2.source = self._source(i)
                units = [climate, co2]
                room.rtu_units = {"climate": climate, "co2": co2}
                if i == 1:  # and an RS-485 lux sensor on this room's bus
                    lux = SimSensor.of("rs485-lux", unit=2)
                    lux.source = self._source(i)
                    units.append(lux)
                    room.rtu_units["lux"] = lux
                room.rtu = ModbusRtuSim(units).start()
                if i == 0 and self.with_projectors:
                    room.serial_projector = EscVp21Sim().start()
            if self.with_readers:
                framing = "rdm6300" if i % 2 == 0 else "line"
                room.reader = ReaderSim(self.workdir / f"{room.id}-reader", framing).plug()
                people = [card_uid(i * 1000 + n) for n in range(30)]
                room.roster = self.workdir / f"{room.id}-roster.csv"
                room.roster.write_text(
                    "uid,name\n"
                    + "".join(f"{u},Guest {i * 1000 + n}\n" for n, u in enumerate(people))
                )
                rng = random.Random(301 + i)
                unplug_rate = 0.02 if self.scenario.name == "demo" and i > 0 else 0.0
                self._taps.append(
                    asyncio.create_task(
                        # Pulled cables only where the scenario shows faults, never in r301.
                        tap_script(room.reader, people, self.tap_period, rng, unplug_rate),
                        name=f"taps-{room.id}",
                    )
                )
            if self.with_audio:
                await self._start_audio(room)
            if self.with_building:
                await self._start_building(room)
            self.rooms.append(room)
        if self.with_projectors:
            await self._start_projectors()
        self._task = asyncio.create_task(self._faults(), name="sim-faults")
        return self

    async def _start_building(self, room: SimRoom) -> None:
        if self.switch is None:
            self.switch = await SnmpAgentSim().start()
        room.switch_port = 10 + room.index
        self.switch.add_port(room.switch_port, mbps=1000)
        room.access_point = await SnmpAgentSim.access_point([-48, -55, -61, -58]).start()
        if room.index == 0:
            room.knx = await KnxGatewaySim().start()
        else:
            room.tcp["io"] = await ModbusTcpSim([SimSensor.of("io-8di-8do-room")]).start()

    async def _start_audio(self, room: SimRoom) -> None:
        """A mixer (X32 in most rooms, an X-Air with a test player on channel 16 in r302) and
        a measurement microphone streaming RTP L24 to the probe's port."""
        room.audio = RoomAudio()
        if room.index % 3 == 1:
            room.mixer = MixerSim("xair", name=f"{room.id}-xr18", room=room.audio, tone_channel=16)
        else:
            room.mixer = MixerSim("x32", name=f"{room.id}-x32", room=room.audio)
        await room.mixer.start()
        room.probe_port = _free_port(udp=True)
        room.audio_source = RtpAudioSource(room.audio, ("127.0.0.1", room.probe_port))
        await room.audio_source.start()

    async def _start_projectors(self) -> None:
        # Every projector on the same port at its own loopback address (127.0.1.N), as on a
        # real network, so discovery can say where each one is. Fall back to 127.0.0.1 with
        # one port each where those addresses cannot be bound.
        for attempt in range(20):
            port = _free_port()
            started: list[PJLinkSim] = []
            try:
                for room in self.rooms:
                    state = ProjectorState(
                        name=f"{room.name} projector",
                        mac=f"00:50:56:01:{room.index // 256:02x}:{room.index % 256:02x}",
                        serial=f"SIM{301 + room.index}",
                    )
                    sim = PJLinkSim(state, host=f"127.0.1.{room.index + 1}", port=port)
                    started.append(await sim.start())
            except OSError:
                for sim in started:
                    await sim.stop()
                if attempt < 19:
                    continue
                started = [await PJLinkSim(ProjectorState()).start() for _ in self.rooms]
            for room, sim in zip(self.rooms, started, strict=True):
                room.projector = sim
            self.projector_port = started[0].port if started else 0
            break
        self.search, self.search_port = await SearchResponder.start(
            [r.projector for r in self.rooms if r.projector is not None]
        )

    async def _faults(self) -> None:
        while True:
            t = self.elapsed()
            for room in self.rooms:
                for device in [*room.tcp, *room.rtu_units]:
                    sensor = room.sensor(device)
                    planned = self.scenario.fault(room.index, device, t)
                    if sensor.planned != planned:
                        sensor.fault = sensor.planned = planned
                if room.projector is not None:
                    wanted = self.scenario.projector_faults(room.index, t)
                    if wanted != room.planned_projector_faults:
                        faults = room.projector.state.faults
                        faults.difference_update(room.planned_projector_faults - wanted)
                        faults.update(wanted)
                        room.planned_projector_faults = wanted
                if room.audio is not None and room.mixer is not None:
                    self._apply_audio(room, t)
                if room.access_point is not None and room.index == 2:
                    # The demo's r303: its Wi-Fi clients drift away for part of the loop.
                    weak = self.scenario.name == "demo" and 20 <= t % 90 < 80
                    room.access_point.clients([-66, -71, -74] if weak else [-48, -55, -61])
            await asyncio.sleep(0.5)

    def _apply_audio(self, room: SimRoom, t: float) -> None:
        assert room.audio is not None and room.mixer is not None
        plan = self.scenario.audio(room.index, t)
        room.audio.talking = bool(plan.get("talking", False))
        if "hum_db" in plan:
            hum = plan["hum_db"]
            room.audio.hum_db = None if hum is None else float(hum)
        muted = bool(plan.get("main_muted", False))
        if muted != room.planned_main_mute:
            room.mixer.mute_main(muted)
            room.planned_main_mute = muted

    async def stop(self) -> None:
        for tap in self._taps:
            tap.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for room in self.rooms:
            for sim in room.tcp.values():
                await sim.stop()
            if room.rtu is not None:
                room.rtu.stop()
            if room.projector is not None:
                await room.projector.stop()
            if room.serial_projector is not None:
                room.serial_projector.stop()
            if room.reader is not None:
                room.reader.unplug()
            if room.audio_source is not None:
                await room.audio_source.stop()
            if room.mixer is not None:
                await room.mixer.stop()
            if room.access_point is not None:
                room.access_point.close()
            if room.knx is not None:
                room.knx.close()
        if self.switch is not None:
            self.switch.close()
        if self.search is not None:
            self.search.close()
        shutil.rmtree(self.workdir, ignore_errors=True)  # reader links, rosters

    def config(
        self,
        site: str = "hq",
        mqtt_url: str = "mqtt://127.0.0.1:1883",
        http_listen: str = "127.0.0.1:9880",
        state_dir: str = "./state",
        poll: str = "2s",
    ) -> dict[str, Any]:
        rooms = []
        for room in self.rooms:
            devices: list[dict[str, Any]] = [
                {
                    "id": dev,
                    "driver": "modbus",
                    "model": sim.sensor.model.model,
                    "host": sim.address,
                    "poll": poll,
                    "timeout": "1s",
                }
                for dev, sim in room.tcp.items()
            ]
            if room.rtu is not None:
                devices += [
                    {
                        "id": dev,
                        "driver": "modbus",
                        "model": unit.model.model,
                        "port": room.rtu.path,
                        "unit": unit.unit,
                        "poll": poll,
                        "timeout": "500ms",
                        # one bus, one line setting: the XY-MD02 is set to 8N1 like the others
                        "parity": "N",
                    }
                    for dev, unit in room.rtu_units.items()
                ]
            if room.projector is not None:
                devices.append(
                    {
                        "id": "projector",
                        "driver": "pjlink",
                        "model": "roomd-simulator",
                        "host": room.projector.address,
                        "poll": poll if parse_duration(poll) >= 1 else "1s",
                        "timeout": "2s",
                    }
                )
            if room.serial_projector is not None:
                devices.append(
                    {
                        "id": "side-projector",
                        "driver": "serial-projector",
                        "model": "epson-escvp21",
                        "port": room.serial_projector.path,
                        "rated_lumens": 3500,
                        "poll": poll,
                        "timeout": "1s",
                    }
                )
            if room.mixer is not None:
                mixer: dict[str, Any] = {
                    "id": "mixer",
                    "driver": room.mixer.kind,
                    "host": f"127.0.0.1:{room.mixer.port}",
                    "channels": [1, 2],
                    "poll": "1s",
                }
                if room.mixer.tone_channel is not None:
                    mixer["test_channel"] = room.mixer.tone_channel
                devices.append(mixer)
                devices.append(
                    {
                        "id": "mic",
                        "driver": "audio-probe",
                        "listen": f"127.0.0.1:{room.probe_port}",
                        "encoding": "L24",
                        "calibration_db": CALIBRATION_DB,
                        "poll": "1s",
                    }
                )
            devices += self._building_devices(room)
            entry: dict[str, Any] = {"id": room.id, "name": room.name, "area_m2": 60, "seats": 40}
            if room.reader is not None:
                devices.append(
                    {
                        "id": "reader",
                        "driver": "nfc-serial",
                        "port": room.reader.path,
                        "framing": room.reader.framing,
                        # The simulated line reader prints hex: "auto" would take an
                        # all-digit 10-character UID for an EM4100 decimal number.
                        **({"format": "hex"} if room.reader.framing == "line" else {}),
                        "poll": "2s",
                    }
                )
                entry["roster"] = str(room.roster)
            rooms.append({**entry, "devices": devices})
        return {
            "site": site,
            "mqtt": {"url": mqtt_url},
            "http": {"listen": http_listen},
            "state_dir": state_dir,
            "profile": "standard",
            "rooms": rooms,
        }

    def _building_devices(self, room: SimRoom) -> list[dict[str, Any]]:
        devices: list[dict[str, Any]] = []
        if self.switch is not None and room.switch_port:
            devices.append(
                {"id": "port", "driver": "snmp", "model": "if-mib-port",
                 "host": self.switch.address, "index": room.switch_port, "poll": "10s"}
            )  # fmt: skip
        if room.access_point is not None:
            devices.append(
                {"id": "wifi", "driver": "snmp", "model": "mikrotik-wireless",
                 "host": room.access_point.address, "poll": "10s"}
            )  # fmt: skip
        if room.knx is not None:
            devices.append(
                {"id": "knx", "driver": "knx", "gateway": room.knx.address,
                 "local_ip": "127.0.0.1", "model": "knx-room", "addresses": ROOM_ADDRESSES,
                 "poll": "30s"}
            )  # fmt: skip
        return devices

    def write_config(self, path: Path, **kwargs: Any) -> None:
        text = "# Written by `roomd simulate`: polls the simulated devices it serves.\n"
        text += yaml.safe_dump(self.config(**kwargs), sort_keys=False, width=120)
        path.write_text(text, encoding="utf-8")


def _free_port(udp: bool = False) -> int:
    import socket

    with socket.socket(type=socket.SOCK_DGRAM if udp else socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


MIXER_FAULTS = "none|silent|garbage|drop_subscriptions|mute_main|unmute_main"


class SimControl:
    """A line-based control port for a running simulator (try: `nc 127.0.0.1 PORT`).

    Commands: `list`; `fault ROOM DEVICE none|silent|exception|corrupt|slow|disconnect`;
    `set ROOM DEVICE METRIC VALUE`; `unset ROOM DEVICE METRIC`; projectors, readers, `mixer`
    (`fault ROOM mixer silent|garbage|drop_subscriptions|mute_main|...`) and the room's sound
    (`set ROOM audio noise_db|hum_db|dropouts_per_s N`, `fault ROOM audio stop|none`).
    Replies `ok ...` or `error: ...`.
    This is the simulator's own management interface, not a device protocol.
    """

    def __init__(self, site: SimulatedSite, host: str = "127.0.0.1", port: int = 0) -> None:
        self.site = site
        self.host = host
        self.port = port
        self.server: asyncio.Server | None = None

    async def start(self) -> SimControl:
        self.server = await asyncio.start_server(self._client, self.host, self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write((self.execute(line.decode(errors="replace")) + "\n").encode())
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def execute(self, line: str) -> str:
        from .modbus import FAULTS

        words = line.split()
        if not words:
            return "error: empty command"
        cmd, args = words[0], words[1:]
        if cmd == "list":
            out = []
            for room in self.site.rooms:
                for device in [*room.tcp, *room.rtu_units]:
                    out.append(f"{room.id}/{device}:{room.sensor(device).fault}")
                if room.projector is not None:
                    faults = ",".join(sorted(room.projector.state.faults)) or "none"
                    out.append(f"{room.id}/projector:{faults}")
                if room.mixer is not None:
                    m = room.mixer
                    main = "main_muted" if m.params.get(m.model.main_on) == 0 else "main_open"
                    state = "silent" if m.silent else "garbage" if m.garbage else main
                    out.append(f"{room.id}/mixer:{state}")
            return "ok " + " ".join(out)
        if cmd not in ("fault", "set", "unset") or len(args) < 2:
            return "error: commands: list | fault ROOM DEVICE FAULT | set ROOM DEVICE METRIC VALUE"
        target = next((r for r in self.site.rooms if r.id == args[0]), None)
        if target is None:
            return f"error: no room {args[0]!r}"
        room = target
        if args[1] == "projector" and room.projector is not None:
            return self._projector(room, cmd, args[2:])
        if args[1] == "reader" and room.reader is not None:
            return self._reader(room, cmd, args[2:])
        if args[1] == "mixer" and room.mixer is not None:
            return self._mixer(room, cmd, args[2:])
        if args[1] in ("audio", "mic") and room.audio is not None:
            return self._audio(room, cmd, args[2:])
        try:
            sensor = room.sensor(args[1])
        except KeyError:
            return f"error: no device {args[1]!r} in {room.id}"
        if cmd == "fault":
            if len(args) != 3 or args[2] not in FAULTS:
                return f"error: fault is one of {', '.join(FAULTS)}"
            sensor.fault = args[2]
            return f"ok {room.id}/{args[1]} fault {args[2]}"
        if cmd == "set":
            if len(args) != 4:
                return "error: set ROOM DEVICE METRIC VALUE"
            if args[2] not in sensor.model.metrics:
                known = ", ".join(sensor.model.metrics)
                return f"error: {args[1]} has no metric {args[2]!r} ({known})"
            try:
                sensor.set(**{args[2]: float(args[3])})
            except ValueError:
                return f"error: not a number: {args[3]!r}"
            return f"ok {room.id}/{args[1]} {args[2]}={args[3]}"
        if len(args) != 3:
            return "error: unset ROOM DEVICE METRIC"
        sensor.pinned.pop(args[2], None)
        return f"ok {room.id}/{args[1]} {args[2]} follows the scenario"

    def _projector(self, room: SimRoom, cmd: str, args: list[str]) -> str:
        assert room.projector is not None
        st = room.projector.state
        if cmd == "fault":
            if len(args) != 1 or args[0] not in (*PJ_FAULTS, "none"):
                return f"error: projector faults: none, {', '.join(PJ_FAULTS)}"
            if args[0] == "none":
                st.faults.clear()
            else:
                st.faults.add(args[0])
            return f"ok {room.id}/projector faults {','.join(sorted(st.faults)) or 'none'}"
        if cmd == "set" and len(args) == 2 and args[0] in ("lamp_hours", "filter_hours"):
            try:
                setattr(st, args[0], float(args[1]))
            except ValueError:
                return f"error: not a number: {args[1]!r}"
            return f"ok {room.id}/projector {args[0]}={args[1]}"
        if cmd == "set" and len(args) == 2 and args[0] == "power" and args[1] in ("on", "off"):
            st.set_power(args[1] == "on")
            return f"ok {room.id}/projector power {st.power}"
        return "error: projector: fault NAME | set lamp_hours|filter_hours N | set power on|off"

    def _mixer(self, room: SimRoom, cmd: str, args: list[str]) -> str:
        mixer = room.mixer
        assert mixer is not None
        if cmd == "fault" and len(args) == 1:
            fault = args[0]
            if fault in ("none", "silent", "garbage"):
                mixer.silent = fault == "silent"
                mixer.garbage = fault == "garbage"
                if fault == "none":  # undoes every fault, the muted main mix included
                    mixer.mute_main(False)
            elif fault == "drop_subscriptions":
                mixer.drop_subscriptions()
            elif fault in ("mute_main", "unmute_main"):
                mixer.mute_main(fault == "mute_main")
            else:
                return f"error: mixer faults: {MIXER_FAULTS}"
            return f"ok {room.id}/mixer {fault}"
        return f"error: mixer: fault {MIXER_FAULTS}"

    def _audio(self, room: SimRoom, cmd: str, args: list[str]) -> str:
        audio, source = room.audio, room.audio_source
        assert audio is not None and source is not None
        if cmd == "fault" and args in (["stop"], ["none"]):
            source.paused = args[0] == "stop"
            return f"ok {room.id}/audio stream {'stopped' if source.paused else 'running'}"
        numeric = ("noise_db", "hum_db", "dropouts_per_s")
        flags = ("talking", "clipping")
        if cmd == "set" and len(args) == 2 and args[0] in (*numeric, *flags):
            key, raw = args
            if key in flags:
                setattr(audio, key, raw.lower() in ("1", "true", "on", "yes"))
            elif key == "hum_db" and raw.lower() in ("none", "off"):
                audio.hum_db = None
            else:
                try:
                    setattr(audio, key, float(raw))
                except ValueError:
                    return f"error: not a number: {raw!r}"
            return f"ok {room.id}/audio {key}={raw}"
        return (
            "error: audio: set noise_db|hum_db|dropouts_per_s N | set talking|clipping on|off"
            " | fault stop|none"
        )

    def _reader(self, room: SimRoom, cmd: str, args: list[str]) -> str:
        reader = room.reader
        assert reader is not None
        if cmd == "set" and len(args) == 2 and args[0] == "tap":
            reader.tap(args[1].upper())
            return f"ok {room.id}/reader tapped {args[1].upper()}"
        if cmd == "fault" and args == ["unplug"]:
            reader.unplug()
            return f"ok {room.id}/reader unplugged"
        if cmd == "fault" and args in (["none"], ["plug"]):
            if not reader.plugged:
                reader.plug()
            return f"ok {room.id}/reader plugged in"
        if cmd == "fault" and args == ["corrupt"]:
            reader.corrupt()
            return f"ok {room.id}/reader sent a corrupt frame"
        return "error: reader: set tap UID | fault unplug|plug|corrupt"
