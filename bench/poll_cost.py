#!/usr/bin/env python3
"""roomd's CPU per poll in-process, in many short windows: a steadier figure for one change
than a whole compare run on a noisy VM, and ablations that say what each part costs.

The comparison job's farm and a Mosquitto run pinned to CPU 1; the daemon runs in this process
pinned to CPU 0 (uvloop), with compare.py's config. After a warm-up, CPU time is sampled over
`--windows` windows of `--seconds` each; the median is printed with every window.

  --ablate readings   Site.readings only stores the readings (no rules, state or publish)
  --ablate publish    device state is not published (MqttSink.publish_state does nothing)
  --ablate rules      AlertBook.observe returns nothing
  --ablate background the meeting planner's pass and the descriptor count do nothing

Usage: python bench/poll_cost.py --devices 5000 [--ablate readings,publish]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.compare import roomd_config  # noqa: E402
from bench.poll_bench import free_port  # noqa: E402
from roomd.daemon.config import load_config  # noqa: E402
from roomd.daemon.supervisor import Daemon  # noqa: E402


def ablate(parts: set[str]) -> None:
    from roomd.daemon.alerts import AlertBook
    from roomd.daemon.housekeeping import Housekeeping
    from roomd.daemon.meetings import MeetingPlanner
    from roomd.daemon.sinks.mqtt import MqttSink
    from roomd.daemon.site import Site

    def only_store(self: Site, p: Any, readings: Any, took: float = -1.0) -> None:
        p.readings = readings

    if "readings" in parts:
        Site.readings = only_store  # type: ignore[method-assign]
    if "publish" in parts:
        MqttSink.publish_state = lambda self, topic, payload: None  # type: ignore[method-assign]
    if "rules" in parts:
        AlertBook.observe = lambda self, *a, **k: []  # type: ignore[method-assign]
    if "background" in parts:
        MeetingPlanner.tick = lambda self: None  # type: ignore[method-assign]
        Housekeeping.check_descriptors = lambda self: None  # type: ignore[method-assign]


async def sample(cfg: Path, devices: int, warmup: float, windows: int, seconds: float) -> None:
    daemon = Daemon(load_config(cfg))
    task = asyncio.create_task(daemon.run())
    await asyncio.sleep(warmup)
    per_poll = []
    for _ in range(windows):
        cpu0 = time.process_time()
        await asyncio.sleep(seconds)
        per_poll.append(1e6 * (time.process_time() - cpu0) / (seconds * devices))
    daemon.stop()
    await task
    print("µs a poll, each window:", " ".join(f"{x:.1f}" for x in per_poll))
    print(f"median {statistics.median(per_poll):.1f} µs a poll")


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--devices", type=int, default=5000)
    ap.add_argument("--warmup", type=float, default=12.0)
    ap.add_argument("--windows", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--ablate", default="")
    args = ap.parse_args()
    ablate({part for part in args.ablate.split(",") if part})
    work = Path(tempfile.mkdtemp(prefix="roomd-cost-"))
    mqtt_port, control_port = free_port(), free_port()
    mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    ports_file = work / "ports.json"
    farm = [sys.executable, str(ROOT / "bench" / "modbus_farm.py"), "--devices", str(args.devices)]
    farm += ["--ports-file", str(ports_file), "--control-port", str(control_port)]
    procs = [
        subprocess.Popen(["taskset", "-c", "1", mosq, "-p", str(mqtt_port)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen(["taskset", "-c", "1", *farm]),
    ]  # fmt: skip
    try:
        while not ports_file.exists():
            time.sleep(0.1)
        time.sleep(0.3)
        job = argparse.Namespace(poll=1.0)
        cfg = roomd_config(work, json.loads(ports_file.read_text()), mqtt_port, free_port(), job)
        os.sched_setaffinity(0, {0})
        uvloop.run(sample(cfg, args.devices, args.warmup, args.windows, args.seconds))
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
