"""PJLink projectors (Class 1 and 2) over TCP 4352.

One connection per poll or command, closed afterwards: many projectors accept one connection at
a time (a controller that holds it locks out the room's touch panel) and close idle ones after
30 s anyway. One operation in flight per projector (a lock). Field tolerances: lower-case
replies, NUL padding, unsolicited `%2LKUP=`/status lines before a reply, `CLSS` answered as
`Class 1`, ERR3 while in standby (a value that is unavailable now, not a failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from ..daemon.profiles import ProjectorModel, load_projector_model
from ..daemon.units import Duration
from . import pjlink_protocol as pj
from . import register
from .base import (
    CommandError,
    DeviceAuthError,
    DeviceConfig,
    DeviceProtocolError,
    DeviceRefused,
    DeviceTimeout,
    DeviceUnreachable,
    Driver,
    DriverContext,
    Readings,
    ReadingValue,
    split_host,
)
from .inputs import InputMap
from .projector_hooks import ProjectorHooks

log = logging.getLogger("roomd.pjlink")
_PJLINK_INPUT = re.compile(r"[1-6][0-9A-Z]")

TRANSITIONAL = {"warming", "cooling"}
FAST_POLL = 2.0  # seconds, while warming or cooling (never below the model's min_poll)


class PJLinkConfig(DeviceConfig):
    driver: Literal["pjlink"]
    host: str
    password: SecretStr | None = None
    password_file: Path | None = None
    model: str = "generic"
    rated_lamp_hours: int | None = Field(None, ge=0)
    rated_filter_hours: int | None = Field(None, ge=0)
    rated_lumens: int | None = Field(None, ge=0)
    native_resolution: str | None = Field(None, pattern=r"^\d{3,5}x\d{3,5}$")
    pjlink_class: Literal["auto", 1, 2] = "auto"
    poll: Duration = 10.0
    timeout: Duration = 5.0
    # Listen for Class 2 status notifications (UDP) on HOST:PORT, e.g. "0.0.0.0:4352".
    notify_listen: str | None = None

    @field_validator("notify_listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None:
            _host, sep, port = value.rpartition(":")
            if not sep or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError("expected HOST:PORT, e.g. 0.0.0.0:4352")
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        split_host(value, pj.PORT)
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        load_projector_model(value)  # ProfileError is a ValueError: reported against `model`
        return value

    @model_validator(mode="after")
    def _checks(self) -> PJLinkConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give either password or password_file, not both")
        if self.password_file is not None and not self.password_file.is_file():
            raise ValueError(f"password_file: cannot read {self.password_file}")
        min_poll = load_projector_model(self.model).min_poll
        if self.poll < min_poll:
            raise ValueError(
                f"poll {self.poll:g}s is faster than model {self.model} allows ({min_poll:g}s)"
            )
        return self

    @property
    def projector_model(self) -> ProjectorModel:
        return load_projector_model(self.model)

    def secret(self) -> str | None:
        if self.password_file is not None:
            return self.password_file.read_text(encoding="utf-8").strip()
        return self.password.get_secret_value() if self.password else None


class PJLinkSession:
    """One TCP connection: greeting, optional MD5 auth, then queries one at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float):
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.prefix = b""  # the auth digest goes in front of the first command only
        self.notifications: list[pj.Reply] = []

    @classmethod
    async def open(
        cls, host: str, port: int, password: str | None, timeout: float
    ) -> PJLinkSession:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port, limit=1024)
        except TimeoutError:
            raise DeviceTimeout(f"no TCP connection to {host}:{port} within {timeout:g}s") from None
        except OSError as exc:
            raise DeviceUnreachable(
                f"cannot connect to {host}:{port}: {exc.strerror or exc}"
            ) from None
        session = cls(reader, writer, timeout)
        try:
            greeting = await session._read()
            if not isinstance(greeting, pj.Greeting):
                raise DeviceProtocolError(f"expected the PJLINK greeting, got {greeting}")
            if greeting.auth:
                if not password:
                    raise DeviceAuthError(
                        "projector requires a password (PJLINK 1); none configured"
                    )
                session.prefix = pj.digest(greeting.random, password).encode()
        except BaseException:
            session.close()
            raise
        return session

    async def _read(self) -> pj.Line:
        try:
            async with asyncio.timeout(self.timeout):
                raw = await self.reader.readuntil(b"\r")
        except TimeoutError:
            raise DeviceTimeout(f"no reply within {self.timeout:g}s") from None
        except asyncio.IncompleteReadError:
            raise DeviceUnreachable("connection closed by the projector") from None
        except asyncio.LimitOverrunError:
            raise DeviceProtocolError("line longer than 1 KiB without CR: garbage") from None
        except OSError as exc:
            raise DeviceUnreachable(f"connection lost: {exc.strerror or exc}") from None
        try:
            return pj.parse_line(raw)
        except pj.ProtocolError as exc:
            raise DeviceProtocolError(str(exc)) from None

    async def query(self, command: str, param: str = "?", cls: int = 1) -> pj.Reply:
        self.writer.write(self.prefix + pj.encode(command, param, cls))
        self.prefix = b""
        while True:
            line = await self._read()
            if isinstance(line, pj.AuthFailed):
                raise DeviceAuthError("wrong password (PJLINK ERRA)")
            if isinstance(line, pj.Reply):
                if line.command == command and line.cls == cls:
                    return line
                # Unsolicited notification (%2LKUP=, %2POWR=...) before our reply.
                self.notifications.append(line)
                continue
            raise DeviceProtocolError(f"unexpected {line} in place of a reply to {command}")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class NotificationListener(asyncio.DatagramProtocol):
    """Class 2 status notifications arrive by UDP from the projector's own address:
    `%2POWR=1`, `%2ERST=000200`, `%2INPT=31`, `%2LKUP=<mac>`. One listener per address,
    shared by every projector that names it."""

    def __init__(self) -> None:
        self.drivers: dict[str, list[PJLinkDriver]] = {}
        self.transport: asyncio.BaseTransport | None = None
        self.received = 0

    @classmethod
    async def open(cls, listen: str) -> NotificationListener:
        host, _, port = listen.rpartition(":")
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_datagram_endpoint(cls, local_addr=(host, int(port)))
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        for raw in data.split(b"\r"):
            try:
                line = pj.parse_line(raw)
            except pj.ProtocolError:
                continue
            if isinstance(line, pj.Reply):
                self.received += 1
                for driver in self.drivers.get(addr[0], []):
                    driver.on_notification(line)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@register
class PJLinkDriver(ProjectorHooks, Driver):
    kind = "pjlink"
    config_model = PJLinkConfig
    self_timed = True  # connect, greeting and every reply have their own timeout

    def __init__(self, config: DeviceConfig, context: DriverContext) -> None:
        super().__init__(config, context)
        assert isinstance(config, PJLinkConfig)
        self.cfg: PJLinkConfig = config
        self.host, self.port = split_host(config.host, pj.PORT)
        m = config.projector_model
        self.rated_lamp = config.rated_lamp_hours or m.rated_lamp_hours
        self.rated_filter = config.rated_filter_hours or m.rated_filter_hours
        self.rated_lumens = config.rated_lumens or m.rated_lumens
        self.min_poll = m.min_poll
        self.warmup = m.warmup
        self.inputs = InputMap(m.inputs or load_projector_model("generic").inputs)
        self.lock = asyncio.Lock()
        self.pj_class: int | None = (
            None if config.pjlink_class == "auto" else int(config.pjlink_class)
        )
        self.unsupported: set[str] = set()  # commands answered ERR1: not asked again
        self.power: str | None = None
        self._identified = False
        self._fault = False
        self._listening = False

    @property
    def metrics(self) -> list[str]:
        return [
            "projector_power",
            *(f"projector_error_{f}" for f in pj.ERST_FIELDS),
            "lamp_hours",
            "lamp_life_pct",
            "filter_hours",
            "filter_life_pct",
            "input",
            "input_name",
            "input_resolution",
            "input_lines",
            "av_mute",
            "rated_lumens",
            "projector_fault",
        ]

    @property
    def model_name(self) -> str:
        return self.cfg.model

    def config_warnings(self, thresholds: dict[str, Any]) -> list[str]:
        out = []
        t = thresholds.get("rated_lumens")
        minimum = getattr(t, "min", None)
        if self.rated_lumens is not None and minimum is not None and self.rated_lumens < minimum:
            out.append(
                f"rated brightness {self.rated_lumens} lm is below the standard's {minimum:g} lm"
            )
        if self.rated_lumens is None:
            out.append("rated brightness unknown: set rated_lumens or a model to check it")
        return out

    def next_interval(self, poll: float) -> float:
        if self.power in TRANSITIONAL:
            return max(self.min_poll, min(poll, FAST_POLL))
        return poll

    def _timeout(self) -> float:
        # Slow projectors answer late (or not) while warming up.
        return (
            max(self.cfg.timeout, min(self.warmup, 30.0))
            if self.power == "warming"
            else self.cfg.timeout
        )

    async def _session(self) -> PJLinkSession:
        return await PJLinkSession.open(self.host, self.port, self.cfg.secret(), self._timeout())

    async def _ask(self, s: PJLinkSession, command: str, cls: int = 1) -> str | None:
        """The value, or None when unavailable now (ERR3) or unsupported (ERR1)."""
        if command in self.unsupported:
            return None
        reply = await s.query(command, "?", cls)
        err = reply.error
        if err is None:
            return reply.param
        if err == "ERR1":
            self.unsupported.add(command)
            return None
        if err == "ERR3":
            return None
        if err == "ERR4":
            self._fault = True
            return None
        log.debug("%s %s answered %s", self.cfg.id, command, err)
        return None

    async def _listen(self) -> None:
        listen = self.cfg.notify_listen
        if listen is None or self._listening:
            return
        key = f"pjlink-notify:{listen}"
        listener = self.context.shared.get(key)
        if listener is None:
            try:
                listener = self.context.shared[key] = await NotificationListener.open(listen)
            except OSError as exc:
                log.error("%s: cannot listen for notifications on %s: %s", self.cfg.id, listen, exc)
                self._listening = True  # reported once; polling goes on
                return
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self.host, None, family=socket.AF_INET)
        for ip in {str(info[4][0]) for info in infos}:
            listener.drivers.setdefault(ip, []).append(self)
        self._listening = True

    def on_notification(self, line: pj.Reply) -> None:
        """A status change announced by the projector: pass it on at once."""
        try:
            if line.command == "POWR":
                self.power = pj.parse_power(line.param)
                update: Readings = {"projector_power": self.power}
            elif line.command == "ERST":
                update = dict(pj.parse_erst(line.param))
            elif line.command == "INPT":
                update = {"input": line.param, "input_name": self.inputs.name_of(line.param)}
            else:
                log.info("%s: notification %s=%s", self.cfg.id, line.command, line.param)
                return
        except pj.ProtocolError as exc:
            log.debug("%s: bad notification: %s", self.cfg.id, exc)
            return
        if self.push is not None:
            self.push(update)

    async def poll(self) -> Readings:
        await self._listen()
        async with self.lock:
            s = await self._session()
            try:
                return await self._poll(s)
            finally:
                s.close()

    async def _poll(self, s: PJLinkSession) -> Readings:
        self._fault = False
        r: Readings = {}
        if self.pj_class is None:
            value = await self._ask(s, "CLSS")
            try:
                self.pj_class = pj.parse_class(value) if value else 1
            except pj.ProtocolError:
                self.pj_class = 1
        try:
            power = await self._ask(s, "POWR")
            if power is not None:
                self.power = pj.parse_power(power)
                r["projector_power"] = self.power
            erst = await self._ask(s, "ERST")
            if erst is not None:
                r.update(pj.parse_erst(erst))
            lamps = await self._ask(s, "LAMP")
            if lamps is not None:
                parsed = pj.parse_lamps(lamps)
                for i, (hours, _on) in enumerate(parsed):
                    r["lamp_hours" if i == 0 else f"lamp{i + 1}_hours"] = hours
                if self.rated_lamp:
                    worst = max(h for h, _ in parsed)
                    r["lamp_life_pct"] = round(100.0 * worst / self.rated_lamp, 1)
            inpt = await self._ask(s, "INPT")
            if inpt is not None:
                r["input"] = inpt
                r["input_name"] = self.inputs.name_of(inpt)
            avmt = await self._ask(s, "AVMT")
            if avmt is not None:
                r["av_mute"] = pj.parse_avmt(avmt)
            if self.pj_class >= 2:
                await self._class2(s, r)
            if not self._identified:
                await self._identify(s)
        except pj.ProtocolError as exc:
            raise DeviceProtocolError(str(exc)) from None
        if self.power != "on":
            r["input_lines"] = None  # the signal rule applies only while the projector is on
        if self.rated_lumens:
            r["rated_lumens"] = self.rated_lumens
        r["projector_fault"] = 1 if self._fault else 0
        return r

    async def _class2(self, s: PJLinkSession, r: Readings) -> None:
        ires = await self._ask(s, "IRES", 2)
        if ires is not None:
            res = pj.parse_resolution(ires)
            r["input_resolution"] = "-" if res is None else f"{res[0]}x{res[1]}"
            if self.power == "on":
                r["input_lines"] = None if res is None else res[1]
        filt = await self._ask(s, "FILT", 2)
        if filt is not None:
            hours = pj.parse_int(filt, "FILT")
            r["filter_hours"] = hours
            if self.rated_filter:
                r["filter_life_pct"] = round(100.0 * hours / self.rated_filter, 1)

    async def _identify(self, s: PJLinkSession) -> None:
        info: dict[str, str] = {"pjlink_class": str(self.pj_class)}
        for key, command, cls in (
            ("name", "NAME", 1),
            ("manufacturer", "INF1", 1),
            ("product", "INF2", 1),
            ("info", "INFO", 1),
            ("inputs", "INST", 1),
        ):
            value = await self._ask(s, command, cls)
            if value:
                info[key] = value
        if self.pj_class and self.pj_class >= 2:
            for key, command in (
                ("serial", "SNUM"),
                ("software", "SVER"),
                ("recommended_resolution", "RRES"),
                ("lamp_part", "RLMP"),
                ("filter_part", "RFIL"),
            ):
                value = await self._ask(s, command, 2)
                if value:
                    info[key] = value
            names = []
            for code in info.get("inputs", "").split()[:16]:
                if pj.valid_input(code):
                    reply = await s.query("INNM", f"?{code}", 2)
                    if reply.error is None and reply.param:
                        names.append(f"{code}={reply.param}")
            if names:
                info["input_names"] = ", ".join(names)
        self.info = info
        self._identified = True

    # ---- commands ----------------------------------------------------------------------------

    async def command(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        if name == "power":
            state = args.get("state")
            if state not in ("on", "off"):
                raise CommandError('args.state: "on" or "off"')
            return await self._power(state)
        if name == "input":
            code = self.inputs.code_for(str(args.get("input", "")), _PJLINK_INPUT)
            if not pj.valid_input(code):
                raise CommandError('args.input: an input name like "hdmi1" or a PJLink code')
            cls = 2 if (code[0] == "6" or not code[1].isdigit()) else 1
            result = await self._set("INPT", code, cls, "input", str.strip)
            result["input_name"] = self.inputs.name_of(str(result.get("input")))
            return result
        if name == "mute":
            target, state = args.get("target", "both"), args.get("state")
            avmt = pj.AVMT_CODES.get((str(target), str(state)))
            if avmt is None:
                raise CommandError('args: target "video"|"audio"|"both" and state "on"|"off"')
            return await self._set("AVMT", avmt, 1, "av_mute", pj.parse_avmt)
        if name == "freeze":
            state = args.get("state")
            if state not in ("on", "off"):
                raise CommandError('args.state: "on" or "off"')
            return await self._set("FREZ", "1" if state == "on" else "0", 2, "freeze", _on_off)
        if name == "volume":
            target, step = args.get("target", "speaker"), args.get("step")
            if target not in ("speaker", "microphone") or step not in ("up", "down"):
                raise CommandError('args: target "speaker"|"microphone" and step "up"|"down"')
            command = "SVOL" if target == "speaker" else "MVOL"
            return await self._set(command, "1" if step == "up" else "0", 2, None, None)
        return await super().command(name, args)

    async def _power(self, state: str) -> dict[str, Any]:
        async with self.lock:
            s = await self._session()
            try:
                current = pj.parse_power((await s.query("POWR")).param)
                if state == "off" and current == "warming":
                    raise CommandError(
                        "refused: the projector is warming up; power it off once it is on"
                    )
                if state == "on" and current == "cooling":
                    raise CommandError(
                        "refused: the projector is cooling down; power it on once it is off"
                    )
                reply = await s.query("POWR", pj.POWER_CODES[state])
                self._check(reply)
                now = await s.query("POWR")
                self.power = pj.parse_power(now.param) if now.error is None else self.power
            except pj.ProtocolError as exc:
                raise DeviceProtocolError(str(exc)) from None
            finally:
                s.close()
        if self.push is not None and self.power is not None:
            self.push({"projector_power": self.power})
        return {"projector_power": self.power}

    async def _set(
        self,
        command: str,
        param: str,
        cls: int,
        key: str | None,
        parse: Callable[[str], ReadingValue] | None,
    ) -> dict[str, Any]:
        """Set, then read back: the result is what the projector says it did (video mute
        stays on when only audio was unmuted), not what was asked."""
        result: Readings = {}
        async with self.lock:
            s = await self._session()
            try:
                self._check(await s.query(command, param, cls))
                if key is not None and parse is not None:
                    reply = await s.query(command, "?", cls)
                    if reply.error is not None:
                        raise DeviceRefused(
                            f"set, but reading {command} back answered {reply.error} "
                            f"({pj.ERRORS[reply.error]})"
                        )
                    result[key] = parse(reply.param)
            except pj.ProtocolError as exc:
                raise DeviceProtocolError(str(exc)) from None
            finally:
                s.close()
        if self.push is not None and result:
            self.push(result)
        return dict(result) if result else {"ok": True}

    @staticmethod
    def _check(reply: pj.Reply) -> None:
        err = reply.error
        if err is not None:
            raise DeviceRefused(f"projector answered {err} ({pj.ERRORS[err]})")
        if not reply.ok:
            raise DeviceProtocolError(f"expected OK, got {reply.param!r}")


def _on_off(param: str) -> str:
    value = param.strip()
    if value not in ("0", "1"):
        raise pj.ProtocolError(f"expected 0 or 1, got {param!r}")
    return "on" if value == "1" else "off"
