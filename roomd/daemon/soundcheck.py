"""The automated sound check: noise floor with the test signal off, then the test signal on,
measured by the room's audio probe, judged against the profile (STANDARD §1: ≥ 85 dB,
SNR ≥ 40 dB, no noise, no dropouts). The signal is switched off again whatever happens."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ..audio.analysis import Analysis
from ..drivers.audio_probe import AudioProbeDriver
from ..drivers.base import DeviceError
from ..drivers.x32 import MixerDriver
from .checktypes import CheckItem
from .profiles import Threshold

log = logging.getLogger("roomd.soundcheck")

NOISE_SECONDS = 1.0
TONE_SECONDS = 2.0
SETTLE_SECONDS = 0.3  # after switching: the desk's change and the room's reverb settle


@dataclass
class SoundCheckResult:
    passed: bool
    items: list[CheckItem] = field(default_factory=list)
    measured: dict[str, Any] = field(default_factory=dict)

    @property
    def reasons(self) -> list[str]:
        return [
            f"{i.item}: {i.measured} (expected {i.expected})" for i in self.items if not i.passed
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "items": [asdict(i) for i in self.items],
            "measured": self.measured,
            "reasons": self.reasons,
        }


def _limit(thresholds: Mapping[str, Threshold], metric: str, key: str, default: float) -> float:
    t = thresholds.get(metric)
    value = getattr(t, key) if t is not None else None
    return float(default if value is None else value)


async def soundcheck(
    mixer: MixerDriver | None,
    probe: AudioProbeDriver,
    thresholds: Mapping[str, Threshold],
    noise_seconds: float = NOISE_SECONDS,
    tone_seconds: float = TONE_SECONDS,
    settle: float = SETTLE_SECONDS,
) -> SoundCheckResult:
    """Run the check. A device that fails mid-way gives a failed item, not an exception."""
    # The profile's numbers; the defaults are the standard's, for a profile that lacks them.
    min_level = _limit(thresholds, "sound_level_db", "min", 85.0)
    min_snr = _limit(thresholds, "snr_db", "min", 40.0)
    max_dropouts = _limit(thresholds, "audio_dropouts", "max", 0.0)
    max_hum = _limit(thresholds, "hum_db", "max", float("inf"))
    result = SoundCheckResult(passed=False)
    items = result.items
    if mixer is None:
        items.append(CheckItem("test signal", "a mixer in the room", "none configured", False))
        return result
    if mixer.config.test_signal is None:
        items.append(
            CheckItem("test signal", "oscillator or test_channel", "mixer has neither", False)
        )
        return result
    started = time.monotonic()
    try:
        await mixer.set_tone(False)
        await asyncio.sleep(settle)
        noise = await probe.capture(noise_seconds)
        await mixer.set_tone(True)
        await asyncio.sleep(settle)
        tone = await probe.capture(tone_seconds)
    except (DeviceError, TimeoutError) as exc:
        items.append(
            CheckItem(
                "measurement",
                "completes",
                f"failed: {exc}",
                False,
                round(time.monotonic() - started, 2),
            )
        )
        return result
    finally:
        with contextlib.suppress(Exception):
            await mixer.set_tone(False)
    took = round(time.monotonic() - started, 2)
    # Background noise as LA90 (the level exceeded 90 % of the time: the quiet 20 ms blocks),
    # so a voice in the room during the measurement does not count as noise.
    background = noise.noise_floor_db
    snr = tone.level_db - background
    result.measured = {
        "noise": _summary(noise),
        "tone": _summary(tone),
        "snr_db": round(snr, 1),
    }
    items.append(
        CheckItem(
            "sound level",
            f">= {min_level:g} dB",
            f"{tone.level_db:.1f} dB",
            tone.level_db >= min_level,
            took,
        )
    )
    items.append(
        CheckItem(
            "signal-to-noise",
            f">= {min_snr:g} dB",
            f"{snr:.1f} dB",
            snr >= min_snr,
            took,
            f"background {background:.1f} dB (L90), Leq {noise.level_db:.1f} dB",
        )
    )
    dropouts = noise.dropouts + tone.dropouts
    items.append(
        CheckItem("dropouts", f"<= {max_dropouts:g}", str(dropouts), dropouts <= max_dropouts, took)
    )
    items.append(
        CheckItem(
            "clipping",
            "none",
            f"{tone.clip_events} clipped runs" if tone.clip_events else "none",
            tone.clip_events == 0,
            took,
        )
    )
    hum = noise.hum_db if noise.hum_db is not None else tone.hum_db
    hum_hz = noise.hum_hz or tone.hum_hz
    items.append(
        CheckItem(
            "mains hum",
            f"<= {max_hum:g} dB" if max_hum != float("inf") else "none",
            "none" if hum is None else f"{hum:.1f} dB at {hum_hz:g} Hz",
            hum is None or hum <= max_hum,
            took,
        )
    )
    result.passed = all(i.passed for i in items)
    return result


def _summary(a: Analysis) -> dict[str, Any]:
    return {
        "level_db": round(a.level_db, 1),
        "noise_floor_db": round(a.noise_floor_db, 1),
        "tone_hz": a.tone_hz,
        "dropouts": a.dropouts,
        "clip_events": a.clip_events,
        "hum_hz": a.hum_hz,
        "hum_db": None if a.hum_db is None else round(a.hum_db, 1),
    }
