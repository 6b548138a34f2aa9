"""A simulated contactless card for a real pcscd, through the vsmartcard `vpcd` reader driver.

vpcd (loaded by pcscd) listens on a TCP port; a virtual card connects to it and answers APDUs
framed as a 2-byte big-endian length plus payload. One-byte payloads are control: 0 power off,
1 power on, 2 reset, 4 get ATR. Connecting is putting the card on the reader; closing, taking
it away. The card answers the reader pseudo-APDU `FF CA 00 00 00` with its UID.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

ATR = bytes.fromhex("3B8F8001804F0CA000000306030001000000006A")  # a contactless (PC/SC part 3) ATR


class VirtualCard:
    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.apdus = 0

    async def tap(self, uid: str) -> None:
        """Put a card with this UID on the reader (until remove())."""
        await self.remove()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self._writer = writer
        self._task = asyncio.create_task(self._serve(reader, writer, bytes.fromhex(uid)))

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, uid: bytes
    ) -> None:
        def send(payload: bytes) -> None:
            writer.write(struct.pack(">H", len(payload)) + payload)

        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                (n,) = struct.unpack(">H", await reader.readexactly(2))
                data = await reader.readexactly(n)
                if n == 1:
                    if data[0] == 4:
                        send(ATR)
                    continue
                self.apdus += 1
                send(uid + b"\x90\x00" if data[:2] == b"\xff\xca" else b"\x6d\x00")
                await writer.drain()

    async def remove(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
