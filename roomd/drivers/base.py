"""What every driver is: a config model, a poll that returns readings, optional commands."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..daemon.checktypes import CheckContext, CheckItem
from ..daemon.profiles import Threshold, ThresholdOverride
from ..daemon.units import Duration

ReadingValue = float | int | str | bool | None  # None: not applicable now (clears its alerts)
Readings = dict[str, ReadingValue]

_ID = r"^[a-z0-9_-]+$"


class DeviceConfig(BaseModel):
    """Keys every device has. A driver subclasses this with its own keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=_ID)
    driver: str
    name: str = ""
    poll: Duration = 10.0
    timeout: Duration = 2.0
    thresholds: dict[str, ThresholdOverride] = {}
    last_inspected: date | None = None  # STANDARD §4: every device inspected once a quarter
    # STANDARD §3: on a fault during a meeting, switch to this device of the same room at once.
    backup: str | None = Field(None, pattern=_ID)

    def serial_line(self) -> tuple[str, tuple[Any, ...] | None] | None:
        """(serial port, line settings) for a device on a serial line: devices on one port must
        agree on the settings (an RS-485 bus has one); None settings: the port is its alone."""
        return None

    @model_validator(mode="before")
    @classmethod
    def _tcp_port(cls, data: Any) -> Any:
        """`host: h` + `port: 15021` (a number) means TCP port 15021 on h: folded into `host`,
        which every network driver reads as HOST[:PORT]."""
        if not isinstance(data, dict):
            return data
        host, port = data.get("host"), data.get("port")
        if not isinstance(host, str) or not isinstance(port, int) or isinstance(port, bool):
            return data
        if not 0 < port < 65536:
            raise ValueError(f"port: {port} is not a TCP port (1 to 65535)")
        if "]:" in host or (host.count(":") == 1 and host.rpartition(":")[2].isdigit()):
            raise ValueError(f"give the TCP port once: in `host` ({host}) or as `port`")
        name = f"[{host.strip('[]')}]" if ":" in host else host
        return {k: v for k, v in data.items() if k != "port"} | {"host": f"{name}:{port}"}


def split_host(value: str, default_port: int) -> tuple[str, int]:
    """`host`, `host:port` or `[v6]:port` → (host, port). ValueError for a bad port."""
    host, sep, port = value.rpartition(":")
    if sep and port.isdigit() and "]" not in port:
        if not 0 < int(port) < 65536:
            raise ValueError(f"port {port} out of range")
        return host.strip("[]"), int(port)
    return value, default_port


class DeviceError(Exception):
    """A device did not give a usable answer. The message is shown to technicians."""


class DeviceTimeout(DeviceError):
    pass


class DeviceProtocolError(DeviceError):
    """Garbage, a bad checksum, a reply that does not match the request."""


class DeviceRefused(DeviceError):
    """The device answered with an error (a Modbus exception code, PJLink ERRx)."""


class DeviceUnreachable(DeviceError):
    """Connection refused, port missing, link down."""


class DeviceAuthError(DeviceError):
    """Wrong or missing credentials. Not retried until the config is reloaded: repeated bad
    logins lock some devices out."""


class CommandError(Exception):
    """A command was refused before or by the device; the reason goes to cmd/result."""


@dataclass(frozen=True)
class ArgSpec:
    """One argument of a command, as a form asks for it: one of `choices`, or a number in
    [min, max]; `fixed` is sent as it is (a Modbus write's register name)."""

    name: str
    choices: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    step: float | None = None
    fixed: str | None = None

    def parse(self, text: str) -> Any:
        """A form's text → the command's value; CommandError naming what was expected."""
        if self.fixed is not None:
            return self.fixed
        if self.choices:
            if text not in self.choices:
                raise CommandError(f"{self.name}: one of {', '.join(self.choices)}")
            return text
        try:
            value = float(text)
        except ValueError:
            raise CommandError(f"{self.name}: a number") from None
        if (
            not math.isfinite(value)
            or (self.min is not None and value < self.min)
            or (self.max is not None and value > self.max)
        ):
            lo = "" if self.min is None else f" from {self.min:g}"
            hi = "" if self.max is None else f" to {self.max:g}"
            raise CommandError(f"{self.name}: a number{lo}{hi}")
        return int(value) if value.is_integer() else value


@dataclass(frozen=True)
class CommandSpec:
    """A command a device takes, described for a person's form (the console)."""

    name: str
    args: tuple[ArgSpec, ...] = ()
    label: str = ""  # what the form's button says; the command name when empty


@dataclass
class DriverContext:
    """What the daemon lends a driver: shared resources (e.g. one RTU bus per serial port)."""

    shared: dict[str, Any] = field(default_factory=dict)


class Driver(ABC):
    kind: ClassVar[str]
    config_model: ClassVar[type[DeviceConfig]]
    # True when every wire operation of poll() has its own timeout, so the supervisor need not
    # wrap each poll in another one (it costs ~5 µs a poll).
    self_timed: ClassVar[bool] = False

    def __init__(self, config: DeviceConfig, context: DriverContext) -> None:
        self.config = config
        self.context = context
        # Set by the supervisor: hand it readings that arrive between polls (notifications,
        # command follow-ups); they are merged into the last poll's readings.
        self.push: Callable[[Readings], None] | None = None
        # Identity (name, manufacturer, serial...) for the device state message; not metrics.
        self.info: dict[str, str] = {}

    def expand_thresholds(self, thresholds: dict[str, Threshold]) -> dict[str, Threshold]:
        """The rules for this device: a driver with repeated parts (a mixer's channels) copies
        a profile's template threshold to each part."""
        return thresholds

    def config_warnings(self, thresholds: dict[str, Any]) -> list[str]:
        """Problems worth a warning at start that do not make the config invalid."""
        return []

    def next_interval(self, poll: float) -> float:
        """Seconds until the next poll; a driver may poll faster while a device changes state."""
        return poll

    @property
    def metrics(self) -> list[str]:
        """Metric names this device produces (for dashboards and discovery)."""
        return []

    @property
    def model_name(self) -> str:
        return str(getattr(self.config, "model", self.kind))

    @abstractmethod
    async def poll(self) -> Readings:
        """Read the device once. Raise a DeviceError when it cannot."""

    def start_poll(self, done: Callable[[Readings | BaseException], None]) -> bool:
        """Start a poll without a coroutine, if this driver can right now: the engine's fast
        path (no task, future or timer per poll). Return False to be polled by `poll()`;
        once True, call `done` exactly once, on the loop, with the readings or the error."""
        return False

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release sockets and ports. Called on stop and before a retry after an error."""

    async def command(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        raise CommandError(f"unknown command {name!r} for a {self.kind} device")

    def command_specs(self) -> list[CommandSpec]:
        """The commands a technician may give this device from a form (the console)."""
        return []

    # ---- meeting hooks: a driver adds what its kind of device needs; defaults do nothing ----

    async def self_test(self, ctx: CheckContext) -> list[CheckItem]:
        """Extra pre-meeting check items (the daemon already checks that the device answers,
        has no grade I–III alert, and that its readings are within the profile)."""
        return []

    async def shutdown(self) -> str | None:
        """Switch off after the meeting (STANDARD §2). What was done, or None: nothing to do.
        Raise DeviceError/CommandError when it failed."""
        return None

    async def take_over(self, primary: Readings) -> str | None:
        """Become the working device in place of a failed primary (STANDARD §3)."""
        return None

    async def prewarm(self) -> str | None:
        """Get ready before the meeting (projectors: power on)."""
        return None

    async def prepare_check(self) -> str | None:
        """Before the pre-meeting check measures the room (lights on). What was done, or
        None: nothing to do."""
        return None


async def restore_after_check(
    ctx: CheckContext,
    switched: list[str],
    opposite: Callable[[str], str | None],
    run: Callable[[list[str]], Awaitable[str | None]],
) -> list[CheckItem]:
    """After a check far from the meeting, switch back what `prepare_check` switched (lights
    left on for two hours are a waste), as projectors go back to standby: `opposite` names the
    action that undoes one, `run` does them and says what was done."""
    if ctx.keep_on or not switched:
        return []
    done = await run([o for name in switched if (o := opposite(name)) is not None])
    return [CheckItem("restored after the check", "done", done, True)] if done else []
