"""KNX/IP: a room's lights, blinds, door and window contacts and sensors on the KNX bus, through
a KNXnet/IP tunnelling server (an IP interface, an IP router with tunnelling, or knxd).

xknx speaks the protocol. What a room has is data: a KNX model (roomd/profiles/knx/*.yaml) names
each point's metric and datapoint type and the actions a meeting's day needs (lights on for the
check, off after the meeting); the device config gives the installation's group addresses
(they come from its ETS project). KNX is event-driven: state telegrams update readings as they
pass on the bus; a poll reads (GroupValueRead) only the states not heard within the interval.
Every device on one tunnelling server shares one tunnel (interfaces offer few, often one to
four).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..daemon.checktypes import CheckContext, CheckItem
from ..daemon.profiles import load_yaml_model
from ..daemon.units import Duration
from . import register
from .base import (
    ArgSpec,
    CommandError,
    CommandSpec,
    DeviceConfig,
    DeviceError,
    DeviceTimeout,
    DeviceUnreachable,
    Driver,
    DriverContext,
    Readings,
    ReadingValue,
    restore_after_check,
    split_host,
)

log = logging.getLogger("roomd.knx")

KNX_PORT = 3671


class KnxPoint(BaseModel):
    """One datapoint of a room: a switch, a contact, a position, a measured value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    dpt: str = Field(pattern=r"^\d{1,3}\.\d{3}$")  # e.g. 1.001 switch, 1.019 window/door, 9.004 lux
    states: tuple[str, str] | None = None  # 1-bit points: the reading for 0 and for 1
    decimals: int | None = Field(None, ge=0, le=6)

    @property
    def binary(self) -> bool:
        return self.dpt.startswith("1.")

    def transcoder(self) -> Any:
        from xknx.dpt import DPTBase

        transcoder = DPTBase.parse_transcoder(self.dpt)
        if transcoder is None:
            raise ValueError(f"{self.metric}: xknx knows no datapoint type {self.dpt}")
        return transcoder

    @model_validator(mode="after")
    def _known(self) -> KnxPoint:
        self.transcoder()
        if self.states is not None and not self.binary:
            raise ValueError(f"{self.metric}: `states` are for 1-bit points (DPT 1.x)")
        return self


class KnxAction(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    point: str
    value: float | int | str  # a state name for a 1-bit point, a number otherwise


class KnxModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    description: str = ""
    points: list[KnxPoint] = Field(min_length=1)
    actions: dict[str, KnxAction] = {}
    before_check: list[str] = []
    before_meeting: list[str] = []
    after_meeting: list[str] = []

    def point(self, metric: str) -> KnxPoint | None:
        return next((p for p in self.points if p.metric == metric), None)

    @model_validator(mode="after")
    def _consistent(self) -> KnxModel:
        for name, action in self.actions.items():
            point = self.point(action.point)
            if point is None:
                raise ValueError(f"action {name}: no point {action.point!r}")
            if point.binary and (point.states is None or action.value not in point.states):
                raise ValueError(f"action {name}: one of {point.states} for {point.metric}")
        for when in ("before_check", "before_meeting", "after_meeting"):
            for name in getattr(self, when):
                if name not in self.actions:
                    raise ValueError(f"{when}: {name!r} is not an action of this model")
        return self


@cache
def load_knx_model(name_or_path: str) -> KnxModel:
    return load_yaml_model("knx", "KNX model", KnxModel, name_or_path)


def _group_address(text: str) -> str:
    from xknx.exceptions import CouldNotParseAddress
    from xknx.telegram import GroupAddress

    try:
        return str(GroupAddress(text))
    except CouldNotParseAddress:
        raise ValueError(
            f"{text!r} is not a KNX group address (main/middle/sub, e.g. 1/0/7)"
        ) from None


class KnxAddresses(BaseModel):
    """A point's group addresses: where to write it and where its state is sent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    write: str | None = None
    state: str | None = None

    @field_validator("write", "state")
    @classmethod
    def _valid(cls, value: str | None) -> str | None:
        return None if value is None else _group_address(value)


class KnxConfig(DeviceConfig):
    driver: Literal["knx"]
    gateway: str = Field(description="the KNXnet/IP tunnelling server, host or host:port")
    local_ip: str | None = None  # the address the gateway sends back to; default: routed
    model: str
    # point → "1/0/7" (written and read there) or {write: 1/0/7, state: 1/0/8}
    addresses: dict[str, str | KnxAddresses]
    poll: Duration = 60.0
    timeout: Duration = 2.0

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        load_knx_model(value)
        return value

    @model_validator(mode="after")
    def _points(self) -> KnxConfig:
        split_host(self.gateway, KNX_PORT)
        model = load_knx_model(self.model)
        for metric, where in self.addresses.items():
            if model.point(metric) is None:
                known = ", ".join(p.metric for p in model.points)
                raise ValueError(f"addresses: {metric!r} is not a point of {model.model} ({known})")
            if isinstance(where, str):
                _group_address(where)
        if not self.addresses:
            raise ValueError("addresses: give the group address of at least one point")
        return self

    def address_of(self, metric: str) -> KnxAddresses | None:
        where = self.addresses.get(metric)
        if isinstance(where, str):
            address = _group_address(where)
            return KnxAddresses(write=address, state=address)
        return where


class KnxTunnel:
    """One tunnel to a KNXnet/IP server for every device that uses it; telegrams to a group
    address go to the devices listening to it."""

    def __init__(self, host: str, port: int, local_ip: str | None) -> None:
        self.host, self.port, self.local_ip = host, port, local_ip
        self.listeners: dict[str, list[Any]] = {}  # group address → callbacks
        self.users = 0
        self.xknx: Any = None
        self._starting: asyncio.Lock | None = None

    async def connected(self, timeout: float) -> Any:
        from xknx import XKNX
        from xknx.core import XknxConnectionState
        from xknx.io import ConnectionConfig, ConnectionType

        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self.xknx is None:
                config = ConnectionConfig(
                    connection_type=ConnectionType.TUNNELING,
                    gateway_ip=self.host,
                    gateway_port=self.port,
                    local_ip=self.local_ip,
                    auto_reconnect=True,
                    auto_reconnect_wait=3,
                )
                xknx = XKNX(connection_config=config, telegram_received_cb=self._telegram)
                try:
                    async with asyncio.timeout(timeout * 3):
                        await xknx.start()
                except Exception as exc:  # xknx raises CommunicationError, OSError, timeouts
                    await _quietly_stop(xknx)
                    raise DeviceUnreachable(
                        f"no KNX tunnel to {self.host}:{self.port}: {exc or type(exc).__name__}"
                    ) from None
                self.xknx = xknx
        state = self.xknx.connection_manager.state
        if state != XknxConnectionState.CONNECTED:
            raise DeviceUnreachable(f"KNX tunnel to {self.host}:{self.port}: {state.value.lower()}")
        return self.xknx

    def _telegram(self, telegram: Any) -> None:
        for callback in self.listeners.get(str(telegram.destination_address), ()):
            callback(telegram)

    def listen(self, address: str, callback: Any) -> None:
        self.listeners.setdefault(address, []).append(callback)

    def forget(self, callback: Any) -> None:
        for address, callbacks in list(self.listeners.items()):
            self.listeners[address] = [c for c in callbacks if c is not callback]

    async def aclose(self) -> None:
        """Disconnect the tunnel (a DISCONNECT_REQUEST, so the interface frees it at once)."""
        xknx, self.xknx = self.xknx, None
        if xknx is not None:
            await _quietly_stop(xknx)

    def close(self) -> None:
        """The daemon's last resort on stop (its devices' close() normally did it already)."""
        xknx, self.xknx = self.xknx, None
        if xknx is not None:
            with contextlib.suppress(RuntimeError):  # no loop running any more
                asyncio.get_running_loop().create_task(_quietly_stop(xknx))


async def _quietly_stop(xknx: Any) -> None:
    try:
        await xknx.stop()
    except Exception as exc:  # stopping a tunnel that never came up
        log.debug("stopping xknx: %s", exc)


@register
class KnxDriver(Driver):
    kind = "knx"
    config_model = KnxConfig
    self_timed = True  # every read has its timeout; the tunnel's start is bounded

    def __init__(self, config: DeviceConfig, context: DriverContext) -> None:
        super().__init__(config, context)
        assert isinstance(config, KnxConfig)
        self.cfg = config
        self.model = load_knx_model(config.model)
        self.points = {p.metric: p for p in self.model.points if p.metric in config.addresses}
        self.values: dict[str, ReadingValue] = {}
        self.heard: dict[str, float] = {}  # metric → monotonic time of its last telegram
        self.by_address: dict[str, KnxPoint] = {}
        for metric, point in self.points.items():
            where = config.address_of(metric)
            assert where is not None
            for address in {where.state, where.write} - {None}:
                assert address is not None
                self.by_address.setdefault(address, point)
        self._tunnel: KnxTunnel | None = None
        self._switched_for_check: list[str] = []

    @property
    def metrics(self) -> list[str]:
        return list(self.points)

    @property
    def model_name(self) -> str:
        return self.model.model

    def _decode(self, point: KnxPoint, payload: Any) -> ReadingValue:
        from xknx.dpt import DPTBinary

        value = payload.value
        if point.binary:
            bit = int(value.value) if isinstance(value, DPTBinary) else None
            if bit is None:
                return None
            return point.states[bit] if point.states is not None else bit
        try:
            number = point.transcoder().from_knx(value)
        except Exception:  # xknx raises ConversionError on a payload of the wrong size
            log.debug("%s: undecodable %s payload %s", self.cfg.id, point.dpt, value)
            return None
        if point.decimals is not None:
            number = round(float(number), point.decimals)
            return int(number) if point.decimals == 0 else number
        return float(number) if isinstance(number, int | float) else str(number)

    def _on_telegram(self, telegram: Any) -> None:
        from xknx.telegram.apci import GroupValueResponse, GroupValueWrite

        if not isinstance(telegram.payload, GroupValueWrite | GroupValueResponse):
            return
        point = self.by_address.get(str(telegram.destination_address))
        if point is None:
            return
        value = self._decode(point, telegram.payload)
        if value is None:
            return
        self.heard[point.metric] = time.monotonic()
        changed = self.values.get(point.metric) != value
        self.values[point.metric] = value
        if changed and self.push is not None:
            self.push({point.metric: value})

    async def _connected(self) -> Any:
        if self._tunnel is None:
            host, port = split_host(self.cfg.gateway, KNX_PORT)
            key = f"knx:{host}:{port}"
            tunnel = self.context.shared.get(key)
            if tunnel is None:
                tunnel = self.context.shared[key] = KnxTunnel(host, port, self.cfg.local_ip)
            tunnel.users += 1
            for address in self.by_address:
                tunnel.listen(address, self._on_telegram)
            self._tunnel = tunnel
        return await self._tunnel.connected(self.cfg.timeout)

    async def poll(self) -> Readings:
        from xknx.core import ValueReader
        from xknx.telegram import GroupAddress

        xknx = await self._connected()
        now = time.monotonic()
        stale = [
            (metric, where.state)
            for metric in self.points
            if (where := self.cfg.address_of(metric)) is not None
            and where.state is not None
            and now - self.heard.get(metric, -1e9) >= self.cfg.poll
        ]
        if stale:
            replies = await asyncio.gather(
                *(
                    ValueReader(xknx, GroupAddress(address), self.cfg.timeout).read()
                    for _, address in stale
                )
            )
            for telegram in replies:
                if telegram is not None:
                    self._on_telegram(telegram)
            if not self.heard:
                raise DeviceTimeout(
                    f"no KNX device answered reads of {', '.join(a for _, a in stale)} "
                    f"within {self.cfg.timeout:g}s"
                )
        return {metric: self.values.get(metric) for metric in self.points}

    async def act(self, name: str) -> str:
        """Send one of the model's actions (a GroupValueWrite); what was done."""
        from xknx.dpt import DPTBinary
        from xknx.telegram import GroupAddress, Telegram
        from xknx.telegram.apci import GroupValueWrite

        action = self.model.actions.get(name)
        if action is None:
            raise CommandError(f"model {self.model.model} has no action {name!r}")
        point = self.points.get(action.point)
        where = self.cfg.address_of(action.point)
        if point is None or where is None or where.write is None:
            raise CommandError(f"{name}: no group address to write {action.point} to")
        if point.binary:
            assert point.states is not None
            payload: Any = DPTBinary(point.states.index(str(action.value)))
        else:
            try:
                payload = point.transcoder().to_knx(action.value)
            except Exception as exc:
                msg = f"{name}: {action.value} is not a {point.dpt} value: {exc}"
                raise CommandError(msg) from None
        xknx = await self._connected()
        telegram = Telegram(
            destination_address=GroupAddress(where.write), payload=GroupValueWrite(payload)
        )
        await xknx.telegrams.put(telegram)
        try:  # sent and confirmed by the interface (L_Data.con) before the next action
            async with asyncio.timeout(self.cfg.timeout * 3):
                await xknx.telegrams.join()
        except TimeoutError:
            raise DeviceTimeout(f"{name}: the KNX interface did not confirm the write") from None
        if where.state is None or where.state == where.write:
            # No separate status object: the write is the state now.
            self.values[point.metric] = action.value if point.binary else float(action.value)
        return name.replace("_", " ")

    def _installed(self, name: str) -> bool:
        """The room has this action's point, with an address to write: a room without blinds
        on KNX skips "blinds up"."""
        where = self.cfg.address_of(self.model.actions[name].point)
        return where is not None and where.write is not None

    async def _acts(self, names: list[str]) -> str | None:
        done = [await self.act(name) for name in names if self._installed(name)]
        return ", ".join(done) or None

    async def shutdown(self) -> str | None:
        return await self._acts(self.model.after_meeting)

    async def prewarm(self) -> str | None:
        return await self._acts(self.model.before_meeting)

    async def prepare_check(self) -> str | None:
        """`before_check` actions whose point is not already in that state; remembered, to be
        undone after a check far from the meeting (as the Modbus I/O module does)."""
        await self.poll()
        todo = []
        for name in self.model.before_check:
            action = self.model.actions[name]
            if self._installed(name) and self.values.get(action.point) != action.value:
                todo.append(name)
        self._switched_for_check = todo
        return await self._acts(todo)

    async def self_test(self, ctx: CheckContext) -> list[CheckItem]:
        switched, self._switched_for_check = self._switched_for_check, []
        return await restore_after_check(ctx, switched, self._opposite, self._acts)

    def _opposite(self, name: str) -> str | None:
        """The action that undoes `name` (lights_on → lights_off)."""
        action = self.model.actions[name]
        return next(
            (n for n, a in self.model.actions.items()
             if a.point == action.point and a.value != action.value),
            None,
        )  # fmt: skip

    def command_specs(self) -> list[CommandSpec]:
        usable = [name for name in sorted(self.model.actions) if self._installed(name)]
        return [CommandSpec("act", (ArgSpec("action", fixed=name),), label=name) for name in usable]

    async def command(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        if name == "act":
            action = args.get("action")
            if not isinstance(action, str):
                raise CommandError("args.action: the name of an action of the KNX model")
            try:
                done = await self.act(action)
            except DeviceError as exc:
                raise CommandError(str(exc)) from None
            return {"action": action, "done": done}
        return await super().command(name, args)

    async def close(self) -> None:
        tunnel, self._tunnel = self._tunnel, None
        if tunnel is None:
            return
        tunnel.forget(self._on_telegram)
        tunnel.users -= 1
        if tunnel.users <= 0:
            for key, value in list(self.context.shared.items()):
                if value is tunnel:
                    del self.context.shared[key]
            await tunnel.aclose()
