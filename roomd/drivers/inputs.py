"""Logical input names (hdmi1, hdmi2, vga1, hdbaset1, network1, …), mapped to each driver's and
model's own codes. PJLink's HDMI 1 is "31" on most projectors, ESC/VP21's is "30": a failover
that sent the primary's code to a backup of another make selected the wrong input and said ok.
Commands, failover and the check speak names; the map is data in the model files."""

from __future__ import annotations

import re

from ..daemon.profiles import LOGICAL_INPUT, check_input_names
from .base import CommandError

__all__ = ["LOGICAL_INPUT", "InputMap", "check_input_names"]


class InputMap:
    def __init__(self, names: dict[str, str]) -> None:
        self.codes = {name: code.upper() for name, code in names.items()}
        self.names = {code: name for name, code in self.codes.items()}

    def name_of(self, code: str | None) -> str | None:
        return None if code is None else self.names.get(str(code).strip().upper())

    def code_for(self, value: str, valid_code: re.Pattern[str]) -> str:
        """A logical name, or a raw code of this protocol (the contract's `{"input": "31"}`)."""
        text = value.strip()
        code = self.codes.get(text.lower())
        if code is not None:
            return code
        if valid_code.fullmatch(text.upper()):
            return text.upper()
        known = ", ".join(sorted(self.codes)) or "none named in the model"
        raise CommandError(
            f"args.input: {value!r} is not an input of this projector (known: {known})"
        )
