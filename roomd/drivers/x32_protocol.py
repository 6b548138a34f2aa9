"""Behringer X32 / Midas M32 and X-Air / MR mixers over OSC: paths, fader law, meter blobs.

OSC encoding and parsing are python-osc's; this module holds what is specific to the desks
(sources: Patrick-Gilles Maillot's unofficial X32 OSC protocol, docs/drivers/x32.md).
"""

from __future__ import annotations

import logging
import math
import struct
from dataclasses import dataclass
from typing import Any

from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket, ParseError

SILENCE_DB = -90.0  # a fader at 0.0 and a meter reading 0.0 are "−∞"; JSON has no −inf


class OscDecodeError(ValueError):
    pass


@dataclass(frozen=True)
class MixerModel:
    kind: str
    port: int
    channels: int
    main_on: str
    main_fader: str
    # (meter bank, index of each input channel's meter, index of main L, main R, value format)
    channel_bank: str
    main_bank: str
    main_index: int
    float_meters: bool  # X32: little-endian float32 linear; X-Air: int16 LE in 1/256 dB
    scene_path: str
    tone_path: str | None  # the oscillator's on/off; X-Air has none on OSC

    def ch_on(self, ch: int) -> str:
        return f"/ch/{ch:02d}/mix/on"

    def ch_fader(self, ch: int) -> str:
        return f"/ch/{ch:02d}/mix/fader"


X32 = MixerModel(
    kind="x32",
    port=10023,
    channels=32,
    main_on="/main/st/mix/on",
    main_fader="/main/st/mix/fader",
    channel_bank="/meters/0",  # 32 inputs, 8 aux returns, 8 fx returns, 16 buses, 6 matrices
    main_bank="/meters/2",  # 16 buses, 6 matrices, main L, main R, mono, ...
    main_index=22,
    float_meters=True,
    scene_path="/-action/goscene",
    tone_path="/-stat/osc/on",
)
XAIR = MixerModel(
    kind="xair",
    port=10024,
    channels=16,
    main_on="/lr/mix/on",
    main_fader="/lr/mix/fader",
    channel_bank="/meters/1",  # 16 inputs, 5x2 returns, 6 buses, 4 fx sends, main L/R, monitor
    main_bank="/meters/1",
    main_index=36,
    float_meters=False,
    scene_path="/-snap/load",
    tone_path=None,
)
MODELS = {m.kind: m for m in (X32, XAIR)}

X32_TONE_LEVEL = "/config/osc/level"
X32_TONE_FREQ = "/config/osc/f1"
X32_TONE_TYPE = "/config/osc/type"  # 0 sine, 1 pink noise, 2 white noise


def fader_to_db(f: float) -> float:
    """The desks' four-segment fader law: 0.75 = 0 dB, 1.0 = +10 dB, 0.0 = −∞ (−90)."""
    if f >= 0.5:
        return f * 40.0 - 30.0
    if f >= 0.25:
        return f * 80.0 - 50.0
    if f >= 0.0625:
        return f * 160.0 - 70.0
    return f * 480.0 - 90.0


def db_to_fader(db: float) -> float:
    if db >= -10.0:
        f = (db + 30.0) / 40.0
    elif db >= -30.0:
        f = (db + 50.0) / 80.0
    elif db >= -60.0:
        f = (db + 70.0) / 160.0
    else:
        f = (db + 90.0) / 480.0
    return min(1.0, max(0.0, f))


def tone_freq_to_value(hz: float) -> float:
    """X32 oscillator frequency: a log scale, 20 Hz at 0.0 to 20 kHz at 1.0."""
    return min(1.0, max(0.0, math.log10(hz / 20.0) / 3.0))


def tone_value_to_freq(v: float) -> float:
    return 20.0 * 1000.0**v


def linear_to_db(v: float) -> float:
    return 20.0 * math.log10(v) if v > 0 else SILENCE_DB


def decode_meters(blob: bytes, float_values: bool) -> list[float]:
    """A meter blob (after the OSC blob's own big-endian size) → levels in dBFS.

    X32: int32 little-endian count, then float32 little-endian linear values (1.0 = 0 dBFS).
    X-Air, and X32 banks 15/16: the count, then int16 little-endian values in 1/256 dB.
    """
    if len(blob) < 4:
        raise OscDecodeError(f"meter blob of {len(blob)} bytes has no count")
    (count,) = struct.unpack_from("<i", blob)
    width = 4 if float_values else 2
    if count < 0 or len(blob) < 4 + count * width:
        raise OscDecodeError(f"meter blob says {count} values but holds {len(blob) - 4} bytes")
    if float_values:
        values = struct.unpack_from(f"<{count}f", blob, 4)
        return [max(SILENCE_DB, linear_to_db(v)) for v in values]
    shorts = struct.unpack_from(f"<{count}h", blob, 4)
    return [max(SILENCE_DB, s / 256.0) for s in shorts]


def encode_meters(levels_db: list[float], float_values: bool) -> bytes:
    """The inverse of decode_meters (for the simulator and tests)."""
    head = struct.pack("<i", len(levels_db))
    if float_values:
        linear = [0.0 if db <= SILENCE_DB else 10 ** (db / 20.0) for db in levels_db]
        return head + struct.pack(f"<{len(linear)}f", *linear)
    shorts = [max(-32768, min(32767, round(db * 256.0))) for db in levels_db]
    return head + struct.pack(f"<{len(shorts)}h", *shorts)


def build(address: str, *args: Any) -> bytes:
    """An OSC message; ints, floats, strings and bytes (blob) as their OSC types."""
    builder = OscMessageBuilder(address)
    for arg in args:
        if isinstance(arg, bool):
            builder.add_arg(int(arg), "i")
        elif isinstance(arg, int):
            builder.add_arg(arg, "i")
        elif isinstance(arg, float):
            builder.add_arg(arg, "f")
        elif isinstance(arg, bytes):
            builder.add_arg(arg, "b")
        else:
            builder.add_arg(str(arg), "s")
    return bytes(builder.build().dgram)


_TAGS = frozenset(b"ihfdsbrmtTFN[]")


def _check_type_tags(data: bytes) -> None:
    """python-osc logs a WARNING on the root logger for every unknown type-tag character and
    parses on (a hostile datagram = a log line per byte); refuse such a message instead."""
    end = data.find(b"\0")
    if end < 0:
        return  # python-osc rejects it
    start = (end + 4) & ~3
    stop = data.find(b"\0", start)
    tags = data[start + 1 : stop if stop >= 0 else len(data)]
    if data[start : start + 1] == b"," and not _TAGS.issuperset(tags):
        bad = next(chr(c) for c in tags if c not in _TAGS)
        raise OscDecodeError(f"unknown OSC type tag {bad!r}")


class _QuietPythonOsc(logging.Filter):
    """Backstop for bundles (whose messages python-osc parses itself): drop its per-byte
    warnings; the packet is counted as bad by the driver anyway."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.pathname.endswith("osc_message.py")
            and str(record.msg).startswith("Unhandled parameter type")
        )


logging.getLogger().addFilter(_QuietPythonOsc())


def parse(data: bytes) -> list[tuple[str, list[Any]]]:
    """A datagram (message or bundle) → [(address, args)]. OscDecodeError for garbage."""
    if data[:1] == b"/":
        _check_type_tags(data)
    try:
        packet = OscPacket(data)
    except (ParseError, ValueError, IndexError, struct.error) as exc:
        raise OscDecodeError(str(exc) or "not an OSC packet") from exc
    return [(m.message.address, list(m.message.params)) for m in packet.messages]
