#!/usr/bin/env python3
"""How early and how often the CO₂ forecast is right, on simulated meetings.

Each meeting is a well-mixed room (the CO₂ mass balance the tracer-gas method rests on):
dC/dt = G·N(t)·10⁶ / V − ACH/3600 · (C − C_out), G = 0.0052 L/s per seated adult,
V = area × 3 m, people arriving over the first minutes, outdoor 420 ppm, ventilation between
0.5 and 6 air changes an hour, a sensor with ±10 ppm noise sampled every 30 s, and the same
forecaster the daemon runs (roomd/daemon/forecast.py: RoomForecast, 10-minute window,
10-minute lead). Counted per meeting:
- crossing meetings: warned (the forecast stood before the sensor first read ≥ 1000 ppm) and
  how long before (lead); missed otherwise;
- other meetings: a false alarm when a forecast stood at any time.

    .venv/bin/python bench/forecast_eval.py --meetings 2000 --seed 1
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from roomd.daemon.forecast import SAMPLE_EVERY, RoomForecast

LIMIT, LEAD, OUTDOOR = 1000.0, 600.0, 420.0
G = 0.0052e-3  # m³/s of CO₂ per person


def meeting(rng: random.Random) -> list[tuple[float, float, int]]:
    """[(t, measured ppm, people)] over 90 minutes."""
    area = rng.uniform(20, 120)
    volume = area * 3.0
    seats = max(2, int(area / rng.uniform(1.5, 4.0)))
    people = rng.randint(max(1, seats // 3), seats)
    arrive = rng.uniform(60, 600)  # seconds over which they come in
    ach = rng.uniform(0.5, 6.0)
    c = OUTDOOR + rng.uniform(0, 150)
    out, dt = [], 5.0
    t = 0.0
    while t <= 90 * 60:
        n = people * min(1.0, t / arrive)
        c += dt * (G * n * 1e6 / volume - ach / 3600 * (c - OUTDOOR))
        if t % SAMPLE_EVERY == 0:
            out.append((t, c + rng.uniform(-10, 10), round(n)))
        t += dt
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--meetings", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    leads: list[float] = []
    missed = false_alarms = crossing = quiet = 0
    for _ in range(args.meetings):
        samples = meeting(rng)
        f = RoomForecast()
        first_warning: float | None = None
        first_over: float | None = None
        for t, ppm, n in samples:
            if first_over is None and ppm >= LIMIT:
                first_over = t
            standing, _ = f.update(t, ppm, n, LIMIT, LEAD)
            if standing and first_warning is None and first_over is None:
                first_warning = t
        if first_over is not None:
            crossing += 1
            if first_warning is None:
                missed += 1
            else:
                leads.append((first_over - first_warning) / 60)
        else:
            quiet += 1
            if first_warning is not None:
                false_alarms += 1
    leads.sort()
    result = {
        "meetings": args.meetings,
        "seed": args.seed,
        "crossing": crossing,
        "warned": len(leads),
        "warned_pct": round(100 * len(leads) / crossing, 1) if crossing else None,
        "missed": missed,
        "lead_min_median": round(statistics.median(leads), 1) if leads else None,
        "lead_min_p10": round(leads[len(leads) // 10], 1) if leads else None,
        "lead_min_p90": round(leads[9 * len(leads) // 10], 1) if leads else None,
        "warned_at_least_5_min_pct": (
            round(100 * sum(1 for x in leads if x >= 5) / crossing, 1) if crossing else None
        ),
        "not_crossing": quiet,
        "false_alarms": false_alarms,
        "false_alarm_pct": round(100 * false_alarms / quiet, 1) if quiet else None,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
