"""An active network probe from the daemon to a host in the room (a room PC, the codec, the
access point): ICMP loss and round trip every poll (icmplib), and now and then the throughput
to an iperf3 server on the room's network (Debian's iperf3 as the client, its JSON report).

`ping_loss_pct`, `ping_rtt_ms` and `throughput_mbps` are judged by the profile ("bandwidth,
stability"); a host that answers no echo at all is offline like any silent device.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from typing import Literal

from pydantic import Field, model_validator

from ..daemon.units import Duration
from . import register
from .base import (
    DeviceConfig,
    DeviceError,
    DeviceProtocolError,
    DeviceTimeout,
    DeviceUnreachable,
    Driver,
    DriverContext,
    Readings,
    split_host,
)

IPERF3_PORT = 5201
_MAX_REPORT = 4 * 1024 * 1024  # iperf3's JSON for a few seconds is ~20 KB


class ProbeConfig(DeviceConfig):
    driver: Literal["probe"]
    host: str = Field(description="the address to ping (and the iperf3 server's, by default)")
    count: int = Field(5, ge=1, le=100)  # echo requests a poll
    interval: Duration = 0.2  # between them
    poll: Duration = 30.0
    timeout: Duration = 2.0  # for each echo reply
    # Throughput to `iperf3 -s` on the room's network: `host:port` (default: `host`, 5201).
    iperf3: str | None = None
    iperf3_every: Duration = 3600.0  # a test loads the room's network: not every poll
    iperf3_seconds: float = Field(3.0, ge=1, le=30)
    iperf3_direction: Literal["download", "upload"] = "download"

    @model_validator(mode="after")
    def _hosts(self) -> ProbeConfig:
        split_host(self.host, 0)
        if self.iperf3 is not None:
            split_host(self.iperf3, IPERF3_PORT)
        if self.count * self.interval + self.timeout >= self.poll:
            raise ValueError("count × interval + timeout must fit in one poll interval")
        return self


@register
class ProbeDriver(Driver):
    kind = "probe"
    config_model = ProbeConfig
    self_timed = True  # every echo has its timeout; iperf3 its own, bounded below

    def __init__(self, config: DeviceConfig, context: DriverContext) -> None:
        super().__init__(config, context)
        assert isinstance(config, ProbeConfig)
        self.cfg = config
        self.next_throughput = 0.0  # monotonic time of the next iperf3 test
        self.throughput: float | None = None
        self.throughput_error = ""

    @property
    def metrics(self) -> list[str]:
        names = ["ping_loss_pct", "ping_rtt_ms"]
        return names + (["throughput_mbps"] if self.cfg.iperf3 else [])

    async def poll(self) -> Readings:
        readings: Readings = await self._ping()
        if self.cfg.iperf3 is not None:
            now = time.monotonic()
            if now >= self.next_throughput:
                self.next_throughput = now + self.cfg.iperf3_every
                try:
                    self.throughput, self.throughput_error = await self.measure_throughput(), ""
                except DeviceError as exc:
                    # The host answers pings: it is online; the test is retried sooner.
                    self.throughput, self.throughput_error = None, str(exc)
                    self.next_throughput = now + min(self.cfg.iperf3_every, 300.0)
            readings["throughput_mbps"] = self.throughput
            readings["throughput_error"] = self.throughput_error or None
        return readings

    async def _ping(self) -> Readings:
        import icmplib  # only for configs with a probe

        host = split_host(self.cfg.host, 0)[0]
        result = None
        # Unprivileged ICMP sockets where net.ipv4.ping_group_range allows; raw ones as root or
        # with CAP_NET_RAW (the systemd unit grants it).
        for privileged in (False, True):
            try:
                result = await icmplib.async_ping(
                    host,
                    count=self.cfg.count,
                    interval=self.cfg.interval,
                    timeout=self.cfg.timeout,
                    privileged=privileged,
                )
                break
            except icmplib.SocketPermissionError:
                continue
            except icmplib.NameLookupError:
                raise DeviceUnreachable(f"cannot resolve {host}") from None
            except (icmplib.ICMPLibError, OSError) as exc:
                raise DeviceUnreachable(f"ping {host}: {exc}") from None
        if result is None:
            raise DeviceError(
                "no ICMP socket: allow it with sysctl net.ipv4.ping_group_range or CAP_NET_RAW"
            )
        if not result.is_alive:
            raise DeviceTimeout(f"{host}: no echo reply to {self.cfg.count} pings")
        return {
            "ping_loss_pct": round(result.packet_loss * 100, 1),
            "ping_rtt_ms": round(result.avg_rtt, 2),
        }

    async def measure_throughput(self) -> float:
        """One iperf3 test; Mbit/s received (download: the server sends, `-R`)."""
        assert self.cfg.iperf3 is not None
        binary = shutil.which("iperf3")
        if binary is None:
            raise DeviceError("iperf3 is not installed (apt-get install iperf3)")
        host, port = split_host(self.cfg.iperf3, IPERF3_PORT)
        seconds = self.cfg.iperf3_seconds
        args = [binary, "-c", host, "-p", str(port), "-J", "-t", f"{seconds:g}"]
        args += ["--connect-timeout", str(int(self.cfg.timeout * 1000))]
        if self.cfg.iperf3_direction == "download":
            args.append("-R")
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            async with asyncio.timeout(seconds + self.cfg.timeout + 5):
                out = await proc.stdout.read(_MAX_REPORT) if proc.stdout else b""
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise DeviceTimeout(f"iperf3 to {host}:{port} did not finish") from None
        try:
            report = json.loads(out)
        except ValueError:
            raise DeviceProtocolError(f"iperf3 to {host}:{port}: no JSON report") from None
        if "error" in report:
            # The server is busy with another test ("the server is busy running a test"),
            # or not there: iperf3 serves one client at a time.
            raise DeviceUnreachable(f"iperf3 to {host}:{port}: {report['error']}")
        try:
            bits = float(report["end"]["sum_received"]["bits_per_second"])
        except (KeyError, TypeError, ValueError):
            raise DeviceProtocolError(f"iperf3 to {host}:{port}: no received rate") from None
        return round(bits / 1e6, 1)
