#!/usr/bin/env python3
"""Same job, same run, same machine: roomd against a naive asyncio poller and Node-RED.

The job (issue 13): N Modbus TCP devices, FC03 read of 2 registers every second, threshold
1000 ppm, an MQTT message when above. The devices (bench/modbus_farm.py) and Mosquitto run
pinned to CPU 1; each contender in turn runs pinned to CPU 0. Measured per contender:

- CPU per poll: the contender's user + system time over the window (after a warm-up), divided
  by the FC03 requests the farm answered in that window (counted outside the contender);
- CPU % of one core, RSS at the end of the window, polls per second;
- for roomd, crossing → alert latency at an MQTT subscriber (the farm pins one device's CO2 to
  1500 ppm; the alert's retained message is timed) and memory over the window.

Usage: python bench/compare.py --devices 5000 --warmup 20 --window 60
       [--contenders roomd,naive,nodered,floor] [--rounds 3]

With --rounds R the contenders take turns R times (roomd, naive, roomd, naive, ...): this VM's
CPU cost of the same work drifts by up to 30 % over minutes, so each ratio is taken within a
round (contenders measured minutes apart, not a quarter of an hour) and the summary gives
every round's ratio and their median, and each contender's median CPU per poll.

`floor` (bench/floor_poller.py) is not a peer but a yardstick: the least a Python process can
spend on this job here (uvloop, a bare protocol per device, no rules, state or timeouts).
"""

from __future__ import annotations

import argparse
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
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))

from bench.poll_bench import AlertWatch, free_port, pct  # noqa: E402

NODE_RED_DIR = Path(os.environ.get("ROOMD_NODE_RED_DIR", "/work/peers/nodered"))


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, its reaped children included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[13])) / tck, (int(fields[12]) + int(fields[14])) / tck


def cpu_seconds(pid: int) -> float:
    return sum(cpu_split(pid))


def tree_cpu(pid: int) -> tuple[float, float]:
    """(user, system) seconds of a process and its live descendants (workers, node's)."""
    user = system = 0.0
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):
            u, s = cpu_split(p)
            user, system = user + u, system + s
    return user, system


def descendants(pid: int) -> list[int]:
    out = []
    with contextlib.suppress(OSError):
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for k in kids:
            out += [int(k), *descendants(int(k))]
    return out


def tree_rss_mb(pid: int) -> float:
    total = 0.0
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
    return total


class FarmControl:
    def __init__(self, port: int) -> None:
        self.addr = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(5)

    def ask(self, text: str) -> str:
        self.sock.sendto(text.encode(), self.addr)
        return self.sock.recv(64).decode()

    def count(self) -> int:
        return int(self.ask("count"))


def roomd_config(work: Path, ports: list[int], mqtt_port: int, http_port: int, args: Any) -> Path:
    per_room = 10
    rooms = [
        {
            "id": f"r{r // per_room:04d}",
            "thresholds": {"co2_ppm": {"hold": "0s"}},
            "devices": [
                {
                    "id": f"env{i}",
                    "driver": "modbus",
                    "model": str(BENCH / "models" / "co2-2reg.yaml"),
                    "host": f"127.0.0.1:{p}",
                    "poll": f"{args.poll}s",
                    "timeout": "1s",
                }
                for i, p in enumerate(ports[r : r + per_room])
            ],
        }
        for r in range(0, len(ports), per_room)
    ]
    cfg = {
        "site": "bench",
        "mqtt": {"url": f"mqtt://127.0.0.1:{mqtt_port}"},
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "state_dir": str(work / "state"),
        # Exactly 1 s between polls (the default ±5 % would stretch some intervals to 1.05 s
        # and hide roomd's own alert latency in the p99); the first polls are still spread.
        "poll_jitter": 0,
        "rooms": rooms,
    }
    path = work / "roomd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_contender(name: str, work: Path, ports_file: Path, mqtt_port: int, args: Any) -> Any:
    ports = json.loads(ports_file.read_text())
    pin = ["taskset", "-c", args.cpu] if args.cpu else []
    if name.startswith("roomd"):
        http_port = free_port()
        cfg = roomd_config(work, ports, mqtt_port, http_port, args)
        extra = []
        if name.startswith("roomd-w"):
            extra = ["--workers", name.removeprefix("roomd-w")]
        cmd = [sys.executable, "-m", "roomd", "--log-level", "warning", "run", "-c", str(cfg)]
        return subprocess.Popen([*pin, *cmd, *extra], cwd=ROOT)
    if name in ("naive", "floor"):
        script = BENCH / f"{name}_poller.py"
        cmd = [sys.executable, str(script), str(ports_file), str(mqtt_port), str(args.poll)]
        return subprocess.Popen([*pin, *cmd], cwd=ROOT)
    if name == "nodered":
        cmd = [sys.executable, str(BENCH / "nodered_peer.py"), "--ports-file", str(ports_file)]
        cmd += ["--mqtt-port", str(mqtt_port), "--work", str(work / "nodered")]
        cmd += ["--node-red-dir", str(NODE_RED_DIR), "--exec"]
        return subprocess.Popen([*pin, *cmd], cwd=ROOT)
    raise SystemExit(f"unknown contender {name}")


def measure(name: str, work: Path, ports_file: Path, mqtt_port: int, farm: FarmControl,
            args: Any) -> dict[str, Any]:  # fmt: skip
    proc = start_contender(name, work, ports_file, mqtt_port, args)
    try:
        time.sleep(args.warmup)
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited during warm-up ({proc.returncode})")
        latencies: list[float] = []
        missed = 0
        rss_samples: list[float] = []
        (u0, s0), n0, t0 = tree_cpu(proc.pid), farm.count(), time.monotonic()
        c0 = u0 + s0
        end = t0 + args.window
        n = len(json.loads(ports_file.read_text()))
        is_roomd = name.startswith("roomd")
        watch = AlertWatch(mqtt_port, "roomd/bench/+/alerts/#") if is_roomd else None
        while time.monotonic() < end:
            rss_samples.append(tree_rss_mb(proc.pid))
            if watch is None or len(latencies) + missed >= args.samples:
                time.sleep(min(1.0, max(0.0, end - time.monotonic())))
                continue
            k = random.randrange(n)
            alert_id = f"r{k // 10:04d}.env{k % 10}.co2_ppm.max"
            sent = time.time()
            farm.ask(f"set {k} 1500")
            got = watch.wait(alert_id, True, sent, 10)
            if got is None:
                missed += 1
            else:
                latencies.append(got - sent)
            back = time.time()
            farm.ask(f"set {k} -")
            watch.wait(alert_id, False, back, 10)
        (u1, s1), n1, t1 = tree_cpu(proc.pid), farm.count(), time.monotonic()
        c1 = u1 + s1
        if watch is not None:
            watch.close()
        polls = n1 - n0
        wall = t1 - t0
        result: dict[str, Any] = {
            "contender": name,
            "devices": n,
            "window_s": round(wall, 1),
            "polls_per_s": round(polls / wall, 1),
            "cpu_pct_of_one_core": round(100 * (c1 - c0) / wall, 1),
            "us_per_poll": round(1e6 * (c1 - c0) / max(1, polls), 1),
            "user_us_per_poll": round(1e6 * (u1 - u0) / max(1, polls), 1),
            "system_us_per_poll": round(1e6 * (s1 - s0) / max(1, polls), 1),
            "rss_mb_end": round(rss_samples[-1], 1) if rss_samples else None,
            "rss_mb_min_max": [round(min(rss_samples), 1), round(max(rss_samples), 1)]
            if rss_samples
            else None,
        }
        if watch is not None:
            result["alert_samples"] = len(latencies)
            result["alert_missed"] = missed
            if latencies:
                result["alert_ms_p50"] = round(1000 * statistics.median(latencies), 1)
                result["alert_ms_p99"] = round(1000 * pct(latencies, 99), 1)
                result["alert_ms_max"] = round(1000 * max(latencies), 1)
        return result
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            for p in [*descendants(proc.pid), proc.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
            proc.wait(10)
        shutil.rmtree(work / "state", ignore_errors=True)


def ratios(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Each contender's median CPU per poll over the rounds; roomd's ratio to each peer in
    every round (both measured in that round) and the median of those ratios."""
    out: dict[str, Any] = {}
    names = list(dict.fromkeys(r["contender"] for r in results))
    cost = {(r["round"], r["contender"]): r["us_per_poll"] for r in results if r["us_per_poll"] > 0}
    for name in names:
        each = [v for (_, c), v in cost.items() if c == name]
        out[f"{name}_us_per_poll_median"] = round(statistics.median(each), 1)
    rounds = sorted({rnd for rnd, _ in cost})
    for me in [n for n in names if n.startswith("roomd")]:
        for peer in ("naive", "nodered", "floor"):
            each = [
                cost[(rnd, me)] / cost[(rnd, peer)]
                for rnd in rounds
                if (rnd, me) in cost and (rnd, peer) in cost
            ]
            if each:
                out[f"{me}/{peer}"] = round(statistics.median(each), 2)
                if len(each) > 1:
                    out[f"{me}/{peer}_each_round"] = [round(x, 2) for x in each]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--poll", type=float, default=1.0)
    ap.add_argument("--warmup", type=float, default=20.0)
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--samples", type=int, default=40, help="roomd crossing → alert samples")
    ap.add_argument("--contenders", default="roomd,naive,nodered")
    ap.add_argument("--cpu", default="0", help="CPU the contender is pinned to ('' = none)")
    ap.add_argument("--farm-cpu", default="1", help="CPU of the devices and the broker")
    ap.add_argument("--steady", action="store_true", help="constant values (default: noisy)")
    ap.add_argument("--rounds", type=int, default=1, help="times the contenders take turns")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="roomd-compare-"))
    mqtt_port, control_port = free_port(), free_port()
    farm_pin = ["taskset", "-c", args.farm_cpu] if args.farm_cpu else []
    mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    (work / "mosquitto.conf").write_text(
        f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n"
    )
    procs: list[subprocess.Popen[bytes]] = []
    results = []
    try:
        procs.append(
            subprocess.Popen(
                [*farm_pin, mosq, "-c", str(work / "mosquitto.conf")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        ports_file = work / "ports.json"
        farm_cmd = [sys.executable, str(BENCH / "modbus_farm.py"), "--devices", str(args.devices)]
        farm_cmd += ["--ports-file", str(ports_file), "--control-port", str(control_port)]
        procs.append(subprocess.Popen([*farm_pin, *farm_cmd, *(["--steady"] * args.steady)]))
        deadline = time.time() + 120
        while not ports_file.exists() and time.time() < deadline:
            time.sleep(0.1)
        farm = FarmControl(control_port)
        farm_cpu0 = cpu_seconds(procs[1].pid)
        for round_no in range(1, args.rounds + 1):
            for name in args.contenders.split(","):
                if name == "nodered" and not (NODE_RED_DIR / "node_modules" / "node-red").exists():
                    print(f"nodered: skipped (no Node-RED in {NODE_RED_DIR})", file=sys.stderr)
                    continue
                r = {"round": round_no, **measure(name, work, ports_file, mqtt_port, farm, args)}
                print(json.dumps(r), flush=True)
                results.append(r)
        summary = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, {platform.platform()}",
            "job": f"{args.devices} Modbus TCP devices, FC03 2 registers every {args.poll} s, "
            f"{'steady' if args.steady else 'noisy'} values",
            "farm_cpu_s": round(cpu_seconds(procs[1].pid) - farm_cpu0, 1),
            "results": results,
        }
        summary.update(ratios(results))
        print(json.dumps(summary, indent=2))
        return 0
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
