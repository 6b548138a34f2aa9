"""NFC/RFID sign-in readers on a serial port: RDM6300 (125 kHz) frames or one UID per line.

Readers are event sources, not polled devices: frames are parsed as they arrive and each new
card goes straight to the daemon with the time its last byte was read. `poll()` only checks that
the port is still there (a USB reader that is unplugged goes offline and is reopened when it
comes back) and, for readers that send keep-alives, that it has not gone silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from ..daemon.units import Duration
from . import register
from .base import (
    DeviceConfig,
    DeviceTimeout,
    DeviceUnreachable,
    Driver,
    DriverContext,
    Readings,
)
from .nfc_framing import Deduplicator, LineParser, Rdm6300Parser
from .serial_port import open_serial

log = logging.getLogger("roomd.nfc")

CardHandler = Callable[[str, float], None]  # uid, perf_counter() when its last byte was read


class NfcSerialConfig(DeviceConfig):
    driver: Literal["nfc-serial"]
    port: str
    framing: Literal["rdm6300", "line"] = "rdm6300"
    format: Literal["auto", "hex", "decimal"] = "auto"
    baudrate: int = Field(9600, gt=0)
    dedupe: Duration = 2.0
    heartbeat: Duration | None = None
    ack: str | None = None
    poll: Duration = 2.0

    def serial_line(self) -> tuple[str, tuple[Any, ...] | None] | None:
        return self.port, None  # not a bus: the port is this device's alone


class CardReaderDriver(Driver):
    """What the daemon needs of any sign-in reader: cards go to `on_card` as they are read."""

    def __init__(self, config: DeviceConfig, context: DriverContext) -> None:
        super().__init__(config, context)
        self.on_card: CardHandler | None = None
        self.cards_read = 0

    def acknowledge(self) -> None:
        """Tell the reader the sign-in is recorded (beep/LED), where it has a way to show it."""


@register
class NfcReaderDriver(CardReaderDriver):
    kind = "nfc-serial"
    config_model = NfcSerialConfig
    self_timed = True

    def __init__(self, config: DeviceConfig, context: DriverContext) -> None:
        super().__init__(config, context)
        assert isinstance(config, NfcSerialConfig)
        self.cfg = config
        self.parser: Rdm6300Parser | LineParser = (
            Rdm6300Parser() if config.framing == "rdm6300" else LineParser(fmt=config.format)
        )
        self.dedupe = Deduplicator(config.dedupe)
        self.transport: asyncio.BaseTransport | None = None
        self.last_data = time.monotonic()
        self.lost_reason = ""

    @property
    def metrics(self) -> list[str]:
        return ["bad_frames", "cards_read"]

    def _data(self, data: bytes, at: float) -> None:
        self.last_data = time.monotonic()
        for uid in self.parser.feed(data):
            if self.dedupe.fresh(uid, self.last_data):  # a held card repeats its frame
                self.cards_read += 1
                if self.on_card is not None:
                    self.on_card(uid, at)

    def _lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.lost_reason = str(exc) if exc else "port closed"

    async def _open(self) -> None:
        if self.transport is not None:
            return
        if not os.path.exists(self.cfg.port):  # noqa: ASYNC240 - one stat, no I/O wait
            raise DeviceUnreachable(f"{self.cfg.port} is not there (reader unplugged?)")
        self.transport = await open_serial(
            self.cfg.port,
            lambda data: self._data(data, time.perf_counter()),
            self._lost,
            baudrate=self.cfg.baudrate,
        )
        self.last_data = time.monotonic()

    async def poll(self) -> Readings:
        if self.transport is None and self.lost_reason:
            reason, self.lost_reason = self.lost_reason, ""
            raise DeviceUnreachable(f"{self.cfg.port}: {reason}")
        await self._open()
        hb = self.cfg.heartbeat
        if hb is not None and time.monotonic() - self.last_data > hb:
            raise DeviceTimeout(f"reader silent for more than {hb:g}s (heartbeat)")
        return {"bad_frames": self.parser.bad_frames, "cards_read": self.cards_read}

    def acknowledge(self) -> None:
        if self.cfg.ack and self.transport is not None:
            data = self.cfg.ack.encode("latin-1")
            with contextlib.suppress(Exception):
                self.transport.write(data)  # type: ignore[attr-defined]

    async def close(self) -> None:
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.close()
            self.transport = None
