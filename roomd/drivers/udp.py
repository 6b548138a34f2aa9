"""A UDP endpoint that hands datagrams to a callback (asyncio's protocol, without a class per
driver)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast


class DatagramEndpoint(asyncio.DatagramProtocol):
    def __init__(
        self,
        on_datagram: Callable[[bytes], None],
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.on_datagram = on_datagram
        self.on_error = on_error
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.on_datagram(data)

    def error_received(self, exc: Exception) -> None:
        # On a connected socket: ICMP port unreachable, i.e. nobody listens there (yet).
        if self.on_error is not None:
            self.on_error(exc)
