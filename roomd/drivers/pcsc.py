"""PC/SC contactless readers (e.g. ACR122U) through pcscd and pyscard (optional extra `pcsc`).

A card's UID comes from the reader's pseudo-APDU `FF CA 00 00 00` (answer: UID + `90 00`).
pyscard is blocking, so each check runs in a worker thread; a card is reported once per
presence (and never twice within `dedupe`), however long it stays on the reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Literal

from pydantic import Field

from ..daemon.units import Duration
from . import register
from .base import DeviceConfig, DeviceProtocolError, DeviceUnreachable, DriverContext, Readings
from .nfc import CardReaderDriver
from .nfc_framing import Deduplicator

GET_UID = [0xFF, 0xCA, 0x00, 0x00, 0x00]


class PcscConfig(DeviceConfig):
    driver: Literal["nfc-pcsc"]
    reader: str = Field("", description="part of the PC/SC reader name; empty: the first reader")
    poll: Duration = 0.25  # card presence check; the 5 s rule leaves plenty of room
    timeout: Duration = 2.0
    dedupe: Duration = 2.0


@register
class PcscReaderDriver(CardReaderDriver):
    kind = "nfc-pcsc"
    config_model = PcscConfig

    def __init__(self, config: DeviceConfig, context: DriverContext) -> None:
        super().__init__(config, context)
        assert isinstance(config, PcscConfig)
        self.cfg = config
        self.present: str | None = None
        self.dedupe = Deduplicator(config.dedupe)
        self.reader_name = ""

    @property
    def metrics(self) -> list[str]:
        return ["cards_read"]

    def _check(self) -> tuple[str, str | None]:
        """(reader name, UID of the card on it or None). Runs in a worker thread."""
        try:
            from smartcard.Exceptions import CardConnectionException, NoCardException
            from smartcard.pcsc.PCSCExceptions import EstablishContextException
            from smartcard.System import readers
        except ImportError:
            raise DeviceUnreachable("pyscard is not installed: pip install 'roomd[pcsc]'") from None
        try:
            found = [r for r in readers() if self.cfg.reader in str(r)]
        except EstablishContextException as exc:
            raise DeviceUnreachable(f"PC/SC service (pcscd) not available: {exc}") from None
        if not found:
            raise DeviceUnreachable(f"no PC/SC reader matching {self.cfg.reader!r}")
        reader = found[0]
        connection = reader.createConnection()
        try:
            connection.connect()
        except (NoCardException, CardConnectionException):
            return str(reader), None  # no card on the reader
        try:
            data, sw1, sw2 = connection.transmit(GET_UID)
        except CardConnectionException:
            return str(reader), None  # the card left mid-read
        finally:
            with contextlib.suppress(CardConnectionException):
                connection.disconnect()
        if (sw1, sw2) != (0x90, 0x00) or not data:
            raise DeviceProtocolError(f"GET UID answered {sw1:02X} {sw2:02X}")
        return str(reader), bytes(data).hex().upper()

    async def poll(self) -> Readings:
        async with asyncio.timeout(self.cfg.timeout):
            name, uid = await asyncio.to_thread(self._check)
        at = time.perf_counter()
        self.reader_name = name
        self.info = {"reader": name}
        if uid != self.present:
            self.present = uid
            if uid is not None and self.dedupe.fresh(uid, time.monotonic()):
                self.cards_read += 1
                if self.on_card is not None:
                    self.on_card(uid, at)
        return {"cards_read": self.cards_read}

    async def command(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        return await super().command(name, args)
