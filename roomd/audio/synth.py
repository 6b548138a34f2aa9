"""Synthetic test signals with known levels (AES17 dBFS), for the simulators and the tests."""

from __future__ import annotations

import math

import numpy as np

from .analysis import AES17_OFFSET, Samples


def amplitude(dbfs: float) -> float:
    """Peak amplitude of a sine at `dbfs` (AES17: full-scale sine = 0 dBFS)."""
    return float(10 ** (dbfs / 20))


def tone(freq: float, dbfs: float, n: int, rate: int = 48000, start: int = 0) -> Samples:
    t = (np.arange(n) + start) / rate
    out: Samples = amplitude(dbfs) * np.sin(2 * math.pi * freq * t)
    return out


def noise(dbfs: float, n: int, rng: np.random.Generator) -> Samples:
    """White noise whose mean square reads `dbfs` on the AES17 scale."""
    sigma = 10 ** ((dbfs - AES17_OFFSET) / 20)
    out: Samples = rng.normal(0.0, sigma, n)
    return out


def hum(freq: float, dbfs: float, n: int, rate: int = 48000, start: int = 0) -> Samples:
    """Mains hum: a fundamental with two weaker harmonics, `dbfs` for the whole."""
    t = (np.arange(n) + start) / rate
    parts = [(1, 1.0), (2, 0.5), (3, 0.25)]
    norm = math.sqrt(sum(a * a for _, a in parts))
    amp = amplitude(dbfs) / norm
    out: Samples = sum(  # type: ignore[assignment]
        amp * a * np.sin(2 * math.pi * freq * h * t) for h, a in parts
    )
    return out


def quantize(x: Samples, bits: int) -> Samples:
    """What a converter with `bits` bits delivers (clipped at full scale)."""
    scale = float(2 ** (bits - 1))
    out: Samples = np.clip(np.round(x * scale), -scale, scale - 1) / scale
    return out
