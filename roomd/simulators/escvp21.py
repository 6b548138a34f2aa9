"""A simulated Epson projector speaking ESC/VP21 on a pseudo-terminal."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from .pty import Pty

POWER_CODES = {"off": "04", "on": "01", "warming": "02", "cooling": "03"}


@dataclass
class EscVp21State:
    power: str = "off"
    lamp_hours: int = 1500
    source: str = "30"
    error: str = "00"
    muted: bool = False
    # The inputs this model has (an EB-L500: Computer1/2 RGB, HDMI1/2, USB, LAN, HDBaseT).
    sources: frozenset[str] = frozenset({"11", "21", "30", "A0", "52", "53", "80"})
    warmup: float = 2.0
    cooldown: float = 2.0
    faults: set[str] = field(default_factory=set)  # silent, garbage
    _since: float = field(default_factory=time.monotonic)

    def tick(self) -> None:
        now = time.monotonic()
        if self.power == "warming" and now - self._since >= self.warmup:
            self.power, self._since = "on", now
        elif self.power == "cooling" and now - self._since >= self.cooldown:
            self.power, self._since = "off", now


class EscVp21Sim:
    def __init__(self, state: EscVp21State | None = None) -> None:
        self.state = state or EscVp21State()
        self.pty = Pty(self._data)
        self.buffer = b""
        self.commands: list[str] = []

    @property
    def path(self) -> str:
        return self.pty.path

    def start(self) -> EscVp21Sim:
        self.pty.start()
        return self

    def _data(self, data: bytes) -> None:
        self.buffer += data
        while b"\r" in self.buffer:
            line, self.buffer = self.buffer.split(b"\r", 1)
            self._handle(line.decode("ascii", errors="replace").strip())

    def _handle(self, cmd: str) -> None:
        st = self.state
        st.tick()
        self.commands.append(cmd)
        if "silent" in st.faults or not cmd:
            return
        if "garbage" in st.faults:
            self._write(os.urandom(600).replace(b":", b"?"))
            return
        reply = self.answer(cmd)
        self._write((reply + "\r:" if reply else ":").encode("ascii"))

    def answer(self, cmd: str) -> str:
        st = self.state
        if cmd == "PWR?":
            return f"PWR={POWER_CODES[st.power]}"
        if cmd == "LAMP?":
            return f"LAMP={st.lamp_hours}"
        if cmd == "SOURCE?":
            return "ERR" if st.power != "on" else f"SOURCE={st.source}"
        if cmd == "ERR?":
            return f"ERR={st.error}"
        if cmd == "PWR ON":
            if st.power == "off":
                st.power, st._since = "warming", time.monotonic()
            return "ERR" if st.power == "cooling" else ""
        if cmd == "PWR OFF":
            if st.power == "on":
                st.power, st._since = "cooling", time.monotonic()
            return "ERR" if st.power == "warming" else ""
        if cmd.startswith("SOURCE "):
            code = cmd.split()[1].upper() if len(cmd.split()) == 2 else ""
            if st.power != "on" or code not in st.sources:
                return "ERR"  # no such input on this model, as a real one answers
            st.source = code
            return ""
        if cmd in ("MUTE ON", "MUTE OFF"):
            if st.power != "on":
                return "ERR"
            st.muted = cmd.endswith("ON")
            return ""
        return "ERR"

    def _write(self, data: bytes) -> None:
        self.pty.write(data)

    def stop(self) -> None:
        self.pty.close()
