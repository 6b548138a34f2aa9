"""What every TCP client protocol of roomd does on connecting (Modbus TCP, MQTT)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import cast


def stream_transport(transport: asyncio.BaseTransport) -> asyncio.Transport:
    """The transport as a stream transport, with Nagle off: requests and messages are small
    and each waits for its answer. (uvloop's transports are not asyncio.Transport
    subclasses, only alike: hence a cast, not an isinstance check.)"""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # TLS-wrapped or not TCP
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return cast(asyncio.Transport, transport)
