#!/usr/bin/env python3
"""Where a daemon's memory goes: `roomd run` in-process under tracemalloc, against the farm.

Starts Mosquitto and bench/modbus_farm.py, runs the daemon in this process for --seconds with
N devices, then prints the top allocation sites (by file:line) still alive and the RSS.

Usage: python bench/memory_profile.py --devices 2000 --seconds 15 [--top 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.compare import free_port, roomd_config  # noqa: E402


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def run(cfg_path: Path, seconds: float, top: int) -> None:
    from roomd.daemon.config import load_config
    from roomd.daemon.supervisor import Daemon

    daemon = Daemon(load_config(cfg_path))
    task = asyncio.create_task(daemon.run())
    await asyncio.sleep(seconds)
    if not tracemalloc.is_tracing():
        print(f"RSS {rss_mb():.1f} MB")
        daemon.stop()
        await task
        return
    snap = tracemalloc.take_snapshot()
    stats = snap.statistics("lineno")
    total = sum(s.size for s in stats)
    print(f"RSS {rss_mb():.1f} MB; traced Python allocations {total / 2**20:.1f} MB")
    for s in stats[:top]:
        frame = s.traceback[0]
        name = frame.filename.replace(str(ROOT) + "/", "").split("site-packages/")[-1]
        print(f"{s.size / 2**20:7.2f} MB {s.count:8d} blocks  {name}:{frame.lineno}")
    daemon.stop()
    await task


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--devices", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--no-trace", action="store_true", help="RSS only (tracemalloc costs memory)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="roomd-mem-"))
    mqtt_port, control_port = free_port(), free_port()
    (work / "mosquitto.conf").write_text(f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\n")
    mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    procs = [subprocess.Popen([mosq, "-c", str(work / "mosquitto.conf")])]
    ports_file = work / "ports.json"
    farm = [sys.executable, str(ROOT / "bench" / "modbus_farm.py"), "--devices", str(args.devices)]
    farm += ["--ports-file", str(ports_file), "--control-port", str(control_port)]
    procs.append(subprocess.Popen(farm))
    try:
        while not ports_file.exists():
            time.sleep(0.1)
        ports = json.loads(ports_file.read_text())
        http_port = free_port()  # after the farm took its ports
        cfg = roomd_config(work, ports, mqtt_port, http_port, SimpleNamespace(poll=1.0))
        if not args.no_trace:
            tracemalloc.start()
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run(cfg, args.seconds, args.top if not args.no_trace else 0))
        return 0
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
