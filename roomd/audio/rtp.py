"""RTP (RFC 3550) carrying linear PCM (RFC 3190 L16/L24, big-endian): the AES67 audio format.

The fixed header is 12 bytes and the payload is raw samples, so this is a few lines of
`struct` rather than a dependency: the Python RTP stacks either target WebRTC (aiortc, with
codecs and ICE we do not need) or are unmaintained.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .analysis import Samples

Encoding = Literal["L16", "L24"]
SAMPLE_BYTES = {"L16": 2, "L24": 3}
_HEADER = struct.Struct("!BBHII")


class RtpError(ValueError):
    """Not a usable RTP packet; the reason says why."""


@dataclass(frozen=True, slots=True)
class RtpPacket:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    marker: bool
    payload: bytes


def parse_rtp(data: bytes) -> RtpPacket:
    if len(data) < 12:
        raise RtpError(f"{len(data)} bytes is shorter than an RTP header")
    b0, b1, seq, ts, ssrc = _HEADER.unpack_from(data)
    if b0 >> 6 != 2:
        raise RtpError(f"RTP version {b0 >> 6}, expected 2")
    offset = 12 + 4 * (b0 & 0x0F)  # CSRC list
    if b0 & 0x10:  # header extension: 16-bit profile, 16-bit length in words
        if len(data) < offset + 4:
            raise RtpError("truncated header extension")
        (words,) = struct.unpack_from("!H", data, offset + 2)
        offset += 4 + 4 * words
    end = len(data)
    if b0 & 0x20:  # padding: the last byte says how many bytes to drop
        if end <= offset:
            raise RtpError("padding flag set but no payload")
        end -= data[-1]
    if end < offset:
        raise RtpError("header longer than the packet")
    return RtpPacket(b1 & 0x7F, seq, ts, ssrc, bool(b1 & 0x80), bytes(data[offset:end]))


def build_rtp(
    payload: bytes, sequence: int, timestamp: int, ssrc: int, payload_type: int = 96
) -> bytes:
    return (
        _HEADER.pack(0x80, payload_type & 0x7F, sequence & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc)
        + payload
    )


def decode_pcm(payload: bytes, encoding: Encoding, channels: int = 1, channel: int = 0) -> Samples:
    """Big-endian PCM → floats in [-1, 1) of one channel."""
    width = SAMPLE_BYTES[encoding]
    frame = width * channels
    if len(payload) % frame:
        raise RtpError(
            f"payload of {len(payload)} bytes is not whole {encoding} x{channels} frames"
        )
    if encoding == "L16":
        ints = np.frombuffer(payload, dtype=">i2").reshape(-1, channels)[:, channel]
        out: Samples = ints.astype(np.float64) / 32768.0
        return out
    raw = np.frombuffer(payload, dtype=np.uint8).reshape(-1, channels, 3)[:, channel, :]
    value = (raw[:, 0].astype(np.int32) << 16) | (raw[:, 1].astype(np.int32) << 8) | raw[:, 2]
    value = np.where(value & 0x800000, value - 0x1000000, value)
    out = value.astype(np.float64) / 8388608.0
    return out


def encode_pcm(x: Samples, encoding: Encoding) -> bytes:
    """Floats → big-endian PCM (mono), clipped at full scale like a converter."""
    if encoding == "L16":
        ints = np.clip(np.round(x * 32768.0), -32768, 32767).astype(">i2")
        return ints.tobytes()
    v = np.clip(np.round(x * 8388608.0), -8388608, 8388607).astype(np.int32) & 0xFFFFFF
    out = np.empty((len(v), 3), dtype=np.uint8)
    out[:, 0] = (v >> 16) & 0xFF
    out[:, 1] = (v >> 8) & 0xFF
    out[:, 2] = v & 0xFF
    return out.tobytes()


class SequenceTracker:
    """Lost packets from 16-bit sequence numbers (with wrap-around). A run of consecutive
    losses is one dropout; late or duplicate packets are reported so the caller drops them."""

    MAX_JUMP = 3000  # a larger forward jump is a restarted sender, not 3000 lost packets

    def __init__(self) -> None:
        self.ssrc: int | None = None
        self.expected: int | None = None
        self.lost_packets = 0
        self.loss_events = 0

    def accept(self, packet: RtpPacket) -> bool:
        """True: use the packet. False: late, duplicate, or from a stream that restarted."""
        if packet.ssrc != self.ssrc or self.expected is None:
            self.ssrc = packet.ssrc
            self.expected = (packet.sequence + 1) & 0xFFFF
            return True
        gap = (packet.sequence - self.expected) & 0xFFFF
        if gap == 0:
            self.expected = (packet.sequence + 1) & 0xFFFF
            return True
        if gap < self.MAX_JUMP:
            self.lost_packets += gap
            self.loss_events += 1
            self.expected = (packet.sequence + 1) & 0xFFFF
            return True
        if gap > 0x10000 - self.MAX_JUMP:
            return False  # behind us: late or duplicated
        self.expected = (packet.sequence + 1) & 0xFFFF  # the sender restarted its numbering
        return True
