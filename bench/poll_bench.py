#!/usr/bin/env python3
"""Benchmark: N simulated Modbus TCP sensors polled by `roomd run`.

Three processes: the simulators (this script with --serve), the daemon (`python -m roomd run`),
and this harness, which owns a real Mosquitto on a free port. Reported:

- the daemon's CPU time as % of one core and its RSS, over the measurement window;
- polls per second achieved (from the daemon's own /metrics);
- crossing → alert latency: the harness tells the simulator to move one sensor's CO2 over
  the limit (a UDP control message, applied on receipt) and times the retained alert's arrival
  at an MQTT subscriber; then moves it back and waits for the clear.

Usage: python bench/poll_bench.py --devices 1000 --poll 1s --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- the simulator process ------------------------------------------------------------------


BASE = {
    "temperature_c": 22.0,
    "humidity_pct": 50.0,
    "co2_ppm": 600.0,
    "illuminance_lux": 650.0,
    "color_temp_k": 4500.0,
}


def noisy(metric: str) -> float:
    # Real sensors' last digit moves: every poll brings new values (the costly case).
    return BASE[metric] + random.uniform(-0.5, 0.5) * (
        0.1 if metric.endswith(("_c", "_pct")) else 20
    )


async def serve(n: int, ports_file: Path, control_port: int, steady: bool) -> None:
    from roomd.simulators.modbus import ModbusTcpSim, SimSensor

    sims = []
    for _ in range(n):
        sensor = SimSensor.of("generic-iaq")
        if steady:
            sensor.set(**BASE)
        else:
            sensor.source = noisy
        sims.append(await ModbusTcpSim([sensor]).start())
    ports_file.write_text(json.dumps([s.port for s in sims]))  # noqa: ASYNC240 - once, at start

    class Control(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            index, metric, value = data.decode().split()
            sims[int(index)].sensor.set(**{metric: float(value)})

    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(Control, local_addr=("127.0.0.1", control_port))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


# ---- the harness ----------------------------------------------------------------------------


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def poll_count(http_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("roomd_poll_duration_seconds_count"):
            total += float(line.rsplit(" ", 1)[1])
    return total


class AlertWatch:
    """Times retained alert messages at an MQTT subscriber (raised: a payload; cleared: empty)."""

    def __init__(self, port: int, pattern: str = "roomd/bench/+/alerts/#") -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.events: dict[str, list[tuple[float, bool]]] = {}
        self.cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{os.getpid()}")
        self.client.on_connect = lambda c, *_: c.subscribe(pattern, 1)
        self.client.on_message = self._msg
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def _msg(self, c: Any, u: Any, m: Any) -> None:
        now = time.time()
        alert_id = m.topic.rsplit("/", 1)[1]
        with self.cond:
            self.events.setdefault(alert_id, []).append((now, bool(m.payload)))
            self.cond.notify_all()

    def wait(self, alert_id: str, active: bool, after: float, timeout: float) -> float | None:
        deadline = time.time() + timeout
        with self.cond:
            while time.time() < deadline:
                for at, is_active in self.events.get(alert_id, []):
                    if at >= after and is_active == active:
                        return at
                self.cond.wait(0.05)
        return None


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--poll", default="1s")
    ap.add_argument("--duration", type=float, default=30.0, help="measurement window, seconds")
    ap.add_argument("--warmup", type=float, default=8.0)
    ap.add_argument("--samples", type=int, default=30, help="crossing→alert samples")
    ap.add_argument("--steady", action="store_true", help="constant values (default: noisy)")
    ap.add_argument(
        "--no-deadband",
        action="store_true",
        help="publish device state on every change (profile deadbands set to 0)",
    )
    ap.add_argument("--state-qos", type=int, choices=[0, 1], default=1)
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ports-file", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--control-port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.ports_file, args.control_port, args.steady))
        return 0

    work = Path(tempfile.mkdtemp(prefix="roomd-bench-"))
    mqtt_port, control_port = free_port(), free_port()
    mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    (work / "mosquitto.conf").write_text(f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\n")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            subprocess.Popen(
                [mosq, "-c", str(work / "mosquitto.conf")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        ports_file = work / "ports.json"
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--serve",
                    str(args.devices),
                    "--ports-file",
                    str(ports_file),
                    "--control-port",
                    str(control_port),
                    *(["--steady"] if args.steady else []),
                ]
            )
        )
        deadline = time.time() + 120
        while not ports_file.exists() and time.time() < deadline:
            time.sleep(0.1)
        ports = json.loads(ports_file.read_text())
        http_port = free_port()  # after the simulators took their ports
        per_room = 10
        thresholds: dict[str, Any] = {"co2_ppm": {"hold": "0s"}}
        if args.no_deadband:
            for metric in BASE:
                thresholds.setdefault(metric, {})["deadband"] = 0
        rooms = []
        for r in range(0, len(ports), per_room):
            rooms.append(
                {
                    "id": f"r{r // per_room:04d}",
                    "thresholds": thresholds,
                    "devices": [
                        {
                            "id": f"env{i}",
                            "driver": "modbus",
                            "model": "generic-iaq",
                            "host": f"127.0.0.1:{p}",
                            "poll": args.poll,
                            "timeout": "1s",
                        }
                        for i, p in enumerate(ports[r : r + per_room])
                    ],
                }
            )
        cfg = {
            "site": "bench",
            "mqtt": {"url": f"mqtt://127.0.0.1:{mqtt_port}", "state_qos": args.state_qos},
            "http": {"listen": f"127.0.0.1:{http_port}"},
            "state_dir": str(work / "state"),
            "rooms": rooms,
        }
        (work / "roomd.yaml").write_text(yaml.safe_dump(cfg))
        watch = AlertWatch(mqtt_port)
        daemon = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "roomd",
                "--log-level",
                "warning",
                "run",
                "-c",
                str(work / "roomd.yaml"),
            ],
            cwd=ROOT,
        )
        procs.append(daemon)
        time.sleep(args.warmup)

        ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        (u0, s0), p0, t0 = cpu_times(daemon.pid), poll_count(http_port), time.monotonic()
        latencies: list[float] = []
        missed = 0
        end = t0 + args.duration
        while time.monotonic() < end and len(latencies) < args.samples:
            k = random.randrange(len(ports))
            alert_id = f"r{k // per_room:04d}.env{k % per_room}.co2_ppm.max"
            sent = time.time()
            ctl.sendto(f"{k} co2_ppm 1500".encode(), ("127.0.0.1", control_port))
            got = watch.wait(alert_id, True, sent, 10)
            if got is None:
                missed += 1
            else:
                latencies.append(got - sent)
            back = time.time()
            ctl.sendto(f"{k} co2_ppm 600".encode(), ("127.0.0.1", control_port))
            watch.wait(alert_id, False, back, 10)
        remaining = end - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
        (u1, s1), p1, t1 = cpu_times(daemon.pid), poll_count(http_port), time.monotonic()
        c0, c1 = u0 + s0, u1 + s1
        wall = t1 - t0
        rss = rss_mb(daemon.pid)
        cpu_pct = 100 * (c1 - c0) / wall
        polls_per_s = (p1 - p0) / wall
        result = {
            "devices": args.devices,
            "poll": args.poll,
            "values": "steady" if args.steady else "noisy",
            "deadband": "off" if args.no_deadband else "profile",
            "state_qos": args.state_qos,
            "window_s": round(wall, 1),
            "cpu_pct_of_one_core": round(cpu_pct, 1),
            "user_pct": round(100 * (u1 - u0) / wall, 1),
            "system_pct": round(100 * (s1 - s0) / wall, 1),
            "us_per_poll": round(1e6 * (c1 - c0) / max(1, p1 - p0), 1),
            "rss_mb": round(rss, 1),
            "polls_per_s": round(polls_per_s, 1),
            "alert_latency_ms_p50": round(1000 * statistics.median(latencies), 1)
            if latencies
            else None,
            "alert_latency_ms_p99": round(1000 * pct(latencies, 99), 1) if latencies else None,
            "alert_latency_ms_max": round(1000 * max(latencies), 1) if latencies else None,
            "samples": len(latencies),
            "missed": missed,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}",
        }
        print(json.dumps(result, indent=2))
        return 0 if missed == 0 else 1
    finally:
        for p in reversed(procs):  # daemon first, while the broker is still up
            p.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(15)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


if __name__ == "__main__":
    sys.exit(main())
