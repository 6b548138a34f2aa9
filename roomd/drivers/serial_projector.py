"""Projectors controlled over RS-232, driven by a profile: command strings and reply patterns in
YAML (roomd/profiles/serial/). Ships with Epson ESC/VP21."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..daemon.profiles import SerialDefaults, load_yaml_model
from ..daemon.units import Duration
from . import register
from .base import (
    CommandError,
    DeviceConfig,
    DeviceProtocolError,
    DeviceRefused,
    DeviceTimeout,
    DeviceUnreachable,
    Driver,
    DriverContext,
    Readings,
)
from .inputs import InputMap, check_input_names
from .projector_hooks import ProjectorHooks
from .serial_port import open_serial

log = logging.getLogger("roomd.serial_projector")

ERROR_FIELDS = ("fan", "lamp", "temperature", "cover", "filter", "other")
_SOURCE_CODE = re.compile(r"[0-9A-F]{2}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SerialQuery(_Strict):
    command: str
    pattern: str
    metric: str
    type: Literal["str", "int", "float"] = "str"
    map: dict[str, str] = {}

    @field_validator("pattern")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            if re.compile(value).groups != 1:
                raise ValueError("a reply pattern needs exactly one capture group")
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value


class SerialProjectorProfile(_Strict):
    model: str
    manufacturer: str = ""
    description: str = ""
    serial: SerialDefaults = SerialDefaults()
    line_end: str = "\r"
    prompt: str = ":"
    unavailable: str = "ERR"
    rated_lamp_hours: int | None = None
    warmup: Duration = 60.0
    queries: list[SerialQuery]
    error_codes: dict[str, Literal["fan", "lamp", "temperature", "cover", "filter", "other"]] = {}
    commands: dict[str, str] = {}
    inputs: dict[str, str] = {}  # logical name → SOURCE code (drivers/inputs.py)

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, value: dict[str, str]) -> dict[str, str]:
        return check_input_names(value)


@cache
def load_serial_profile(name_or_path: str) -> SerialProjectorProfile:
    return load_yaml_model(
        "serial", "serial projector profile", SerialProjectorProfile, name_or_path
    )


class SerialProjectorConfig(DeviceConfig):
    driver: Literal["serial-projector"]
    port: str
    model: str = "epson-escvp21"
    baudrate: int | None = Field(None, gt=0)
    rated_lamp_hours: int | None = Field(None, ge=0)
    rated_lumens: int | None = Field(None, ge=0)
    poll: Duration = 10.0
    timeout: Duration = 3.0

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        load_serial_profile(value)
        return value

    def serial_line(self) -> tuple[str, tuple[Any, ...] | None] | None:
        return self.port, None  # not a bus: the port is this device's alone


@register
class SerialProjectorDriver(ProjectorHooks, Driver):
    kind = "serial-projector"
    config_model = SerialProjectorConfig
    self_timed = True

    def __init__(self, config: DeviceConfig, context: DriverContext) -> None:
        super().__init__(config, context)
        assert isinstance(config, SerialProjectorConfig)
        self.cfg = config
        self.profile = load_serial_profile(config.model)
        self.inputs = InputMap(self.profile.inputs)
        self.rated_lamp = config.rated_lamp_hours or self.profile.rated_lamp_hours
        self.lock = asyncio.Lock()
        self.transport: asyncio.BaseTransport | None = None
        self.buffer = ""
        self.waiter: asyncio.Future[None] | None = None
        self.power: str | None = None
        self.info = {"model": self.profile.model, "manufacturer": self.profile.manufacturer}

    @property
    def metrics(self) -> list[str]:
        return [
            "projector_power",
            "lamp_hours",
            "lamp_life_pct",
            "input",
            *(f"projector_error_{f}" for f in ERROR_FIELDS),
        ]

    def _data(self, data: bytes) -> None:
        self.buffer += data.decode("ascii", errors="replace")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(DeviceUnreachable(f"{self.cfg.port} closed"))

    async def _open(self) -> None:
        if self.transport is None:
            s = self.profile.serial
            self.transport = await open_serial(
                self.cfg.port,
                self._data,
                self._lost,
                baudrate=self.cfg.baudrate or s.baudrate,
                parity=s.parity,
                stopbits=s.stopbits,
                bytesize=s.bytesize,
            )

    async def exchange(self, command: str) -> str:
        """Send one command; return the reply text before the prompt (empty for a bare prompt)."""
        await self._open()
        assert self.transport is not None
        self.buffer = ""
        self.transport.write((command + self.profile.line_end).encode("ascii"))  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.timeout
        prompt = self.profile.prompt
        while prompt not in self.buffer:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise DeviceTimeout(f"no reply to {command!r} within {self.cfg.timeout:g}s")
            if len(self.buffer) > 512:
                raise DeviceProtocolError(f"no prompt {prompt!r} in 512 bytes: garbage on the line")
            self.waiter = loop.create_future()
            try:
                async with asyncio.timeout(remaining):
                    await self.waiter
            except TimeoutError:
                raise DeviceTimeout(
                    f"no reply to {command!r} within {self.cfg.timeout:g}s"
                ) from None
            finally:
                self.waiter = None
        reply = self.buffer.split(prompt, 1)[0]
        return reply.replace("\x00", "").strip("\r\n ")

    async def poll(self) -> Readings:
        async with self.lock:
            r: Readings = {}
            for q in self.profile.queries:
                reply = await self.exchange(q.command)
                if reply == self.profile.unavailable:
                    continue  # e.g. LAMP? in standby on some models
                match = re.match(q.pattern, reply)
                if not match:
                    raise DeviceProtocolError(
                        f"reply {reply[:40]!r} to {q.command!r} does not match"
                    )
                raw = match.group(1)
                value: Any = q.map.get(raw, raw) if q.map else raw
                if q.type == "int":
                    value = int(value)
                elif q.type == "float":
                    value = float(value)
                r[q.metric] = value
        code = r.pop("error_code", None)
        if code is not None:
            fields = dict.fromkeys(ERROR_FIELDS, "ok")
            if code != "00":
                fields[self.profile.error_codes.get(str(code), "other")] = "error"
            r.update({f"projector_error_{k}": v for k, v in fields.items()})
        if isinstance(r.get("projector_power"), str):
            self.power = str(r["projector_power"])
        if isinstance(r.get("input"), str):
            r["input_name"] = self.inputs.name_of(str(r["input"]))
        hours = r.get("lamp_hours")
        if self.rated_lamp and isinstance(hours, int):
            r["lamp_life_pct"] = round(100.0 * hours / self.rated_lamp, 1)
        if self.cfg.rated_lumens:
            r["rated_lumens"] = self.cfg.rated_lumens
        return r

    async def command(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        cmds = self.profile.commands
        if name == "power":
            state = args.get("state")
            if state not in ("on", "off"):
                raise CommandError('args.state: "on" or "off"')
            async with self.lock:
                current = await self._query_power()
                if state == "off" and current == "warming":
                    raise CommandError(
                        "refused: the projector is warming up; power it off once it is on"
                    )
                if state == "on" and current == "cooling":
                    raise CommandError(
                        "refused: the projector is cooling down; power it on once it is off"
                    )
                await self._set(cmds[f"power_{state}"])
                now = await self._query_power()
            if self.push is not None and now is not None:
                self.push({"projector_power": now})
            return {"projector_power": now}
        if name == "input":
            code = self.inputs.code_for(str(args.get("input", "")), _SOURCE_CODE)
            async with self.lock:
                await self._set(cmds["input"].format(input=code))
                reply = await self.exchange("SOURCE?")  # read back: what the projector took
            match = re.match(r"^SOURCE=([0-9A-F]{2})$", reply)
            now = match.group(1) if match else code
            result: dict[str, Any] = {"input": now, "input_name": self.inputs.name_of(now)}
            if self.push is not None:
                self.push(result)
            return result
        if name == "mute":
            state = args.get("state")
            if state not in ("on", "off") or args.get("target", "both") not in ("video", "both"):
                raise CommandError('args: state "on"|"off"; target "video" or "both"')
            async with self.lock:
                await self._set(cmds[f"mute_{state}"])
            return {"mute": state}
        return await super().command(name, args)

    async def _query_power(self) -> str | None:
        q = next((q for q in self.profile.queries if q.metric == "projector_power"), None)
        if q is None:
            return None
        reply = await self.exchange(q.command)
        match = re.match(q.pattern, reply)
        if not match:
            raise DeviceProtocolError(f"reply {reply[:40]!r} to {q.command!r} does not match")
        self.power = q.map.get(match.group(1), match.group(1))
        return self.power

    async def _set(self, command: str) -> None:
        reply = await self.exchange(command)
        if reply == self.profile.unavailable:
            raise DeviceRefused(f"projector answered {reply} to {command!r} (not available now)")
        if reply:
            raise DeviceProtocolError(f"unexpected reply {reply[:40]!r} to {command!r}")

    async def close(self) -> None:
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.close()
            self.transport = None
