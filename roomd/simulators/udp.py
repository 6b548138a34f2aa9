"""What every UDP simulator shares: a datagram endpoint on 127.0.0.1, its address, closing."""

from __future__ import annotations

import asyncio
from typing import Self


class UdpServerSim(asyncio.DatagramProtocol):
    """A simulator that answers datagrams (SNMP agents, KNXnet/IP servers)."""

    transport: asyncio.DatagramTransport | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> Self:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        return self

    @property
    def address(self) -> str:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return f"{host}:{port}"

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's

    def reply(self, data: bytes, to: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(data, to)
