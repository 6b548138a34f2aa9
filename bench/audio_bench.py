"""How much faster than real time the audio analysis runs: seconds of audio per CPU second.

    .venv/bin/python bench/audio_bench.py [--seconds 60] [--window 1.0]

Analyses a synthetic 48 kHz stream (tone + noise + hum + gaps) in windows of the given length,
as the audio probe does each poll, with Z and A weighting; also the RTP L24 decode per packet.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from roomd.audio import synth
from roomd.audio.analysis import Analyzer
from roomd.audio.rtp import build_rtp, decode_pcm, encode_pcm, parse_rtp

RATE = 48000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--window", type=float, default=1.0)
    args = ap.parse_args()
    n = int(args.seconds * RATE)
    rng = np.random.default_rng(1)
    x = synth.tone(1000, -20, n) + synth.noise(-70, n, rng) + synth.hum(50, -60, n)
    x[::RATE][1:] = 0.0
    size = int(args.window * RATE)
    print(f"{platform.processor() or platform.machine()}, numpy {np.__version__}")
    for weighting in ("Z", "A"):
        analyzer = Analyzer(calibration_db=120.0, weighting=weighting)  # type: ignore[arg-type]
        start = time.process_time()
        for i in range(0, n - size + 1, size):
            analyzer.analyze(x[i : i + size])
        cpu = time.process_time() - start
        print(
            f"analysis {weighting}-weighted, {args.window:g} s windows: {args.seconds / cpu:.0f}x "
            f"real time ({cpu / args.seconds * 1000:.2f} ms CPU per second of audio)"
        )
    packet = build_rtp(encode_pcm(x[:48], "L24"), 1, 0, 1)
    count = 20000
    start = time.process_time()
    for _ in range(count):
        decode_pcm(parse_rtp(packet).payload, "L24")
    cpu = time.process_time() - start
    print(f"RTP L24 1 ms packet parse+decode: {cpu / count * 1e6:.1f} µs")


if __name__ == "__main__":
    main()
