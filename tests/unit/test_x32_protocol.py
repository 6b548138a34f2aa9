"""X32 / X-Air OSC specifics: fader law, meter blobs, message encoding."""

from __future__ import annotations

import contextlib
import logging
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomd.drivers import x32_protocol as osc


@pytest.mark.parametrize(
    ("fader", "db"),
    [(1.0, 10.0), (0.75, 0.0), (0.5, -10.0), (0.25, -30.0), (0.0625, -60.0), (0.0, -90.0)],
)
def test_fader_law_at_the_segment_edges(fader: float, db: float) -> None:
    assert osc.fader_to_db(fader) == pytest.approx(db)
    assert osc.db_to_fader(db) == pytest.approx(fader)


@given(st.floats(min_value=0.0, max_value=1.0))
def test_fader_round_trip(f: float) -> None:
    assert osc.db_to_fader(osc.fader_to_db(f)) == pytest.approx(f, abs=1e-9)


def test_x32_meter_blob_from_the_wire() -> None:
    # /meters/6 reply from the protocol document: blob size (BE, consumed by OSC), then a
    # little-endian count of 4 and four little-endian float32 values.
    values = [0.5, 1.0, 0.0, 0.1]
    blob = struct.pack("<i", 4) + struct.pack("<4f", *values)
    datagram = osc.build("/meters/6", blob)
    assert datagram[12:16] == b",b\x00\x00"
    assert datagram[16:20] == struct.pack(">i", 20)  # the OSC blob size is big-endian
    [(address, args)] = osc.parse(datagram)
    assert address == "/meters/6"
    levels = osc.decode_meters(args[0], float_values=True)
    assert levels == pytest.approx([-6.0206, 0.0, -90.0, -20.0], abs=1e-3)


def test_xair_meter_blob_is_int16_in_256ths_of_a_db() -> None:
    blob = struct.pack("<i", 3) + struct.pack("<3h", -256 * 20, 0, -32768)
    assert osc.decode_meters(blob, float_values=False) == [-20.0, 0.0, -90.0]


@pytest.mark.parametrize(
    "blob", [b"", b"\x01\x00", struct.pack("<i", 5) + b"\x00" * 8, struct.pack("<i", -1)]
)
def test_short_or_lying_meter_blobs_are_decode_errors(blob: bytes) -> None:
    with pytest.raises(osc.OscDecodeError):
        osc.decode_meters(blob, float_values=True)


@given(st.lists(st.floats(min_value=-89.0, max_value=18.0), max_size=70), st.booleans())
def test_meter_round_trip(levels: list[float], floats: bool) -> None:
    back = osc.decode_meters(osc.encode_meters(levels, floats), floats)
    assert back == pytest.approx(levels, abs=0.01)


def test_query_and_set_messages_are_standard_osc() -> None:
    assert osc.build("/xinfo") == b"/xinfo\x00\x00,\x00\x00\x00"
    assert osc.build("/ch/01/mix/on", 0) == b"/ch/01/mix/on\x00\x00\x00,i\x00\x00\x00\x00\x00\x00"
    # the request from the protocol document: /meters ,si "/meters/6" 16
    assert osc.build("/meters", "/meters/6", 16) == (
        b"/meters\x00,si\x00/meters/6\x00\x00\x00" + struct.pack(">i", 16)
    )


@given(st.binary(max_size=64))
def test_parse_raises_only_decode_errors(data: bytes) -> None:
    with contextlib.suppress(osc.OscDecodeError):
        osc.parse(data)


def test_tone_frequency_scale() -> None:
    assert osc.tone_value_to_freq(osc.tone_freq_to_value(1000.0)) == pytest.approx(1000.0)
    assert osc.tone_freq_to_value(20.0) == 0.0 and osc.tone_freq_to_value(20000.0) == 1.0


def test_unknown_type_tags_are_refused_without_a_log_line_per_byte(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """python-osc logs a root WARNING per unknown type-tag character and parses on: one hostile
    datagram was hundreds of log lines."""
    caplog.set_level(logging.DEBUG)
    packet = b"/ch/01/mix/on\x00\x00\x00," + b"x" * 500 + b"\x00\x00\x00"
    with pytest.raises(osc.OscDecodeError, match="unknown OSC type tag 'x'"):
        osc.parse(packet)
    bundle = (
        b"#bundle\x00"
        + b"\x00" * 8
        + struct.pack(">i", 24)
        + b"/a\x00\x00,xxxxxxxxxxxx\x00\x00\x00"
    )
    with contextlib.suppress(osc.OscDecodeError):
        osc.parse(bundle)
    assert not [r for r in caplog.records if "Unhandled parameter type" in r.getMessage()]
