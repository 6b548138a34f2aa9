"""The network probe against real peers: the kernel answering ICMP echo on 127.0.0.1, and
Debian's iperf3 server (one client at a time, as deployed)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from roomd.drivers.base import DriverContext
from roomd.drivers.probe import ProbeConfig, ProbeDriver
from tests.conftest import free_port


def probe(**kw: Any) -> ProbeDriver:
    fields: dict[str, Any] = {"id": "net", "driver": "probe", "host": "127.0.0.1", "count": 3}
    return ProbeDriver(ProbeConfig(**(fields | {"interval": 0.05} | kw)), DriverContext())


@pytest.fixture
def iperf3_server() -> Iterator[int]:
    binary = shutil.which("iperf3")
    if binary is None:
        pytest.fail("iperf3 is not installed: run ./scripts/test, which installs it")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "-s", "-B", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


async def test_ping_loss_and_round_trip() -> None:
    got = await probe().poll()
    assert got["ping_loss_pct"] == 0
    assert isinstance(got["ping_rtt_ms"], float) and 0 <= got["ping_rtt_ms"] < 50
    assert "throughput_mbps" not in got


async def test_throughput_against_iperf3_every_so_often(iperf3_server: int) -> None:
    d = probe(iperf3=f"127.0.0.1:{iperf3_server}", iperf3_seconds=1)
    first = await d.poll()
    mbps = first["throughput_mbps"]
    assert isinstance(mbps, float) and mbps > 100, first  # loopback: gigabits
    assert first["throughput_error"] is None
    started = time.monotonic()
    second = await d.poll()  # within `iperf3_every`: the last figure, no second test
    assert second["throughput_mbps"] == mbps and time.monotonic() - started < 1


async def test_throughput_server_absent_keeps_the_pings() -> None:
    d = probe(iperf3=f"127.0.0.1:{free_port()}", iperf3_seconds=1)
    got = await d.poll()
    assert got["ping_loss_pct"] == 0 and got["throughput_mbps"] is None
    assert "iperf3 to 127.0.0.1" in str(got["throughput_error"])


def test_config_bounds() -> None:
    with pytest.raises(ValueError, match="must fit in one poll interval"):
        ProbeConfig(id="n", driver="probe", host="127.0.0.1", count=100, interval=1, poll=30)
