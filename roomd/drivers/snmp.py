"""SNMP: a room's switch port (IF-MIB, POWER-ETHERNET-MIB) and its Wi-Fi access point, as
readings such as `link_mbps`, `link_state`, port errors a minute and `wifi_rssi_dbm`.

What to read is data: an SNMP model (roomd/profiles/snmp/*.yaml) names each metric's OID,
with `{index}` for the room's port (its ifIndex), and whether it is a gauge, a state, a
counter to turn into a rate, or a table column to walk and summarise (client signal levels).
pysnmp does the protocol (v2c and v3 with USM); one SnmpEngine serves every device.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from collections.abc import Callable
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..daemon.profiles import load_yaml_model
from ..daemon.units import Duration
from . import register
from .base import (
    DeviceAuthError,
    DeviceConfig,
    DeviceProtocolError,
    DeviceRefused,
    DeviceTimeout,
    DeviceUnreachable,
    Driver,
    DriverContext,
    Readings,
    split_host,
)

_OID = re.compile(r"^\d+(\.\d+)+(\.\{index\}(\.\d+)*)?$")


@cache
def _lib() -> Any:
    """pysnmp's high-level API, imported with the first SNMP device (≈ 12 MB that a daemon
    without SNMP devices does not carry)."""
    import pysnmp.hlapi.v3arch.asyncio as hlapi

    return hlapi


class SnmpValue(BaseModel):
    """One reading of an SNMP model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    oid: str
    scale: float = 1.0
    decimals: int | None = Field(None, ge=0, le=6)
    # An INTEGER naming a state (ifOperStatus 1 → up): the reading is the state's name.
    states: dict[int, str] | None = None
    # A counter: the reading is its increase per minute between two polls.
    rate: bool = False
    # A table column walked below `oid`: the reading summarises every row (None: no rows).
    walk: Literal["min", "max", "mean", "median", "count"] | None = None
    # Absent on some devices (PoE on a port without it): no reading rather than an error.
    optional: bool = False
    # Only meaningful while another reading has this state (the speed of a link that is up).
    when: dict[str, str] = {}

    @field_validator("oid")
    @classmethod
    def _dotted(cls, value: str) -> str:
        value = value.strip(".")
        if not _OID.match(value):
            raise ValueError(f"oid {value!r}: dotted numbers, with {{index}} for the port")
        return value


class SnmpModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    description: str = ""
    mibs: list[str] = []
    values: list[SnmpValue] = Field(min_length=1)

    @property
    def needs_index(self) -> bool:
        return any("{index}" in v.oid for v in self.values)

    @model_validator(mode="after")
    def _unique(self) -> SnmpModel:
        names = [v.metric for v in self.values]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"metric {sorted(dup)[0]!r} given twice")
        for v in self.values:
            for other in v.when:
                if other not in names:
                    raise ValueError(f"{v.metric}: `when` names {other!r}, not in this model")
        return self


@cache
def load_snmp_model(name_or_path: str) -> SnmpModel:
    """A built-in SNMP model by name (`if-mib-port`) or a YAML file by path."""
    return load_yaml_model("snmp", "SNMP model", SnmpModel, name_or_path)


# names of pysnmp's protocol identifiers
_AUTH = {
    "md5": "usmHMACMD5AuthProtocol",
    "sha": "usmHMACSHAAuthProtocol",
    "sha256": "usmHMAC192SHA256AuthProtocol",
}
_PRIV = {"none": "usmNoPrivProtocol", "des": "usmDESPrivProtocol", "aes": "usmAesCfb128Protocol"}


class SnmpConfig(DeviceConfig):
    driver: Literal["snmp"]
    host: str
    model: str
    # The room's port on the switch (ifIndex), for models that read one port.
    index: int | None = Field(None, ge=1, le=2**31 - 1)
    version: Literal["2c", "3"] = "2c"
    community: str = Field("public", min_length=1, max_length=64)
    user: str | None = Field(None, min_length=1, max_length=32)
    auth_protocol: Literal["md5", "sha", "sha256"] = "sha"
    auth_key: str | None = Field(None, min_length=8, max_length=128)
    priv_protocol: Literal["none", "des", "aes"] = "aes"
    priv_key: str | None = Field(None, min_length=8, max_length=128)
    retries: int = Field(1, ge=0, le=5)
    poll: Duration = 30.0
    timeout: Duration = 2.0

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        load_snmp_model(value)
        return value

    @model_validator(mode="after")
    def _complete(self) -> SnmpConfig:
        split_host(self.host, 161)
        if self.version == "3" and self.user is None:
            raise ValueError("SNMPv3 needs `user` (and `auth_key`, `priv_key` for authPriv)")
        if self.priv_key is not None and self.auth_key is None:
            raise ValueError("`priv_key` needs `auth_key`: SNMPv3 has no privacy without auth")
        if load_snmp_model(self.model).needs_index and self.index is None:
            raise ValueError(f"model {self.model} reads one port: give its ifIndex as `index`")
        return self


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class _SharedEngine:
    """One pysnmp engine (its socket, its v3 engine id cache) for every SNMP device; the
    daemon closes it on stop like other shared resources."""

    def __init__(self) -> None:
        self.engine = _lib().SnmpEngine()

    def close(self) -> None:
        self.engine.close_dispatcher()


@register
class SnmpDriver(Driver):
    kind = "snmp"
    config_model = SnmpConfig
    self_timed = True  # pysnmp times every request out itself (timeout × retries)

    def __init__(self, config: DeviceConfig, context: DriverContext) -> None:
        super().__init__(config, context)
        assert isinstance(config, SnmpConfig)
        self.cfg = config
        self.model = load_snmp_model(config.model)
        index = str(config.index or "")
        self.oids = {v.metric: v.oid.replace("{index}", index) for v in self.model.values}
        self.scalars = [v for v in self.model.values if v.walk is None]
        self.walks = [v for v in self.model.values if v.walk is not None]
        # counter metric → (raw value, monotonic time) of the previous poll
        self.counters: dict[str, tuple[int, float]] = {}
        self._target: Any = None  # pysnmp's UdpTransportTarget, made on the first poll

    @property
    def metrics(self) -> list[str]:
        return [v.metric for v in self.model.values]

    @property
    def model_name(self) -> str:
        return self.model.model

    def _engine(self) -> Any:
        shared = self.context.shared.get("snmp-engine")
        if shared is None:
            shared = self.context.shared["snmp-engine"] = _SharedEngine()
        return shared.engine

    def _auth(self) -> Any:
        cfg, lib = self.cfg, _lib()
        if cfg.version == "2c":
            return lib.CommunityData(cfg.community, mpModel=1)
        assert cfg.user is not None
        if cfg.auth_key is None:
            return lib.UsmUserData(cfg.user)
        return lib.UsmUserData(
            cfg.user,
            authKey=cfg.auth_key,
            privKey=cfg.priv_key,
            authProtocol=getattr(lib, _AUTH[cfg.auth_protocol]),
            privProtocol=getattr(lib, _PRIV[cfg.priv_protocol if cfg.priv_key else "none"]),
        )

    async def _transport(self) -> Any:
        if self._target is None:
            host, port = split_host(self.cfg.host, 161)
            self._target = await _lib().UdpTransportTarget.create(
                (host, port), timeout=self.cfg.timeout, retries=self.cfg.retries
            )
        return self._target

    def _failed(self, indication: Any, status: Any, index: Any, binds: Any) -> None:
        if indication:
            text = str(indication)
            if "timeout" in text.lower():
                raise DeviceTimeout(
                    f"no SNMP reply within {self.cfg.timeout:g}s × {self.cfg.retries + 1} "
                    "(wrong community or user, ACL, or the agent is down)"
                )
            if any(w in text.lower() for w in ("auth", "unknown user", "decrypt", "digest")):
                raise DeviceAuthError(f"SNMP: {text}")
            raise DeviceUnreachable(f"SNMP: {text}")
        if status:
            where = ""
            if index and binds and int(index) <= len(binds):
                where = f" at {binds[int(index) - 1][0]}"
            raise DeviceRefused(f"SNMP error {status.prettyPrint()}{where}")

    async def poll(self) -> Readings:
        engine, auth, target = self._engine(), self._auth(), await self._transport()
        lib = _lib()
        readings: Readings = {}
        if self.scalars:
            binds = [lib.ObjectType(lib.ObjectIdentity(self.oids[v.metric])) for v in self.scalars]
            indication, status, index, got = await lib.get_cmd(
                engine, auth, target, lib.ContextData(), *binds, lookupMib=False
            )
            self._failed(indication, status, index, got)
            if len(got) != len(self.scalars):
                raise DeviceProtocolError(f"asked {len(self.scalars)} values, got {len(got)}")
            now = time.monotonic()
            for spec, (_, value) in zip(self.scalars, got, strict=True):
                readings[spec.metric] = self._reading(spec, value, now)
        for spec in self.walks:
            readings[spec.metric] = await self._walk(engine, auth, target, spec)
        for spec in self.model.values:
            for other, state in spec.when.items():
                if readings.get(other) != state:
                    readings[spec.metric] = None
        return readings

    def _reading(self, spec: SnmpValue, value: Any, now: float) -> float | int | str | None:
        lib = _lib()
        if isinstance(value, lib.NoSuchObject | lib.NoSuchInstance | lib.EndOfMibView):
            if spec.optional:
                return None
            raise DeviceRefused(
                f"the agent has no {self.oids[spec.metric]} ({spec.metric}): "
                "wrong `index`, or a model that does not fit this device"
            )
        if spec.states is not None:
            code = _number(value)
            if code is None:
                raise DeviceProtocolError(f"{spec.metric}: {value.prettyPrint()} is not a state")
            return spec.states.get(int(code), f"unknown_{int(code)}")
        if spec.rate:
            return self._rate(spec, value, now)
        number = _number(value)
        if number is None:
            raise DeviceProtocolError(f"{spec.metric}: {value.prettyPrint()} is not a number")
        return self._scaled(spec, number)

    @staticmethod
    def _scaled(spec: SnmpValue, number: float) -> float | int:
        result = number * spec.scale
        if spec.decimals is not None:
            rounded = round(result, spec.decimals)
            return int(rounded) if spec.decimals == 0 else rounded
        return int(result) if float(result).is_integer() else result

    def _rate(self, spec: SnmpValue, value: Any, now: float) -> float | None:
        """A counter's increase per minute since the last poll; None on the first poll, after a
        counter reset (agent restart) or a gap too long to mean anything."""
        raw = int(value)
        previous = self.counters.get(spec.metric)
        self.counters[spec.metric] = (raw, now)
        if previous is None:
            return None
        last, then = previous
        elapsed = now - then
        delta = raw - last
        if delta < 0:
            lib = _lib()
            wrap = (
                2**32
                if isinstance(value, lib.Counter32)
                else 2**64
                if isinstance(value, lib.Counter64)
                else 0
            )
            # One wrap of a 32-bit counter looks like a small rise; a reset looks like a fall.
            delta = delta + wrap if wrap and last > wrap * 3 // 4 else -1
        if delta < 0 or elapsed <= 0 or elapsed > 3600:
            return None
        return round(delta * 60.0 / elapsed * spec.scale, 2)

    async def _walk(
        self, engine: Any, auth: Any, target: Any, spec: SnmpValue
    ) -> float | int | None:
        lib = _lib()
        numbers: list[float] = []
        async for indication, status, index, binds in lib.bulk_walk_cmd(
            engine,
            auth,
            target,
            lib.ContextData(),
            0,
            25,
            lib.ObjectType(lib.ObjectIdentity(self.oids[spec.metric])),
            lexicographicMode=False,
            lookupMib=False,
        ):
            self._failed(indication, status, index, binds)
            for _, value in binds:
                number = _number(value)
                if number is not None:
                    numbers.append(number)
            if len(numbers) > 10_000:
                raise DeviceProtocolError(f"{spec.metric}: a table of over 10,000 rows")
        if spec.walk == "count":
            return len(numbers)
        if not numbers:
            return None
        summarise: dict[str, Callable[[list[float]], float]] = {
            "min": min,
            "max": max,
            "mean": statistics.fmean,
            "median": statistics.median,
        }
        summary = summarise[spec.walk or "mean"](numbers)
        return self._scaled(spec, summary)

    async def close(self) -> None:
        self._target = None  # pysnmp's engine keeps one socket for every device
