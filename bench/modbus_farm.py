#!/usr/bin/env python3
"""The comparison job's devices: N Modbus TCP servers in one lean process.

Each port is one sensor answering FC03 for two holding registers (CO2 ppm, temperature × 10),
with noisy values like a real sensor's, and strict like one: a wrong function or address gets
a Modbus exception reply. It counts the requests it answers, so every contender's polls are
counted the same way, outside the contender.

Control (UDP, one datagram each, answered on the same socket):
  `count`            → total FC03 requests answered so far
  `set <index> <v>`  → pin sensor <index>'s CO2 to <v> ppm (`set <index> -` unpins)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import struct
from pathlib import Path
from typing import Any

_HEADER = struct.Struct(">HHHBBHH")  # MBAP (tid, pid, len, unit) + function, address, count
_REPLY = struct.Struct(">HHHBBBhh")


class Farm:
    def __init__(self, n: int, steady: bool) -> None:
        self.pinned: dict[int, int] = {}
        self.steady = steady
        self.requests = 0
        self.n = n

    def co2(self, index: int) -> int:
        pinned = self.pinned.get(index)
        if pinned is not None:
            return pinned
        return 600 if self.steady else 600 + random.randint(-20, 20)


class Sensor(asyncio.Protocol):
    def __init__(self, farm: Farm, index: int) -> None:
        self.farm, self.index = farm, index
        self.buf = b""
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        out = []
        while len(buf) >= 12:
            tid, pid, length, unit, fn, addr, count = _HEADER.unpack_from(buf)
            if pid != 0 or length != 6:
                self.transport.close()  # not Modbus TCP: a real gateway drops the link
                return
            buf = buf[12:]
            if fn != 3:
                out.append(struct.pack(">HHHBBB", tid, 0, 3, unit, fn | 0x80, 1))
            elif addr != 0 or count != 2:
                out.append(struct.pack(">HHHBBB", tid, 0, 3, unit, 0x83, 2))
            else:
                self.farm.requests += 1
                temp = 220 if self.farm.steady else 220 + random.randint(-3, 3)
                out.append(_REPLY.pack(tid, 0, 7, unit, 3, 4, self.farm.co2(self.index), temp))
        self.buf = buf
        if out:
            self.transport.write(b"".join(out))


class Control(asyncio.DatagramProtocol):
    def __init__(self, farm: Farm) -> None:
        self.farm = farm
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        words = data.decode().split()
        if words[0] == "count":
            self.transport.sendto(str(self.farm.requests).encode(), addr)
        elif words[0] == "set":
            index = int(words[1])
            if words[2] == "-":
                self.farm.pinned.pop(index, None)
            else:
                self.farm.pinned[index] = int(words[2])
            self.transport.sendto(b"ok", addr)


async def serve(n: int, ports_file: Path, control_port: int, steady: bool) -> None:
    loop = asyncio.get_running_loop()
    farm = Farm(n, steady)
    ports = []
    for i in range(n):
        server = await loop.create_server(lambda i=i: Sensor(farm, i), "127.0.0.1", 0, backlog=64)
        ports.append(server.sockets[0].getsockname()[1])
    await loop.create_datagram_endpoint(
        lambda: Control(farm), local_addr=("127.0.0.1", control_port)
    )
    ports_file.write_text(json.dumps(ports))  # noqa: ASYNC240 - once, at start
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--devices", type=int, required=True)
    ap.add_argument("--ports-file", type=Path, required=True)
    ap.add_argument("--control-port", type=int, required=True)
    ap.add_argument("--steady", action="store_true")
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.devices, args.ports_file, args.control_port, args.steady))


if __name__ == "__main__":
    main()
