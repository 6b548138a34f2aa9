"""Sound measurements from PCM samples (numpy): level, SPL, noise floor, SNR, dropouts,
clipping and mains hum.

Conventions (docs/audio.md):
- Samples are floats in [-1, 1). Levels in dBFS follow AES17: a full-scale sine is 0 dBFS, so
  `dBFS = 10·log10(mean square) + 3.01`.
- dB SPL = dBFS + `calibration_db`. A calibrator playing 94 dB SPL that reads X dBFS gives
  `calibration_db = 94 − X`.
- With A-weighting the signal is weighted (in the frequency domain) and the level, noise floor
  and SNR are dB(A); mains hum is judged on the unweighted spectrum (A-weighting would take
  30 dB off 50 Hz).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.floating]

AES17_OFFSET = 10 * math.log10(2)  # 3.01 dB: a sine's mean square is half its peak squared
FLOOR_DB = -200.0  # what "no signal at all" reads, instead of -inf (JSON has no -inf)
BLOCK_SECONDS = 0.02  # block length for the level statistics (noise floor, speech SNR)
TONE_LOBE_HZ = 4.0  # a Hann window's main lobe is ±2 bins; ±4 Hz covers it at ≥ 0.5 s windows
TONE_MIN_HZ = 350.0  # test tones are searched above the mains hum's strong harmonics


def dbfs(mean_square: float) -> float:
    if mean_square <= 0:
        return FLOOR_DB
    return 10 * math.log10(mean_square) + AES17_OFFSET


def a_weighting_db(freqs: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]:
    """IEC 61672-1 A-weighting in dB (0 dB at 1 kHz)."""
    f2 = np.square(freqs.astype(np.float64))
    with np.errstate(divide="ignore"):
        ra = (12194.0**2 * f2**2) / (
            (f2 + 20.6**2) * np.sqrt((f2 + 107.7**2) * (f2 + 737.9**2)) * (f2 + 12194.0**2)
        )
        out: npt.NDArray[np.floating] = 20 * np.log10(ra) + 2.0
    out[~np.isfinite(out)] = -200.0
    return out


def apply_weighting(x: Samples, rate: int, weighting: Literal["A", "Z"]) -> Samples:
    if weighting == "Z" or len(x) < 2:
        return x
    spectrum = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(len(x), 1.0 / rate)
    gain = 10 ** (a_weighting_db(freqs) / 20)
    weighted: Samples = np.fft.irfft(spectrum * gain, n=len(x))
    return weighted


class GapCounter:
    """Counts dropouts: runs of digital silence of at least `min_samples` that follow signal.

    Streaming: a gap split over two chunks is counted once. Silence before any signal (a
    stream that starts quiet) is not a dropout; a dead source is a level problem instead.
    """

    def __init__(self, min_samples: int, threshold: float = 2.0**-15) -> None:
        self.min_samples = max(1, min_samples)
        self.threshold = threshold
        self._seen_signal = False
        self._run = 0  # length of the silent run at the end of the previous chunk
        self._run_counted = False
        self._run_after_signal = False

    def feed(self, x: Samples) -> int:
        if len(x) == 0:
            return 0
        silent = np.abs(x) <= self.threshold
        edges = np.diff(np.concatenate(([0], silent.view(np.int8), [0])))
        starts = np.flatnonzero(edges == 1)
        ends = np.flatnonzero(edges == -1)
        n = len(x)
        count = 0
        lengths = ends - starts
        # Only runs that are long enough or touch the chunk's edges matter: this keeps the Python
        # loop short even when low-level noise produces thousands of one-sample "silences".
        keep = (lengths >= self.min_samples) | (starts == 0) | (ends == n)
        carried = self._run
        self._run = 0
        for start, end in zip(starts[keep].tolist(), ends[keep].tolist(), strict=True):
            length = end - start
            if start == 0 and carried:
                length += carried
                counted = self._run_counted
                after_signal = self._run_after_signal
            else:
                counted = False
                after_signal = start > 0 or self._seen_signal
            if not counted and after_signal and length >= self.min_samples:
                count += 1
                counted = True
            if end == n:
                self._run, self._run_counted, self._run_after_signal = length, counted, after_signal
        if not silent.all():
            self._seen_signal = True
        if self._run == 0:
            self._run_counted = False
        return count


def _runs_at_least(mask: npt.NDArray[np.bool_], length: int) -> int:
    if not mask.any():
        return 0
    edges = np.diff(np.concatenate(([0], mask.view(np.int8), [0])))
    lengths = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
    return int(np.count_nonzero(lengths >= length))


@dataclass(frozen=True, slots=True)
class Analysis:
    seconds: float
    level_dbfs: float  # Leq of the window, AES17 dBFS (weighted if configured)
    level_db: float  # the same, calibrated: dB SPL
    peak_dbfs: float  # sample peak, 20·log10(max |x|)
    noise_floor_db: float  # dB SPL: the residual around a tone, else the quiet blocks' level
    snr_db: float | None  # tone over residual, or loud blocks over quiet blocks
    tone_hz: float | None  # a dominant steady tone (test signal), if there is one
    dropouts: int
    clipped_samples: int
    clip_events: int  # runs of ≥ 3 samples at full scale
    hum_hz: float | None  # 50 or 60 when mains hum stands out of the noise
    hum_db: float | None  # dB SPL (unweighted) of the hum's fundamental and harmonics

    def as_readings(self) -> dict[str, float | int | None]:
        return {
            "sound_level_db": round(self.level_db, 2),
            "noise_floor_db": round(self.noise_floor_db, 2),
            "snr_db": None if self.snr_db is None else round(self.snr_db, 2),
            "audio_dropouts": self.dropouts,
            "clip_events": self.clip_events,
            "peak_dbfs": round(self.peak_dbfs, 2),
            "hum_db": None if self.hum_db is None else round(self.hum_db, 2),
        }


@dataclass
class Analyzer:
    """Analyses consecutive windows of one stream (the dropout counter spans windows)."""

    rate: int = 48000
    calibration_db: float = 0.0
    weighting: Literal["A", "Z"] = "Z"
    min_gap: float = 0.005  # seconds of digital silence that make a dropout
    clip_level: float = 0.999
    hum_prominence_db: float = 10.0  # how far hum must stand above the neighbouring spectrum
    _gaps: GapCounter = field(init=False)

    def __post_init__(self) -> None:
        self._gaps = GapCounter(round(self.min_gap * self.rate))

    def analyze(self, x: Samples, extra_dropouts: int = 0) -> Analysis:
        """One window. `extra_dropouts`: gaps the transport saw (lost RTP packets)."""
        x = np.asarray(x, dtype=np.float64)
        n = len(x)
        dropouts = self._gaps.feed(x) + extra_dropouts
        if n == 0:
            return Analysis(
                0.0,
                FLOOR_DB,
                FLOOR_DB + self.calibration_db,
                FLOOR_DB,
                FLOOR_DB + self.calibration_db,
                None,
                None,
                dropouts,
                0,
                0,
                None,
                None,
            )
        clipped = np.abs(x) >= self.clip_level
        clipped_samples = int(np.count_nonzero(clipped))
        clip_events = _runs_at_least(clipped, 3) if clipped_samples else 0
        peak = float(np.max(np.abs(x)))
        peak_dbfs = 20 * math.log10(peak) if peak > 0 else FLOOR_DB
        w = apply_weighting(x, self.rate, self.weighting)
        level = dbfs(float(np.mean(np.square(w))))
        cal = self.calibration_db
        tone_hz = snr = None
        hum_hz = hum_db = None
        noise_ms: float | None = None
        if n >= self.rate // 4:
            freqs, power = _power_spectrum(x, self.rate)
            weighted = power
            if self.weighting == "A":
                weighted = power * 10 ** (a_weighting_db(freqs) / 10)
            tone_hz, tone_ms, residual_ms = _tone(freqs, weighted)
            if tone_hz is not None:
                noise_ms = residual_ms
                snr = 10 * math.log10(tone_ms / residual_ms) if residual_ms > 0 else 200.0
            # Hum is judged unweighted: A-weighting takes 30 dB off 50 Hz and would hide it.
            hum_hz, hum_ms = _hum(freqs, power, self.hum_prominence_db, tone_hz)
            if hum_hz is not None:
                hum_db = dbfs(hum_ms) + cal
        if noise_ms is None:
            quiet, loud = _block_levels(w, self.rate)
            noise_floor = quiet
            if snr is None and n >= self.rate // 4:
                snr = loud - quiet
        else:
            noise_floor = dbfs(noise_ms)
        return Analysis(
            seconds=n / self.rate,
            level_dbfs=level,
            level_db=level + cal,
            peak_dbfs=peak_dbfs,
            noise_floor_db=noise_floor + cal,
            snr_db=snr,
            tone_hz=tone_hz,
            dropouts=dropouts,
            clipped_samples=clipped_samples,
            clip_events=clip_events,
            hum_hz=hum_hz,
            hum_db=hum_db,
        )


def _power_spectrum(x: Samples, rate: int) -> tuple[Samples, Samples]:
    """One-sided power per bin, scaled so the bins sum to the signal's mean square."""
    n = len(x)
    window = np.hanning(n)
    spectrum = np.fft.rfft(x * window)
    power: Samples = np.square(np.abs(spectrum)) / (n * n * float(np.mean(np.square(window))))
    power[1:] *= 2.0
    if n % 2 == 0:
        power[-1] /= 2.0
    power[0] = 0.0  # DC offset is not sound
    return np.fft.rfftfreq(n, 1.0 / rate), power


def _tone(freqs: Samples, power: Samples) -> tuple[float | None, float, float]:
    """A steady tone holding most of the power: (frequency, tone power, residual power)."""
    total = float(power.sum())
    if total <= 0:
        return None, 0.0, 0.0
    audible = freqs >= TONE_MIN_HZ
    k = int(np.argmax(np.where(audible, power, 0.0)))
    lobe = np.abs(freqs - freqs[k]) <= TONE_LOBE_HZ
    tone = float(power[lobe].sum())
    if tone < 0.5 * total:
        return None, tone, total - tone
    residual = total - tone
    return float(freqs[k]), tone, max(residual, 0.0)


def _hum(
    freqs: Samples, power: Samples, prominence_db: float, tone_hz: float | None
) -> tuple[float | None, float]:
    """Mains hum: 50 or 60 Hz and harmonics standing out of their spectral neighbourhood."""
    df = float(freqs[1] - freqs[0])
    best: tuple[float | None, float, float] = (None, 0.0, 0.0)  # (f0, excess, prominence)
    for f0 in (50.0, 60.0):
        excess = 0.0
        hum_power = 0.0
        for h in range(1, 6):
            f = f0 * h
            if tone_hz is not None and abs(f - tone_hz) < 20:
                continue
            band = np.abs(freqs - f) <= max(2 * df, 1.5)
            near = (np.abs(freqs - f) >= 5) & (np.abs(freqs - f) <= 15)
            if not band.any() or not near.any():
                continue
            in_band = float(power[band].sum())
            expected = float(np.median(power[near])) * int(np.count_nonzero(band))
            if in_band > expected:
                hum_power += in_band
                excess = max(excess, 10 * math.log10(in_band / expected) if expected > 0 else 200)
        if excess >= prominence_db and excess > best[2]:
            best = (f0, hum_power, excess)
    return best[0], best[1]


def _block_levels(x: Samples, rate: int) -> tuple[float, float]:
    """(10th, 90th) percentile of 20 ms block levels in dBFS: quiet and loud parts."""
    size = max(1, int(rate * BLOCK_SECONDS))
    blocks = len(x) // size
    if blocks == 0:
        level = dbfs(float(np.mean(np.square(x))))
        return level, level
    ms = np.mean(np.square(x[: blocks * size].reshape(blocks, size)), axis=1)
    quiet, loud = np.percentile(ms, [10, 90])
    return dbfs(float(quiet)), dbfs(float(loud))
