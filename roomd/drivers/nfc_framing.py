"""Card reader framings: RDM6300 (125 kHz EM4100) and plain line readers.

Both are byte-stream parsers fed from a serial port; they return complete card UIDs and count
what they had to drop. No library covers these two framings, and each is a few lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

STX, ETX = 0x02, 0x03
_HEX = re.compile(rb"[0-9A-Fa-f]+")


def rdm6300_checksum(data5: bytes) -> int:
    """XOR of the five data bytes (version + 4 tag bytes)."""
    out = 0
    for b in data5:
        out ^= b
    return out


def rdm6300_frame(uid10: str) -> bytes:
    """Encode 10 hex characters (2 version + 8 tag) as the reader sends them."""
    data = bytes.fromhex(uid10)
    if len(data) != 5:
        raise ValueError("RDM6300 carries 10 hex characters (5 bytes)")
    return (
        bytes([STX])
        + uid10.upper().encode()
        + f"{rdm6300_checksum(data):02X}".encode()
        + bytes([ETX])
    )


@dataclass
class Rdm6300Parser:
    """`0x02` + 10 ASCII hex + 2 ASCII hex checksum + `0x03`, 14 bytes."""

    buffer: bytearray = field(default_factory=bytearray)
    bad_frames: int = 0

    def feed(self, data: bytes) -> list[str]:
        self.buffer += data
        out: list[str] = []
        while True:
            start = self.buffer.find(STX)
            if start < 0:
                if self.buffer:
                    self.bad_frames += 1  # noise with no frame start
                self.buffer.clear()
                return out
            if start > 0:
                self.bad_frames += 1
                del self.buffer[:start]
            if len(self.buffer) < 14:
                return out
            frame = bytes(self.buffer[:14])
            if frame[13] != ETX or not _HEX.fullmatch(frame[1:13]):
                self.bad_frames += 1
                del self.buffer[:1]  # resync on the next STX
                continue
            del self.buffer[:14]
            data = bytes.fromhex(frame[1:11].decode())
            if rdm6300_checksum(data) != int(frame[11:13], 16):
                self.bad_frames += 1
                continue
            out.append(frame[1:11].decode().upper())


@dataclass
class LineParser:
    """One UID per line, CR and/or LF terminated; hex or decimal."""

    fmt: str = "auto"  # hex, decimal or auto
    max_len: int = 32
    buffer: bytearray = field(default_factory=bytearray)
    bad_frames: int = 0

    def feed(self, data: bytes) -> list[str]:
        self.buffer += data
        out: list[str] = []
        while True:
            cut = min(
                (i for i in (self.buffer.find(b"\r"), self.buffer.find(b"\n")) if i >= 0),
                default=-1,
            )
            if cut < 0:
                if len(self.buffer) > self.max_len * 4:
                    self.bad_frames += 1
                    self.buffer.clear()
                return out
            line = bytes(self.buffer[:cut]).strip()
            del self.buffer[: cut + 1]
            if not line:
                continue  # the LF of a CRLF
            uid = self._uid(line)
            if uid is None:
                self.bad_frames += 1
            else:
                out.append(uid)

    def _uid(self, line: bytes) -> str | None:
        if len(line) > self.max_len:
            return None
        # auto: 8 or 10 digits are the decimal form EM4100 readers print; else hex.
        if line.isdigit() and (
            self.fmt == "decimal" or (self.fmt == "auto" and len(line) in (8, 10))
        ):
            return f"{int(line):X}"
        if self.fmt in ("hex", "auto") and _HEX.fullmatch(line.replace(b":", b"")):
            return line.replace(b":", b"").decode().upper()
        return None


@dataclass
class Deduplicator:
    """A card held to the reader repeats its frame: report it once per window."""

    window: float
    last: dict[str, float] = field(default_factory=dict)

    def fresh(self, uid: str, now: float) -> bool:
        seen = self.last.get(uid)
        self.last[uid] = now
        if len(self.last) > 1024:
            for k in [k for k, t in self.last.items() if now - t > self.window]:
                del self.last[k]
        return seen is None or now - seen > self.window
