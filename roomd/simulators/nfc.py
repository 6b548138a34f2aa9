"""A simulated card reader on a pseudo-terminal, reachable through a stable symlink (as a USB
reader is through /dev/serial/by-id/...), so it can be unplugged and plugged back in."""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path

from ..drivers.nfc_framing import rdm6300_frame
from .pty import Pty


class ReaderSim:
    def __init__(self, link: Path, framing: str = "rdm6300") -> None:
        self.link = link
        self.framing = framing
        self.pty = Pty(self._data)
        self.received = b""  # what the driver wrote back (acknowledgements)

    @property
    def path(self) -> str:
        return str(self.link)

    @property
    def plugged(self) -> bool:
        return self.pty.open

    def plug(self) -> ReaderSim:
        self.pty.start()
        tmp = self.link.with_name(self.link.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(self.pty.path)
        tmp.replace(self.link)
        return self

    def unplug(self) -> None:
        """The USB cable is pulled: the port disappears."""
        if not self.pty.open:
            return
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
        self.pty.close()

    stop = unplug

    def _data(self, data: bytes) -> None:
        self.received += data

    def frame(self, uid: str) -> bytes:
        if self.framing == "rdm6300":
            return rdm6300_frame(uid)
        return uid.encode() + b"\r\n"

    def write(self, data: bytes) -> None:
        self.pty.write(data)

    def tap(self, uid: str, repeats: int = 1) -> None:
        """A card held to the reader: RDM6300 repeats its frame while it stays there."""
        self.write(self.frame(uid) * repeats)

    def corrupt(self) -> None:
        frame = bytearray(self.frame("0100ABCDEF"))
        frame[len(frame) // 2] ^= 0x01
        self.write(bytes(frame))


def card_uid(n: int) -> str:
    """A deterministic 10-hex-digit card number for simulated attendee n."""
    return f"01{0x00A10000 + n * 7919:08X}"


async def tap_script(
    reader: ReaderSim,
    roster: list[str],
    period: float,
    rng: random.Random,
    unplug_rate: float = 0.02,
) -> None:
    """Attendees arrive: mostly known cards, some held (repeats), some unknown, a little noise,
    and now and then (`unplug_rate` of the taps) the reader's USB cable is pulled and plugged
    back in a few seconds later."""
    queue = list(roster)
    rng.shuffle(queue)
    while True:
        await asyncio.sleep(rng.uniform(0.5, 1.5) * period)
        roll = rng.random()
        if roll < unplug_rate and reader.plugged:
            reader.unplug()
            await asyncio.sleep(rng.uniform(3, 6))
            reader.plug()
        elif roll < 0.05:
            reader.corrupt()
        elif roll < 0.12:
            reader.tap(card_uid(10_000 + rng.randrange(1000)))  # a visitor's card
        elif queue:
            reader.tap(queue.pop(), repeats=rng.choice((1, 1, 3)))
