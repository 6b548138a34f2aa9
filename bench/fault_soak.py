#!/usr/bin/env python3
"""The fault matrix's long runs: `roomd run` against N simulated Modbus TCP devices and a real
Mosquitto, all on 127.0.0.1.

- `--mode bad-one`: one device turns bad (silent, slow, closing, garbage in turn) while the
  others poll; the healthy devices' poll intervals, as the simulators see the requests arrive,
  must keep p99 jitter ≤ 10 ms.
- `--mode soak`: faults rotate over random devices for `--duration` seconds (each held ~10 s);
  every injected fault must raise exactly one offline alert and clear it exactly once, and the
  daemon's RSS, open descriptors and asyncio task count must not drift (< 5 % between the first
  and the last fifth of the run).

Usage:
    .venv/bin/python bench/fault_soak.py --mode bad-one --devices 1000 --duration 60
    .venv/bin/python bench/fault_soak.py --mode soak --devices 1000 --duration 1800
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.poll_bench import AlertWatch, free_port, pct, rss_mb  # noqa: E402

FAULT_KINDS = ("silent", "slow", "disconnect", "corrupt", "exception")


async def serve(n: int, ports_file: Path, control_port: int, record: bool) -> None:
    """The simulators: N single-unit Modbus TCP servers; a UDP control port sets faults and
    dumps request arrival times."""
    from roomd.simulators.modbus import ModbusTcpSim, SimSensor

    sims = []
    for _ in range(n):
        sensor = SimSensor.of("generic-iaq")
        sensor.set(temperature_c=22.0, humidity_pct=50.0, co2_ppm=600.0, illuminance_lux=650.0,
                   color_temp_k=4500.0)  # fmt: skip
        sensor.slow_delay = 3.0
        sims.append(await ModbusTcpSim([sensor], record_requests=record).start())
    ports_file.write_text(json.dumps([s.port for s in sims]))  # noqa: ASYNC240

    class Control(asyncio.DatagramProtocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: Any) -> None:
            words = data.decode().split()
            if words[0] == "fault":
                sims[int(words[1])].sensor.fault = words[2]  # type: ignore[assignment]
            elif words[0] == "dump":
                out = Path(words[1])
                out.write_text(json.dumps([s.request_times for s in sims]))
                self.transport.sendto(b"ok", addr)

    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(Control, local_addr=("127.0.0.1", control_port))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def health(http_port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=10) as r:
        data: dict[str, Any] = json.loads(r.read())
        return data


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--mode", choices=["bad-one", "soak"], required=True)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=15.0)
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ports-file", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--control-port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--record", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.ports_file, args.control_port, args.record))
        return 0

    work = Path(tempfile.mkdtemp(prefix="roomd-soak-"))
    mqtt_port, http_port, control_port = free_port(), free_port(), free_port()
    mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    (work / "mosquitto.conf").write_text(f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\n")
    procs: list[subprocess.Popen[bytes]] = []
    ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ctl.settimeout(60)

    def control(line: str) -> None:
        ctl.sendto(line.encode(), ("127.0.0.1", control_port))

    try:
        broker = [mosq, "-c", str(work / "mosquitto.conf")]
        quiet = subprocess.DEVNULL
        procs.append(subprocess.Popen(broker, stdout=quiet, stderr=quiet))
        ports_file = work / "ports.json"
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, "--mode", args.mode, "--serve", str(args.devices),
                 "--ports-file", str(ports_file), "--control-port", str(control_port),
                 *(["--record"] if args.mode == "bad-one" else [])]
            )
        )  # fmt: skip
        deadline = time.time() + 180
        while not ports_file.exists() and time.time() < deadline:
            time.sleep(0.1)
        ports = json.loads(ports_file.read_text())
        rooms = [
            {
                "id": f"r{r // 10:04d}",
                "devices": [
                    {"id": f"env{i}", "driver": "modbus", "model": "generic-iaq",
                     "host": f"127.0.0.1:{p}", "poll": "1s", "timeout": "1s"}
                    for i, p in enumerate(ports[r : r + 10])
                ],
            }
            for r in range(0, len(ports), 10)
        ]  # fmt: skip
        cfg = {
            "site": "bench",
            "mqtt": {"url": f"mqtt://127.0.0.1:{mqtt_port}"},
            "http": {"listen": f"127.0.0.1:{http_port}"},
            "state_dir": str(work / "state"),
            "escalation": {"grades": []},
            "poll_jitter": 0,  # measure scheduling jitter, not the deliberate ±5 % spread
            "rooms": rooms,
        }
        (work / "roomd.yaml").write_text(yaml.safe_dump(cfg))
        watch = AlertWatch(mqtt_port)
        daemon = subprocess.Popen(
            [sys.executable, "-m", "roomd", "--log-level", "warning", "run", "-c",
             str(work / "roomd.yaml")], cwd=ROOT,
        )  # fmt: skip
        procs.append(daemon)
        time.sleep(args.warmup)
        machine = (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        )
        result: dict[str, Any] = {"mode": args.mode, "devices": args.devices, "machine": machine}
        if args.mode == "bad-one":
            result.update(bad_one(args, control, ctl, work, len(ports)))
        else:
            result.update(soak(args, control, watch, daemon.pid, http_port, len(ports)))
        print(json.dumps(result, indent=2))
        return 0 if result.get("ok") else 1
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(20)
        for p in procs:
            if p.poll() is None:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


def bad_one(args: Any, control: Any, ctl: socket.socket, work: Path, n: int) -> dict[str, Any]:
    """Device 0 goes bad in every way in turn; the healthy ones' intervals are measured."""
    started = time.monotonic()
    per_fault = args.duration / 4
    for kind in ("silent", "slow", "disconnect", "corrupt"):
        control(f"fault 0 {kind}")
        time.sleep(per_fault)
    control("fault 0 none")
    dump = work / "requests.json"
    control(f"dump {dump}")
    ctl.recvfrom(16)
    times: list[list[float]] = json.loads(dump.read_text())
    window_start = started  # CLOCK_MONOTONIC is one clock for every process on the machine
    jitter: list[float] = []
    for device in range(1, n):
        arrivals = [t for t in times[device] if t >= window_start]
        for a, b in itertools.pairwise(arrivals):
            jitter.append(abs((b - a) - 1.0))  # poll 1 s, poll_jitter 0 here
    p99 = pct(jitter, 99) * 1000
    return {
        "window_s": round(args.duration, 1),
        "healthy_intervals": len(jitter),
        "interval_jitter_ms_p50": round(statistics.median(jitter) * 1000, 2),
        "interval_jitter_ms_p99": round(p99, 2),
        "interval_jitter_ms_max": round(max(jitter) * 1000, 2),
        "note": "jitter = |interval − 1 s| as the simulators saw requests arrive; poll_jitter 0",
        "ok": p99 <= 10,
    }


def soak(
    args: Any, control: Any, watch: AlertWatch, pid: int, http_port: int, n: int
) -> dict[str, Any]:
    samples: list[tuple[float, float, int, int]] = []  # (t, rss MB, fds, tasks)
    injected: list[tuple[int, str, float]] = []
    end = time.monotonic() + args.duration
    next_sample = 0.0
    rng = random.Random(7)
    while time.monotonic() < end:
        device = rng.randrange(n)
        kind = rng.choice(FAULT_KINDS)
        control(f"fault {device} {kind}")
        injected.append((device, kind, time.time()))
        time.sleep(10)
        control(f"fault {device} none")
        time.sleep(10)
        if time.monotonic() >= next_sample:
            samples.append((time.monotonic(), rss_mb(pid), open_fds(pid),
                            int(health(http_port).get("tasks", 0))))  # fmt: skip
            next_sample = time.monotonic() + 30
    time.sleep(45)  # a device faulty for 10 s may be in a 8-16 s backoff when it is mended
    raised = cleared = 0
    wrong: list[str] = []
    for index, (device, kind, at) in enumerate(injected):
        alert_id = f"r{device // 10:04d}.env{device % 10}.online.min"
        # Its clear may come any time before this device's next fault (backoff), not only
        # within the 20 s slot.
        later = [a for d, _k, a in injected[index + 1 :] if d == device]
        until = later[0] - 1 if later else float("inf")
        events = [(t, a) for t, a in watch.events.get(alert_id, []) if at - 1 <= t < until]
        ups = sum(1 for _t, a in events if a)
        downs = sum(1 for _t, a in events if not a)
        raised += min(ups, 1)
        cleared += min(downs, 1)
        if (ups, downs) != (1, 1):  # a Modbus exception reply is a failed poll too
            wrong.append(f"{alert_id} {kind}: {ups} raised, {downs} cleared")
    fifth = max(1, len(samples) // 5)
    first, last = samples[:fifth], samples[-fifth:]

    def drift(i: int) -> float:
        a = statistics.mean(s[i] for s in first)
        b = statistics.mean(s[i] for s in last)
        return round(100 * (b - a) / a, 2) if a else 0.0

    drifts = {"rss_pct": drift(1), "fds_pct": drift(2), "tasks_pct": drift(3)}
    return {
        "duration_s": args.duration,
        "faults_injected": len(injected),
        "raised": raised,
        "cleared": cleared,
        "mismatches": wrong[:10],
        "rss_mb_first_last": [round(first[0][1], 1), round(last[-1][1], 1)],
        "fds_first_last": [first[0][2], last[-1][2]],
        "tasks_first_last": [first[0][3], last[-1][3]],
        "drift": drifts,
        "ok": not wrong
        and raised == cleared == len(injected)
        and all(abs(v) < 5 for v in drifts.values()),
    }


if __name__ == "__main__":
    sys.exit(main())
