#!/usr/bin/env python3
"""Benchmark: sign-in latency under a burst while the daemon polls other devices.

10 readers (pseudo-terminals owned by this harness), 500 people tapping over 3 minutes, while
`roomd run` also polls 1000 Modbus TCP sensors at 1 s (bench/modbus_farm.py, a separate
process: the comparison job's sensors, two registers each, noisy values).
Reported: roomd's own latency (last frame byte → record durable and event handed to MQTT, as
carried in each event's `latency_ms`) and the end-to-end latency (tap written to the pty →
event received by an MQTT subscriber), p50/p99, plus the daemon's CPU.

Usage: python bench/signin_bench.py [--people 500] [--readers 10] [--duration 180] [--devices 1000]
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
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.poll_bench import cpu_times, free_port, pct  # noqa: E402
from roomd.simulators.nfc import ReaderSim, card_uid  # noqa: E402


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    work = Path(tempfile.mkdtemp(prefix="roomd-signin-bench-"))
    mqtt_port = free_port()
    mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    procs: list[subprocess.Popen[bytes]] = []
    readers = [
        ReaderSim(work / f"reader{i}", "rdm6300" if i % 2 else "line").plug()
        for i in range(args.readers)
    ]
    try:
        procs.append(
            subprocess.Popen(
                [mosq, "-p", str(mqtt_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
        ports: list[int] = []
        if args.devices:
            ports_file = work / "ports.json"
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(ROOT / "bench" / "modbus_farm.py"),
                        "--devices",
                        str(args.devices),
                        "--ports-file",
                        str(ports_file),
                        "--control-port",
                        str(free_port()),
                    ]
                )
            )
            while not ports_file.exists():
                await asyncio.sleep(0.1)
            ports = json.loads(ports_file.read_text())
        http_port = free_port()  # after the simulators took their thousands of ports
        people = [card_uid(n) for n in range(args.people)]
        roster = work / "roster.csv"
        roster.write_text("uid,name\n" + "".join(f"{u},P{n}\n" for n, u in enumerate(people)))
        rooms: list[dict[str, Any]] = []
        for i, reader in enumerate(readers):
            rooms.append(
                {
                    "id": f"hall{i}",
                    "area_m2": 2000,
                    "roster": str(roster),
                    "devices": [
                        {
                            "id": "reader",
                            "driver": "nfc-serial",
                            "port": reader.path,
                            "framing": reader.framing,
                            # The simulator prints hex; "auto" would read an all-digit
                            # 10-character UID (1 in ~90 here) as an EM4100 decimal number.
                            **({"format": "hex"} if reader.framing == "line" else {}),
                            "poll": "2s",
                        }
                    ],
                }
            )
        for r in range(0, len(ports), 10):
            rooms.append(
                {
                    "id": f"r{r // 10:04d}",
                    "devices": [
                        {
                            "id": f"env{j}",
                            "driver": "modbus",
                            "model": str(ROOT / "bench" / "models" / "co2-2reg.yaml"),
                            "host": f"127.0.0.1:{p}",
                            "poll": "1s",
                        }
                        for j, p in enumerate(ports[r : r + 10])
                    ],
                }
            )
        cfg = {
            "site": "bench",
            "mqtt": {"url": f"mqtt://127.0.0.1:{mqtt_port}"},
            "http": {"listen": f"127.0.0.1:{http_port}"},
            "state_dir": str(work / "state"),
            # The harness matches events to taps by name: names on MQTT are an opt-in.
            "signins": {"publish_names": True},
            "rooms": rooms,
        }
        (work / "roomd.yaml").write_text(yaml.safe_dump(cfg))

        got: dict[str, tuple[float, float]] = {}  # attendee → (received at, latency_ms)
        lock = threading.Lock()

        def on_message(c: Any, u: Any, m: Any) -> None:
            now = time.time()
            data = json.loads(m.payload)
            if data.get("type") == "signin" and data.get("attendee"):
                with lock:
                    got.setdefault(data["attendee"], (now, data["latency_ms"]))

        sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="signin-bench")
        sub.on_connect = lambda c, *_: c.subscribe("roomd/bench/+/events", 1)
        sub.on_message = on_message
        sub.connect("127.0.0.1", mqtt_port)
        sub.loop_start()
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
        await asyncio.sleep(args.warmup)

        sent: dict[str, float] = {}
        (u0, s0), t0 = cpu_times(daemon.pid), time.monotonic()
        rng = random.Random(1)
        gap = args.duration / args.people
        for n, uid in enumerate(people):
            reader = readers[n % len(readers)]
            sent[f"P{n}"] = time.time()
            reader.tap(uid, repeats=rng.choice((1, 1, 2)))
            await asyncio.sleep(rng.uniform(0.5, 1.5) * gap)
        deadline = time.time() + 20
        while len(got) < args.people and time.time() < deadline:
            await asyncio.sleep(0.1)
        (u1, s1), t1 = cpu_times(daemon.pid), time.monotonic()
        sub.loop_stop()
        with lock:
            internal = [lat / 1000 for _, lat in got.values()]
            e2e = [got[k][0] - sent[k] for k in got if k in sent]
        return {
            "people": args.people,
            "readers": args.readers,
            "duration_s": args.duration,
            "other_devices_polled": len(ports),
            "recorded": len(got),
            "missed": args.people - len(got),
            "roomd_latency_ms_p50": round(1000 * statistics.median(internal), 2)
            if internal
            else None,
            "roomd_latency_ms_p99": round(1000 * pct(internal, 99), 2) if internal else None,
            "end_to_end_ms_p50": round(1000 * statistics.median(e2e), 2) if e2e else None,
            "end_to_end_ms_p99": round(1000 * pct(e2e, 99), 2) if e2e else None,
            "end_to_end_ms_max": round(1000 * max(e2e), 2) if e2e else None,
            "daemon_cpu_pct": round(100 * ((u1 - u0) + (s1 - s0)) / (t1 - t0), 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}",
        }
    finally:
        for reader in readers:
            reader.unplug()
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(15)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--people", type=int, default=500)
    ap.add_argument("--readers", type=int, default=10)
    ap.add_argument("--duration", type=float, default=180.0)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--warmup", type=float, default=10.0)
    args = ap.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))
    return 0 if result["missed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
