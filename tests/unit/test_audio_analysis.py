"""The analysis on synthesized signals with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roomd.audio import synth
from roomd.audio.analysis import Analyzer, GapCounter, a_weighting_db

RATE = 48000


def rng(seed: int = 7) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize(("tone_db", "noise_db"), [(-20.0, -70.0), (-6.0, -50.0), (-40.0, -75.0)])
@pytest.mark.parametrize("bits", [16, 24])
def test_tone_in_noise_gives_spl_and_snr_within_half_a_db(
    tone_db: float, noise_db: float, bits: int
) -> None:
    x = synth.tone(1000, tone_db, RATE) + synth.noise(noise_db, RATE, rng())
    x = synth.quantize(x, bits)
    a = Analyzer(calibration_db=110.0, weighting="Z").analyze(x)
    # total level: tone plus noise powers
    total = 10 * math.log10(10 ** (tone_db / 10) + 10 ** (noise_db / 10))
    assert a.level_db == pytest.approx(total + 110.0, abs=0.5)
    assert a.tone_hz == pytest.approx(1000.0, abs=1.0)
    assert a.snr_db == pytest.approx(tone_db - noise_db, abs=0.5)
    assert a.noise_floor_db == pytest.approx(noise_db + 110.0, abs=0.5)
    assert a.dropouts == 0 and a.clip_events == 0 and a.hum_hz is None


def test_a_weighting_is_zero_at_1k_and_matches_iec_table() -> None:
    f = np.array([100.0, 1000.0, 4000.0, 10000.0])
    # IEC 61672-1 table: -19.1, 0.0, +1.0, -2.5 dB
    assert a_weighting_db(f) == pytest.approx([-19.1, 0.0, 1.0, -2.5], abs=0.1)
    low = synth.tone(100, -20, RATE)
    a = Analyzer(weighting="A").analyze(low)
    assert a.level_dbfs == pytest.approx(-20 - 19.1, abs=0.2)


def test_calibration_follows_a_94_db_calibrator() -> None:
    # The calibrator reads -26 dBFS, so calibration_db = 94 - (-26) = 120.
    cal = synth.tone(1000, -26.0, RATE)
    a = Analyzer(calibration_db=120.0, weighting="A").analyze(cal)
    assert a.level_db == pytest.approx(94.0, abs=0.1)


@pytest.mark.parametrize("gaps", [[(10000, 500)], [(5000, 300), (20000, 241), (40000, 2000)]])
def test_injected_gaps_are_counted_exactly(gaps: list[tuple[int, int]]) -> None:
    x = synth.quantize(synth.tone(440, -20, RATE) + synth.noise(-70, RATE, rng()), 16)
    for start, length in gaps:
        x[start : start + length] = 0.0
    x[30000:30100] = 0.0  # 2 ms: shorter than a dropout (5 ms), not counted
    assert Analyzer().analyze(x).dropouts == len(gaps)


def test_a_gap_split_across_windows_counts_once_and_leading_silence_not_at_all() -> None:
    gaps = GapCounter(min_samples=240)
    silence = np.zeros(1000)
    signal = synth.tone(1000, -20, 4800)
    assert gaps.feed(silence) == 0  # the stream starts quiet: not a dropout
    assert gaps.feed(signal) == 0
    gap_end = np.concatenate([np.zeros(150), signal])
    assert gaps.feed(np.concatenate([signal, np.zeros(150)])) == 0  # 150 so far
    assert gaps.feed(gap_end) == 1  # 300 in all, counted when it reaches 240
    long_gap = np.zeros(2000)
    assert gaps.feed(long_gap) == 1
    assert gaps.feed(long_gap) == 0  # still the same gap
    assert gaps.feed(signal) == 0


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=8),
    # Not within a few samples of the limit: the tone starts at a zero crossing, and that
    # sample is silence too (239 zeros after one count as 240).
    st.lists(
        st.integers(min_value=0, max_value=3000).filter(lambda g: not 236 <= g <= 244),
        min_size=1,
        max_size=6,
    ),
)
def test_gap_count_does_not_depend_on_how_the_stream_is_cut(
    cuts: list[int], gap_lengths: list[int]
) -> None:
    parts = []
    for length in gap_lengths:
        parts += [synth.tone(997, -30, 3000), np.zeros(length)]
    x = np.concatenate(parts)
    whole = GapCounter(240).feed(x)
    expected = sum(1 for g in gap_lengths if g >= 240)
    assert whole == expected
    counter = GapCounter(240)
    total, pos = 0, 0
    for cut in cuts * 20:
        total += counter.feed(x[pos : pos + cut])
        pos += cut
        if pos >= len(x):
            break
    total += counter.feed(x[pos:])
    assert total == expected


@pytest.mark.parametrize("mains", [50.0, 60.0])
def test_hum_is_detected_with_its_frequency(mains: float) -> None:
    x = synth.noise(-80, RATE, rng()) + synth.hum(mains, -60, RATE)
    a = Analyzer(calibration_db=110.0, weighting="Z").analyze(x)
    assert a.hum_hz == mains
    assert a.hum_db == pytest.approx(-60 + 110, abs=1.0)


def test_no_hum_in_clean_noise_or_under_a_tone() -> None:
    assert Analyzer().analyze(synth.noise(-60, RATE, rng())).hum_hz is None
    tone = synth.tone(1000, -20, RATE) + synth.noise(-70, RATE, rng())
    assert Analyzer().analyze(tone).hum_hz is None
    with_hum = tone + synth.hum(50, -55, RATE)
    a = Analyzer().analyze(with_hum)
    assert a.hum_hz == 50 and a.tone_hz == pytest.approx(1000, abs=1)


def test_clipping_is_detected_and_clean_peaks_are_not() -> None:
    clean = synth.tone(1000, -0.5, RATE)
    assert Analyzer().analyze(clean).clip_events == 0
    hot = np.clip(synth.tone(1000, 6, RATE), -1, 1)
    a = Analyzer().analyze(hot)
    assert a.clip_events == 2000  # both half-waves of every cycle flattened
    assert a.clipped_samples > 10000
    assert a.peak_dbfs == pytest.approx(0.0, abs=0.01)


def test_speech_like_signal_gets_snr_from_loud_and_quiet_blocks() -> None:
    n = RATE * 2
    t = np.arange(n) / RATE
    envelope = (np.sin(2 * np.pi * 0.5 * t) > 0).astype(float)  # 1 s talk, 1 s pause
    x = envelope * synth.noise(-25, n, rng()) + synth.noise(-65, n, rng(3))
    a = Analyzer().analyze(x)
    assert a.tone_hz is None
    assert a.snr_db == pytest.approx(40.0, abs=1.5)
    assert a.noise_floor_db == pytest.approx(-65.0, abs=1.5)


def test_empty_and_short_windows_do_not_fail() -> None:
    assert Analyzer().analyze(np.zeros(0)).seconds == 0
    a = Analyzer().analyze(synth.tone(1000, -20, 100))
    assert a.snr_db is None and a.hum_hz is None
