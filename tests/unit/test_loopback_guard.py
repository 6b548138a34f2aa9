"""The suite's own guard: a socket aimed off this machine fails before sending anything."""

from __future__ import annotations

import asyncio
import socket

import pytest

from tests.conftest import OffLoopback

BROADCAST = ".".join(["255"] * 4)  # the limited broadcast address; nothing is sent to it


@pytest.mark.parametrize("host", ["192.0.2.1", "10.1.3.40", BROADCAST, "2001:db8::1"])
def test_tcp_and_udp_to_other_hosts_fail_at_once(host: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s, pytest.raises(OffLoopback):
        s.connect((host, 1883))
    with socket.socket(family, socket.SOCK_DGRAM) as u, pytest.raises(OffLoopback):
        u.sendto(b"%2SRCH\r", (host, 4352))


async def test_asyncio_connections_are_guarded_too() -> None:
    with pytest.raises(OffLoopback):
        await asyncio.get_running_loop().create_connection(asyncio.Protocol, "192.0.2.1", 502)


def test_loopback_still_works() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind(("127.0.0.1", 0))
        u.sendto(b"x", u.getsockname())
        assert u.recv(1) == b"x"
