"""RTP header parsing, L16/L24 sample decoding and loss detection (RFC 3550, RFC 3190)."""

from __future__ import annotations

import contextlib
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomd.audio.rtp import (
    RtpError,
    SequenceTracker,
    build_rtp,
    decode_pcm,
    encode_pcm,
    parse_rtp,
)


def test_header_fields() -> None:
    packet = parse_rtp(build_rtp(b"\x00\x01", 65535, 123456, 0xDEADBEEF, 97))
    assert (packet.payload_type, packet.sequence, packet.timestamp, packet.ssrc) == (
        97,
        65535,
        123456,
        0xDEADBEEF,
    )
    assert packet.payload == b"\x00\x01" and not packet.marker


def test_csrc_extension_and_padding_are_skipped() -> None:
    header = struct.pack("!BBHII", 0x80 | 0x20 | 0x10 | 2, 0x80 | 96, 7, 0, 1)
    csrcs = b"\x00" * 8
    extension = struct.pack("!HH", 0xBEDE, 1) + b"\x01\x02\x03\x04"
    payload = b"\x12\x34\x56"
    padding = b"\x00\x00\x03"
    packet = parse_rtp(header + csrcs + extension + payload + padding)
    assert packet.payload == payload and packet.marker


@pytest.mark.parametrize(
    "data", [b"", b"\x80" * 11, b"\x40" + b"\x00" * 20, b"\x90\x60" + b"\x00" * 10 + b"\x00\x01"]
)
def test_garbage_is_an_rtp_error(data: bytes) -> None:
    with pytest.raises(RtpError):
        parse_rtp(data)


@given(st.binary(max_size=200))
def test_parser_never_raises_anything_but_rtp_error(data: bytes) -> None:
    with contextlib.suppress(RtpError):
        parse_rtp(data)


def test_l16_and_l24_big_endian_samples() -> None:
    assert decode_pcm(b"\x7f\xff\x80\x00\x00\x00", "L16").tolist() == [
        32767 / 32768,
        -1.0,
        0.0,
    ]
    assert decode_pcm(b"\x7f\xff\xff\x80\x00\x00\xff\xff\xff", "L24").tolist() == [
        8388607 / 8388608,
        -1.0,
        -1 / 8388608,
    ]
    stereo = b"\x00\x01\x00\x02" * 3
    assert decode_pcm(stereo, "L16", channels=2, channel=1).tolist() == [2 / 32768] * 3
    with pytest.raises(RtpError):
        decode_pcm(b"\x00\x01\x02\x03", "L24")


@given(st.lists(st.floats(min_value=-1.0, max_value=0.999), min_size=1, max_size=64))
def test_encode_decode_round_trip(values: list[float]) -> None:
    x = np.array(values)
    for enc, step in (("L16", 2**-15), ("L24", 2**-23)):
        back = decode_pcm(encode_pcm(x, enc), enc)  # type: ignore[arg-type]
        assert np.max(np.abs(back - x)) <= step


def test_sequence_losses_wrap_late_packets_and_restarts() -> None:
    tracker = SequenceTracker()

    def pkt(seq: int, ssrc: int = 1) -> bool:
        return tracker.accept(parse_rtp(build_rtp(b"", seq, 0, ssrc)))

    assert pkt(65533) and pkt(65534)
    assert pkt(1)  # 65535 and 0 lost across the wrap
    assert (tracker.lost_packets, tracker.loss_events) == (2, 1)
    assert not pkt(0)  # late: dropped
    assert pkt(2) and pkt(5)
    assert (tracker.lost_packets, tracker.loss_events) == (4, 2)
    assert pkt(40000)  # a big jump: the sender restarted, not 40000 losses
    assert tracker.lost_packets == 4
    assert pkt(9, ssrc=2)  # a new stream
    assert tracker.lost_packets == 4
