#!/usr/bin/env python3
"""Instructions per poll, counted by callgrind: a figure that does not move with the VM's
noise, for telling a hot-path change of a few per cent from chance (CPU time on this VM
varies by ±10 % between windows and up to 40 % between runs; instruction counts by ≈ 1 %).

The daemon runs in-process as in `bench/poll_cost.py` (compare.py's job and config, a real
Mosquitto), except that each Modbus TCP link is an in-memory wire: a request is answered,
one event-loop callback later, with the farm's reply (noisy CO₂ and temperature). So the
count is roomd's own user-space work a poll (engine, driver, decode, rules, state, metrics,
MQTT publishing, background work) plus the event loop's, without the kernel's TCP (which
callgrind does not see) and with the stand-in's own work (a struct unpack and pack and one
loop callback a request). A bare poller on the same wire (bench/floor_poller.py's logic)
counts ≈ 12,000 a poll.
Instructions are not time (cache misses are not counted); use this to compare two builds,
`bench/compare.py` for what a poll costs.

Usage: python bench/poll_instructions.py [--devices 2000] [--seconds 20] [--ablate readings]
Needs valgrind (Debian: valgrind). Runs in about two minutes; 2,000 devices is what
callgrind keeps up with in real time (fewer overweight the per-tick and per-second work).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.compare import roomd_config  # noqa: E402
from bench.poll_bench import free_port  # noqa: E402
from bench.poll_cost import ablate  # noqa: E402

_REQUEST = struct.Struct(">HHHBBHH")  # MBAP + function, address, count
_REPLY = struct.Struct(">HHHBBBhh")  # MBAP + function, byte count, CO₂, temperature × 10


WIRES: list[MemoryWire] = []


class MemoryWire:
    """The roomd side of a link to one farm sensor, in memory: each FC03 request of the
    job's two registers is answered one loop callback later, as bench/modbus_farm.py would."""

    def __init__(self, protocol: asyncio.Protocol, loop: asyncio.AbstractEventLoop) -> None:
        self.protocol, self.loop = protocol, loop
        # Noisy values as the farm's (600 ± 20 ppm, 22.0 ± 0.3 °C), drawn ahead of time.
        self.values = [
            (600 + random.randint(-20, 20), 220 + random.randint(-3, 3)) for _ in range(61)
        ]
        self.n = 0  # requests answered (the job's polls are one request each)
        WIRES.append(self)

    def write(self, data: bytes) -> None:
        tid, _pid, _length, unit, fn, _address, _count = _REQUEST.unpack_from(data)
        co2, temp = self.values[self.n % 61]
        self.n += 1
        reply = _REPLY.pack(tid, 0, 7, unit, fn, 4, co2, temp)
        self.loop.call_soon(self.protocol.data_received, reply)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        self.loop.call_soon(self.protocol.connection_lost, None)


async def child(cfg: Path, warmup: float, seconds: float) -> None:
    from roomd.daemon.config import load_config
    from roomd.daemon.supervisor import Daemon
    from roomd.drivers import modbus

    async def open_in_memory(cls: Any, host: str, port: int, timeout: float) -> Any:
        link = cls()
        link.connection_made(MemoryWire(link, asyncio.get_running_loop()))
        return link

    modbus._TcpLink.open = classmethod(open_in_memory)  # type: ignore[assignment,method-assign]
    daemon = Daemon(load_config(cfg))
    task = asyncio.create_task(daemon.run())
    await asyncio.sleep(warmup)

    def polls() -> int:
        return sum(wire.n for wire in WIRES)

    def callgrind(*args: str) -> None:
        # posix_spawn, not subprocess.run: the request that ends the window is counted in
        # it, and Popen's Python machinery is ≈ 90 M instructions, posix_spawn's a fraction.
        quiet = [(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)]
        argv = ["callgrind_control", *args, str(os.getpid())]
        pid = os.posix_spawnp(argv[0], argv, dict(os.environ), file_actions=quiet)
        os.waitpid(pid, 0)

    before, cpu = polls(), time.process_time()
    callgrind("-i", "on")
    await asyncio.sleep(seconds)
    callgrind("--dump=window")
    after, cpu = polls(), time.process_time() - cpu
    print(f"POLLS {after - before} CPU {cpu:.2f}", flush=True)
    daemon.stop()
    await task


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--devices", type=int, default=2000)
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds (valgrind is slow)")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--ablate", default="", help="as bench/poll_cost.py's")
    ap.add_argument("--keep", type=Path, help="copy the window's callgrind file here")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        import uvloop

        random.seed(13)
        ablate({part for part in args.ablate.split(",") if part})
        uvloop.run(child(Path(args.child), args.warmup, args.seconds))
        return 0
    if shutil.which("valgrind") is None:
        print("needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="roomd-instr-"))
    mqtt_port = free_port()
    mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    broker = subprocess.Popen([mosq, "-p", str(mqtt_port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        # Never dialled: the links are in memory. Distinct ports keep one gateway a device.
        ports = list(range(40000, 40000 + args.devices))
        cfg = roomd_config(work, ports, mqtt_port, free_port(), argparse.Namespace(poll=1.0))
        out = work / "callgrind.out"
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
        cmd += [sys.executable, __file__, "--child", str(cfg)]
        cmd += ["--warmup", str(args.warmup), "--seconds", str(args.seconds)]
        cmd += ["--ablate", args.ablate]
        run = subprocess.run(cmd, capture_output=True, text=True)
        found = re.search(r"POLLS (\d+) CPU ([\d.]+)", run.stdout)
        # The window's dump is the one callgrind_control asked for (numbered .1); the
        # file written at exit has the rest.
        dump = work / "callgrind.out.1"
        total = (
            re.search(r"^(?:summary|totals): (\d+)", dump.read_text(), re.M)
            if dump.exists()
            else None
        )
        if found is None or total is None:
            print(run.stdout[-2000:], run.stderr[-4000:], file=sys.stderr)
            return 1
        if args.keep:
            shutil.copy(dump, args.keep)
        polls, instructions = int(found.group(1)), int(total.group(1))
        each = instructions / polls
        print(f"{args.devices} devices, {polls} polls in the window: "
              f"{each:,.0f} instructions a poll ({instructions:,} in all)")  # fmt: skip
    finally:
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
