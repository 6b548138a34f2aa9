"""A simulated PJLink projector (Class 1 or 2) on TCP, and a Class 2 search responder on UDP.

State is realistic enough for rules and commands: warm-up and cool-down take time, lamp and
filter hours advance while on (optionally accelerated), each input has a signal resolution.
Faults and field quirks are switches, so every tolerance of the driver has a peer to test it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from dataclasses import dataclass, field

from ..drivers import pjlink_protocol as pj

FAULTS = (
    "lamp",
    "fan",
    "temperature",
    "err3_standby",
    "silent",
    "drop",
    "garbage",
    "slow",
    "failure",  # ERR4 (projector/display failure) to every control and status request
)
# The two mute flags → the code a projector reports (PJLink AVMT: 11 video, 21 audio, 31 both).
_AVMT_OF = {(True, True): "31", (True, False): "11", (False, True): "21", (False, False): "30"}
_AVMT_SET = {"10": ("video", False), "11": ("video", True), "20": ("audio", False),
             "21": ("audio", True), "30": ("both", False), "31": ("both", True)}  # fmt: skip
# Class 1 and 2 commands this projector knows (anything else: ERR1, undefined command).
_KNOWN = {
    "POWR", "INPT", "AVMT", "ERST", "LAMP", "INST", "NAME", "INF1", "INF2", "INFO", "CLSS",
    "SNUM", "SVER", "INNM", "IRES", "RRES", "FILT", "RLMP", "RFIL", "FREZ", "SVOL", "MVOL",
}  # fmt: skip
_IDENTITY = {"CLSS", "NAME", "INF1", "INF2", "INFO", "SNUM", "SVER", "INST", "INNM", "RLMP", "RFIL"}
QUIRKS = ("lowercase", "nul_padding", "class_text", "lkup_before_reply", "one_connection")


@dataclass
class ProjectorState:
    pj_class: int = 2
    password: str | None = None
    power: str = "off"
    lamps: int = 1
    lamp_hours: float = 1200.0
    filter_hours: float = 800.0
    input: str = "31"
    inputs: dict[str, str] = field(
        default_factory=lambda: {"11": "-", "31": "1920x1080", "32": "1280x720", "51": "1920x1080"}
    )
    input_names: dict[str, str] = field(
        default_factory=lambda: {"11": "RGB", "31": "HDMI 1", "32": "HDMI 2", "51": "LAN"}
    )
    av_mute: str = "30"
    frozen: bool = False
    speaker_volume: int = 10  # SVOL steps, 0..20
    mic_volume: int = 10  # MVOL steps, 0..20
    name: str = "Room Projector"
    manufacturer: str = "ROOMD"
    product: str = "SIM-PJ 2000"
    serial: str = "SIM0001"
    software: str = "1.0.0"
    mac: str = "00:11:22:33:44:55"
    warmup: float = 3.0
    cooldown: float = 3.0
    hours_per_second: float = 0.0  # accelerate lamp/filter ageing
    idle_close: float = 30.0  # the projector drops a connection this long after its last reply
    slow_delay: float = 3.0
    faults: set[str] = field(default_factory=set)
    quirks: set[str] = field(default_factory=set)
    _since: float = field(default_factory=time.monotonic)
    _aged_at: float = field(default_factory=time.monotonic)

    def tick(self) -> None:
        now = time.monotonic()
        if self.power == "on" and self.hours_per_second:
            self.lamp_hours += (now - self._aged_at) * self.hours_per_second
            self.filter_hours += (now - self._aged_at) * self.hours_per_second
        self._aged_at = now
        if self.power == "warming" and now - self._since >= self.warmup:
            self.power, self._since = "on", now
        elif self.power == "cooling" and now - self._since >= self.cooldown:
            self.power, self._since = "off", now

    def set_power(self, on: bool) -> str:
        self.tick()
        if on and self.power in ("off",):
            self.power, self._since = "warming", time.monotonic()
        elif not on and self.power in ("on",):
            self.power, self._since = "cooling", time.monotonic()
        elif (on and self.power == "cooling") or (not on and self.power == "warming"):
            return "ERR3"
        return "OK"

    def erst(self) -> str:
        fan = "1" if "fan" in self.faults else "0"
        lamp = "2" if "lamp" in self.faults else "0"
        temp = "2" if "temperature" in self.faults else "0"
        return f"{fan}{lamp}{temp}000"


class PJLinkSim:
    """One projector on a TCP port (default: any free port on 127.0.0.1)."""

    def __init__(self, state: ProjectorState | None = None, host: str = "127.0.0.1", port: int = 0):
        self.state = state or ProjectorState()
        self.host = host
        self.port = port
        self.server: asyncio.Server | None = None
        self.sessions = 0
        self.connections = 0
        self.commands: list[str] = []
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> PJLinkSim:
        self.server = await asyncio.start_server(
            self._session, self.host, self.port, reuse_address=True
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in list(self._writers):
                w.close()
            await self.server.wait_closed()
            self.server = None

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        st = self.state
        self.connections += 1
        if "one_connection" in st.quirks and self.sessions:
            writer.close()  # busy with another controller
            return
        self.sessions += 1
        self._writers.add(writer)
        try:
            random = secrets.token_hex(4)
            greeting = f"PJLINK 1 {random}" if st.password else "PJLINK 0"
            writer.write(greeting.encode() + b"\r")
            authed = st.password is None
            while True:
                try:
                    async with asyncio.timeout(st.idle_close):
                        raw = await reader.readuntil(b"\r")
                except (
                    TimeoutError,
                    asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError,
                    ConnectionError,
                ):
                    return
                line = raw.decode("utf-8", errors="replace").strip("\r\n\x00 ")
                if not authed:
                    expected = pj.digest(random, st.password or "")
                    if not line.startswith(expected):
                        writer.write(b"PJLINK ERRA\r")
                        await writer.drain()
                        return
                    line, authed = line[len(expected) :], True
                if "silent" in st.faults:
                    continue
                if "drop" in st.faults:
                    return
                if "garbage" in st.faults:
                    writer.write(os.urandom(48).replace(b"\r", b"") + b"\r")
                    await writer.drain()
                    continue
                if "slow" in st.faults:
                    await asyncio.sleep(st.slow_delay)
                self.commands.append(line)
                reply = self.answer(line)
                if reply is None:
                    continue  # not a PJLink request: a projector answers nothing
                out = b""
                if "lkup_before_reply" in st.quirks:
                    out += f"%2LKUP={st.mac}\r".encode()
                out += reply.encode()
                if "lowercase" in st.quirks:
                    out = out[:2] + out[2:6].lower() + out[6:]
                if "nul_padding" in st.quirks:
                    out = b"\x00" + out.replace(b"\r", b"\r\x00")
                writer.write(out)
                await writer.drain()
        finally:
            self.sessions -= 1
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    def notify(self, to: tuple[str, int], line: str) -> None:
        """Send a Class 2 status notification (e.g. `%2ERST=020000`) from this projector."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((self.host, 0))
            s.sendto(line.encode() + b"\r", to)

    def answer(self, line: str) -> str | None:
        """One request line (`%1POWR ?`) → its reply line with CR; None for a line that is not
        a request at all (real projectors stay silent rather than invent a reply)."""
        st = self.state
        st.tick()
        if len(line) < 7 or line[0] != "%" or line[1] not in "12" or line[6] != " ":
            return None
        cls, cmd, param = int(line[1]), line[2:6].upper(), line[7:].strip()

        def r(value: str) -> str:
            return f"%{cls}{cmd}={value}\r"

        if cls > st.pj_class or cmd not in _KNOWN:
            return r("ERR1")  # undefined command, with or without a parameter
        if "failure" in st.faults and cmd not in _IDENTITY:
            return r("ERR4")
        standby_err3 = "err3_standby" in st.faults and st.power != "on"
        if cmd == "POWR":
            if param == "?":
                return r({"off": "0", "on": "1", "cooling": "2", "warming": "3"}[st.power])
            if param in ("0", "1"):
                return r(st.set_power(param == "1"))
            return r("ERR2")
        if cmd == "INPT":
            if param == "?":
                return r("ERR3") if standby_err3 else r(st.input)
            if param not in st.inputs:
                return r("ERR2")
            if st.power != "on":
                return r("ERR3")
            st.input = param
            return r("OK")
        if cmd == "AVMT":
            if param == "?":
                return r("ERR3") if standby_err3 else r(st.av_mute)
            if param not in _AVMT_SET:
                return r("ERR2")
            if st.power != "on":
                return r("ERR3")
            # Video and audio mute are two flags: "20" (audio off) leaves video muted.
            video, audio = st.av_mute in ("11", "31"), st.av_mute in ("21", "31")
            target, mute = _AVMT_SET[param]
            if target in ("video", "both"):
                video = mute
            if target in ("audio", "both"):
                audio = mute
            st.av_mute = _AVMT_OF[(video, audio)]
            return r("OK")
        if cls == 2 and cmd == "FREZ":
            if param == "?":
                return r("ERR3") if st.power != "on" else r("1" if st.frozen else "0")
            if param not in ("0", "1"):
                return r("ERR2")
            if st.power != "on":
                return r("ERR3")
            st.frozen = param == "1"
            return r("OK")
        if cls == 2 and cmd in ("SVOL", "MVOL"):
            if param not in ("0", "1"):  # down / up; there is no query
                return r("ERR2")
            attr = "speaker_volume" if cmd == "SVOL" else "mic_volume"
            setattr(st, attr, max(0, min(20, getattr(st, attr) + (1 if param == "1" else -1))))
            return r("OK")
        if param != "?" and cmd not in ("INNM",):
            return r("ERR2")
        if cmd == "ERST":
            return r("ERR3") if standby_err3 else r(st.erst())
        if cmd == "LAMP":
            if st.lamps == 0:
                return r("ERR1")
            if standby_err3:
                return r("ERR3")
            on = "1" if st.power == "on" else "0"
            return r(" ".join(f"{int(st.lamp_hours)} {on}" for _ in range(st.lamps)))
        if cmd == "NAME":
            return r(st.name)
        if cmd == "INF1":
            return r(st.manufacturer)
        if cmd == "INF2":
            return r(st.product)
        if cmd == "INFO":
            return r("roomd simulated projector")
        if cmd == "CLSS":
            return r(f"Class {st.pj_class}" if "class_text" in st.quirks else str(st.pj_class))
        if cmd == "INST":
            return r(" ".join(st.inputs))
        if cls == 2:
            if cmd == "IRES":
                return r("ERR3") if st.power != "on" else r(st.inputs.get(st.input, "-"))
            if cmd == "RRES":
                return r("1920x1080")
            if cmd == "FILT":
                return r(str(int(st.filter_hours)))
            if cmd == "SNUM":
                return r(st.serial)
            if cmd == "SVER":
                return r(st.software)
            if cmd == "INNM":
                code = param.lstrip("?")
                return r(st.input_names[code]) if code in st.input_names else r("ERR2")
            if cmd == "RLMP":
                return r("ELPLP96")
            if cmd == "RFIL":
                return r("ELPAF32")
        return r("ERR1")


class SearchResponder(asyncio.DatagramProtocol):
    """Answers `%2SRCH` on UDP with one `%2ACKN=<mac>` per Class 2 projector, each sent from
    the projector's own address (so a discoverer learns where to connect)."""

    def __init__(self, projectors: list[PJLinkSim]) -> None:
        self.projectors = projectors
        self.transport: asyncio.DatagramTransport | None = None
        self.searches = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if pj.clean(data).upper() != "%2SRCH":
            return
        self.searches += 1
        for sim in self.projectors:
            if sim.state.pj_class < 2:
                continue
            reply = f"%2ACKN={sim.state.mac}\r".encode()
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.bind((sim.host, 0))
                    s.sendto(reply, addr)
            except OSError:
                pass

    @classmethod
    async def start(
        cls, projectors: list[PJLinkSim], host: str = "127.0.0.1", port: int = 0
    ) -> tuple[SearchResponder, int]:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(
            lambda: cls(projectors), local_addr=(host, port)
        )
        return proto, transport.get_extra_info("sockname")[1]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
