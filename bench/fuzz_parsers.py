"""10^5 hostile inputs per parser: each may raise only its declared error type, and the slowest
input is reported. Inputs are random bytes, mutations (bit flips, cuts, splices, repeats) of
valid seeds, and deep nesting. Exit 1 when any parser raised something else.

    .venv/bin/python bench/fuzz_parsers.py --count 100000        # ~10 minutes on 2 cores
    .venv/bin/python bench/fuzz_parsers.py --count 2000 --only pjlink,osc
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import struct
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU

from roomd.audio.rtp import RtpError, parse_rtp
from roomd.daemon.bookings import BookingError, parse_bookings_message, parse_ical
from roomd.daemon.config import ConfigError, load_config
from roomd.daemon.inbound import InputRejected, parse_command
from roomd.drivers import pjlink_protocol as pj
from roomd.drivers import x32_protocol as osc
from roomd.drivers.base import DeviceError
from roomd.drivers.modbus import _TcpLink, decode_response, split_rtu_frame
from roomd.drivers.nfc_framing import LineParser, Rdm6300Parser


class _Transport(asyncio.Transport):
    def write(self, data: Any) -> None: ...
    def close(self) -> None: ...
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


_loop = asyncio.new_event_loop()


def modbus_tcp(data: bytes) -> None:
    link = _TcpLink()
    link.connection_made(_Transport())
    fut = _loop.create_future()
    link.pending[1] = fut
    link.data_received(data)
    if fut.done() and fut.exception() is not None:
        raise fut.exception()  # type: ignore[misc]


_rtu = FramerRTU(DecodePDU(is_server=False))


def modbus_rtu(data: bytes) -> None:
    buf = data
    for _ in range(8):
        used, _dev, pdu = split_rtu_frame(_rtu, buf)
        if not used:
            return
        buf = buf[used:]
        if pdu is not None:
            decode_response(pdu)


def nfc(data: bytes) -> None:
    list(Rdm6300Parser().feed(data))
    list(LineParser().feed(data))


_cfg_dir = Path(tempfile.mkdtemp(prefix="roomd-fuzz-"))


def config(data: bytes) -> None:
    path = _cfg_dir / "roomd.yaml"
    path.write_bytes(data)
    load_config(path)


DAY = 1795392000.0
PARSERS: dict[str, tuple[Callable[[bytes], Any], tuple[type[BaseException], ...], list[bytes]]] = {
    "pjlink": (
        pj.parse_line,
        (pj.ProtocolError,),
        [b"%1POWR=1\r", b"%2ERST=000000\r", b"%1INST=11 31 32\r", b"PJLINK 1 498e4a67\r"],
    ),
    "osc": (
        osc.parse,
        (osc.OscDecodeError,),
        [osc.build("/ch/01/mix/on", 1), osc.build("/meters/0", b"\x01\x00\x00\x00" * 4)],
    ),
    "modbus-tcp": (
        modbus_tcp,
        (DeviceError,),
        [bytes.fromhex("000100000007010304") + struct.pack(">2H", 221, 500)],
    ),
    "modbus-rtu": (
        modbus_rtu,
        (DeviceError,),
        [bytes.fromhex("010304") + struct.pack(">2H", 221, 500) + b"\x00\x00"],
    ),
    "nfc": (nfc, (), [b"\x020800A1B2C3F1\x03", b"04A1B2C3D4E5F6\r\n"]),
    "rtp": (parse_rtp, (RtpError,), [bytes.fromhex("80610001000000640000000a") + b"\x00" * 96]),
    "ical": (
        lambda d: parse_ical(d, "r1", "f.ics", DAY, DAY + 2 * 86400, limit=500),
        (BookingError,),
        [
            b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:a\r\nDTSTART:20261123T090000Z\r\n"
            b"DTEND:20261123T100000Z\r\nRRULE:FREQ=DAILY\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
        ],
    ),
    "bookings": (
        lambda d: parse_bookings_message(d, "r1", limit=500),
        (BookingError,),
        [b'[{"id":"m","start":"2026-11-23T09:00:00Z","end":"2026-11-23T10:00:00Z"}]'],
    ),
    "config": (
        config,
        (ConfigError,),
        [
            b"site: hq\nrooms:\n  - id: r1\n    thresholds: {co2_ppm: {max: 800}}\n    devices:\n"
            b"      - {id: env, driver: modbus, model: generic-iaq, host: 127.0.0.1, port: 1502}\n"
        ],
    ),
    "mqtt-command": (
        parse_command,
        (InputRejected,),
        [json.dumps({"command": "power", "args": {"state": "on"}, "id": "1"}).encode()],
    ),
}


def mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    kind = rng.randrange(8)
    seed = bytearray(rng.choice(seeds))
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 300))
    if kind == 1 and seed:
        for _ in range(rng.randrange(1, 8)):
            seed[rng.randrange(len(seed))] ^= 1 << rng.randrange(8)
        return bytes(seed)
    if kind == 2:
        return bytes(seed[: rng.randrange(len(seed) + 1)])
    if kind == 3:
        other = rng.choice(seeds)
        cut = rng.randrange(len(seed) + 1)
        return bytes(seed[:cut]) + other[rng.randrange(len(other) + 1) :]
    if kind == 4:
        return bytes(seed) * rng.randrange(2, 50)
    if kind == 5:
        opener = rng.choice([b"[", b'{"a":', b"- ", b"BEGIN:VEVENT\r\n", b"\x00"])
        return opener * rng.randrange(10, 3000) + bytes(seed)
    if kind == 6 and seed:
        pos = rng.randrange(len(seed))
        return bytes(seed[:pos]) + rng.randbytes(rng.randrange(1, 20)) + bytes(seed[pos:])
    return bytes(seed)


def run(name: str, count: int, seed: int) -> dict[str, Any]:
    parse, allowed, seeds = PARSERS[name]
    rng = random.Random(seed)
    outcomes: Counter[str] = Counter()
    unexpected: list[str] = []
    slowest = 0.0
    started = time.perf_counter()
    for _ in range(count):
        data = mutate(rng, seeds)
        t0 = time.perf_counter()
        try:
            parse(data)
            outcomes["accepted"] += 1
        except allowed as exc:
            outcomes[type(exc).__name__] += 1
        except Exception as exc:
            outcomes["UNEXPECTED " + type(exc).__name__] += 1
            if len(unexpected) < 5:
                unexpected.append(f"{type(exc).__name__}: {exc} on {data[:60]!r}")
        slowest = max(slowest, time.perf_counter() - t0)
    return {
        "parser": name,
        "inputs": count,
        "seconds": round(time.perf_counter() - started, 1),
        "slowest_ms": round(slowest * 1000, 2),
        "outcomes": dict(outcomes),
        "unexpected": unexpected,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated parser names")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or list(PARSERS)
    machine = platform.processor() or platform.machine()
    print(f"# {platform.node()} {machine}, Python {platform.python_version()}, ")
    print(f"# {args.count} inputs per parser, seed {args.seed}")
    print("| parser | inputs | s | slowest input ms | accepted | declared errors | other |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    bad = False
    for name in names:
        r = run(name, args.count, args.seed)
        other = sum(v for k, v in r["outcomes"].items() if k.startswith("UNEXPECTED"))
        declared = r["inputs"] - r["outcomes"].get("accepted", 0) - other
        accepted = r["outcomes"].get("accepted", 0)
        row = [name, r["inputs"], r["seconds"], r["slowest_ms"], accepted, declared, other]
        print("| " + " | ".join(str(v) for v in row) + " |", flush=True)
        for line in r["unexpected"]:
            print(f"    {line}", file=sys.stderr)
        bad |= other > 0
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
