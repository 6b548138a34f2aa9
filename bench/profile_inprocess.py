#!/usr/bin/env python3
"""Profile the daemon's hot path: simulators in a child process, the daemon in this one under
cProfile for a window, then the top functions by own time."""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.poll_bench import free_port  # noqa: E402
from roomd.daemon.config import load_config  # noqa: E402
from roomd.daemon.supervisor import Daemon  # noqa: E402


async def profile(cfg: Path, warmup: float, window: float, top: int) -> None:
    daemon = Daemon(load_config(cfg))
    task = asyncio.create_task(daemon.run())
    await asyncio.sleep(warmup)
    prof = cProfile.Profile()
    cpu0 = time.process_time()
    prof.enable()
    await asyncio.sleep(window)
    prof.disable()
    print(f"CPU {time.process_time() - cpu0:.2f} s in {window:g} s (profiler overhead included)")
    daemon.stop()
    await task
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--steady", action="store_true")
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--top", type=int, default=35)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="roomd-prof-"))
    ports_file, mqtt_port = work / "ports.json", free_port()
    mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    procs = [
        subprocess.Popen(
            [mosq, "-p", str(mqtt_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        ),
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "bench" / "poll_bench.py"),
                "--serve",
                str(args.devices),
                "--ports-file",
                str(ports_file),
                "--control-port",
                str(free_port()),
                *(["--steady"] if args.steady else []),
            ]
        ),
    ]
    try:
        while not ports_file.exists():
            time.sleep(0.1)
        ports = json.loads(ports_file.read_text())
        rooms = [
            {
                "id": f"r{r // 10:04d}",
                "devices": [
                    {
                        "id": f"env{i}",
                        "driver": "modbus",
                        "model": "generic-iaq",
                        "host": f"127.0.0.1:{p}",
                        "poll": "1s",
                    }
                    for i, p in enumerate(ports[r : r + 10])
                ],
            }
            for r in range(0, len(ports), 10)
        ]
        cfg = work / "roomd.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "site": "prof",
                    "mqtt": {"url": f"mqtt://127.0.0.1:{mqtt_port}"},
                    "http": {"listen": "127.0.0.1:0"},
                    "state_dir": str(work / "state"),
                    "rooms": rooms,
                }
            )
        )
        asyncio.run(profile(cfg, 5.0, args.window, args.top))
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
