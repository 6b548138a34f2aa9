"""BACnet/IP: a room's air terminal (VAV box) or air handler, for the supply air flow that gives
the room's air changes an hour (ACH = supply flow ÷ room volume, STANDARD §1: ≥ 4), and what
else it measures (temperature, CO₂, damper position).

bacpypes3 speaks the protocol; one BACnet application (one UDP port) serves every device. Reads
are unicast ReadProperty to the device's address: nothing is broadcast (no Who-Is), so a device
is configured by its IP address. What the device's points are is data: a BACnet model names the
metrics and their quantities; the device config gives the installation's object identifiers.
Units are read from the device (`units` property) once, and converted: a VAV box reporting
L/s or CFM gives m³/h like one reporting m³/h.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import re
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..daemon.profiles import load_yaml_model
from ..daemon.units import Duration
from . import register
from .base import (
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

log = logging.getLogger("roomd.bacnet")

BACNET_PORT = 47808
Quantity = Literal["airflow", "temperature", "co2", "percent", "number"]

# BACnet engineering units (their bacpypes3 names) → (quantity, factor, offset) to roomd's unit:
# m³/h, °C, ppm, %.
UNITS: dict[str, tuple[Quantity, float, float]] = {
    "cubic-meters-per-hour": ("airflow", 1.0, 0.0),
    "cubic-meters-per-second": ("airflow", 3600.0, 0.0),
    "cubic-meters-per-minute": ("airflow", 60.0, 0.0),
    "liters-per-second": ("airflow", 3.6, 0.0),
    "liters-per-minute": ("airflow", 0.06, 0.0),
    "liters-per-hour": ("airflow", 0.001, 0.0),
    "cubic-feet-per-minute": ("airflow", 1.6990108, 0.0),
    "cubic-feet-per-hour": ("airflow", 0.028316847, 0.0),
    "degrees-celsius": ("temperature", 1.0, 0.0),
    "degrees-fahrenheit": ("temperature", 5 / 9, -32 * 5 / 9),
    "degrees-kelvin": ("temperature", 1.0, -273.15),
    "parts-per-million": ("co2", 1.0, 0.0),
    "percent": ("percent", 1.0, 0.0),
    "no-units": ("number", 1.0, 0.0),
}
_OBJECT = re.compile(r"^(analog|binary|multi-state)-(input|output|value),\d{1,7}$")


class BacnetPoint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    quantity: Quantity
    decimals: int | None = Field(1, ge=0, le=6)


class BacnetModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    description: str = ""
    points: list[BacnetPoint] = Field(min_length=1)

    def point(self, metric: str) -> BacnetPoint | None:
        return next((p for p in self.points if p.metric == metric), None)


@cache
def load_bacnet_model(name_or_path: str) -> BacnetModel:
    return load_yaml_model("bacnet", "BACnet model", BacnetModel, name_or_path)


class BacnetConfig(DeviceConfig):
    driver: Literal["bacnet"]
    host: str = Field(description="the device's BACnet/IP address, host or host:port (47808)")
    model: str
    # point → object identifier: "analog-input,3"
    objects: dict[str, str] = Field(min_length=1)
    # roomd's own BACnet/IP address (one for every BACnet device): where replies come back.
    # Port 0: any free port (devices answer the request's source); mask: its broadcast domain.
    local_address: str = "0.0.0.0:0"
    poll: Duration = 30.0
    timeout: Duration = 3.0

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        load_bacnet_model(value)
        return value

    @model_validator(mode="after")
    def _points(self) -> BacnetConfig:
        split_host(self.host, BACNET_PORT)
        model = load_bacnet_model(self.model)
        for metric, obj in self.objects.items():
            if model.point(metric) is None:
                known = ", ".join(p.metric for p in model.points)
                raise ValueError(f"objects: {metric!r} is not a point of {model.model} ({known})")
            if not _OBJECT.match(obj):
                raise ValueError(
                    f"objects: {metric}: {obj!r} is not an object identifier "
                    "(analog-input,3, analog-value,12, ...)"
                )
        return self


class BacnetApplication:
    """roomd's one BACnet device on the network (it must have one to talk): created on the
    first poll, closed with the daemon."""

    def __init__(self, address: str) -> None:
        from bacpypes3.app import Application
        from bacpypes3.argparse import SimpleArgumentParser

        args: argparse.Namespace = SimpleArgumentParser().parse_args(
            ["--address", address, "--instance", "4194302", "--name", "roomd"]
        )
        self.app = Application.from_args(args)
        self.address = address

    def close(self) -> None:
        self.app.close()


@register
class BacnetDriver(Driver):
    kind = "bacnet"
    config_model = BacnetConfig
    self_timed = True  # each read is bounded by `timeout`

    def __init__(self, config: DeviceConfig, context: DriverContext) -> None:
        super().__init__(config, context)
        assert isinstance(config, BacnetConfig)
        self.cfg = config
        self.model = load_bacnet_model(config.model)
        host, port = split_host(config.host, BACNET_PORT)
        self.address = f"{host}:{port}"
        # metric → (factor, offset) from the device's units, read on the first poll
        self.conversions: dict[str, tuple[float, float]] = {}

    @property
    def metrics(self) -> list[str]:
        return list(self.cfg.objects)

    @property
    def model_name(self) -> str:
        return self.model.model

    def _application(self) -> Any:
        shared = self.context.shared.get("bacnet-app")
        if shared is None:
            try:
                shared = BacnetApplication(self.cfg.local_address)
            except OSError as exc:
                raise DeviceUnreachable(
                    f"cannot open roomd's BACnet/IP port {self.cfg.local_address}: {exc}"
                ) from None
            self.context.shared["bacnet-app"] = shared
        return shared.app

    async def _read(self, app: Any, obj: str, prop: str) -> Any:
        from bacpypes3.apdu import AbortPDU, ErrorRejectAbortNack

        try:
            async with asyncio.timeout(self.cfg.timeout):
                return await app.read_property(self.address, obj, prop)
        except TimeoutError:
            raise DeviceTimeout(
                f"no BACnet reply from {self.address} to a read of {obj} {prop} "
                f"within {self.cfg.timeout:g}s"
            ) from None
        except AbortPDU as exc:
            raise DeviceTimeout(f"BACnet read of {obj} {prop} aborted: {exc}") from None
        except ErrorRejectAbortNack as exc:
            # unknown-object, unknown-property, read-access-denied: the device said no
            raise DeviceRefused(f"BACnet {obj} {prop}: {exc}") from None

    async def _conversion(self, app: Any, metric: str, obj: str) -> tuple[float, float]:
        point = self.model.point(metric)
        assert point is not None
        units = str(await self._read(app, obj, "units"))
        known = UNITS.get(units)
        if known is None or known[0] != point.quantity:
            if point.quantity == "number":
                return 1.0, 0.0
            raise DeviceProtocolError(
                f"{obj} ({metric}) is in {units}, not a unit of {point.quantity} roomd converts"
            )
        return known[1], known[2]

    async def poll(self) -> Readings:
        app = self._application()
        objects = self.cfg.objects
        if len(self.conversions) < len(objects):
            for metric, obj in objects.items():
                if metric not in self.conversions:
                    self.conversions[metric] = await self._conversion(app, metric, obj)
        values = await asyncio.gather(
            *(self._read(app, obj, "present-value") for obj in objects.values())
        )
        readings: Readings = {}
        for (metric, obj), raw in zip(objects.items(), values, strict=True):
            try:
                number = float(raw)
            except (TypeError, ValueError):
                raise DeviceProtocolError(f"{obj} ({metric}): {raw!r} is not a number") from None
            if not math.isfinite(number):
                raise DeviceProtocolError(f"{obj} ({metric}): {number} is not a finite number")
            factor, offset = self.conversions[metric]
            point = self.model.point(metric)
            assert point is not None
            value = number * factor + offset
            readings[metric] = round(value, point.decimals) if point.decimals is not None else value
        return readings
