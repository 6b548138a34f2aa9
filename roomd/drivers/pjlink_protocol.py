"""PJLink Class 1 and 2 framing and value parsing (JBMIA PJLink specification 1.04 / 2.10).

No maintained library offers an asyncio PJLink codec with the field tolerances we need, so this
module is small, pure and tested against the specification's own examples. Used by the driver,
the simulator and `roomd discover`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

PORT = 4352
MAX_LINE = 136  # "%" + class + 4-char command + separator + up to 128 bytes of parameter + CR
MAX_PARAM = 128

ERRORS = {
    "ERR1": "undefined command",
    "ERR2": "out of parameter",
    "ERR3": "unavailable time",
    "ERR4": "projector/display failure",
}
POWER = {"0": "off", "1": "on", "2": "cooling", "3": "warming"}
POWER_CODES = {"off": "0", "on": "1"}
ERROR_LEVEL = {"0": "ok", "1": "warning", "2": "error"}
ERST_FIELDS = ("fan", "lamp", "temperature", "cover", "filter", "other")
INPUT_TYPES = {
    "1": "rgb",
    "2": "video",
    "3": "digital",
    "4": "storage",
    "5": "network",
    "6": "internal",
}
AVMT = {"10": "off", "11": "video", "20": "off", "21": "audio", "30": "off", "31": "both"}
AVMT_CODES = {
    ("video", "on"): "11",
    ("video", "off"): "10",
    ("audio", "on"): "21",
    ("audio", "off"): "20",
    ("both", "on"): "31",
    ("both", "off"): "30",
}
CLASS2_ONLY = {
    "IRES",
    "RRES",
    "FILT",
    "SNUM",
    "SVER",
    "INNM",
    "RLMP",
    "RFIL",
    "FREZ",
    "SVOL",
    "MVOL",
    "INST",
}  # INST exists in class 1 too, but the class 2 form lists more


def digest(random: str, password: str) -> str:
    """MD5 authentication: lowercase hex of MD5(random + password)."""
    return hashlib.md5((random + password).encode("utf-8")).hexdigest()


def encode(command: str, param: str = "?", cls: int = 1) -> bytes:
    """`%1POWR ?\\r`. Raises ValueError on what the spec forbids."""
    if not re.fullmatch(r"[A-Z0-9]{4}", command):
        raise ValueError(f"PJLink command must be 4 upper-case characters, not {command!r}")
    if cls not in (1, 2):
        raise ValueError(f"PJLink class must be 1 or 2, not {cls}")
    data = param.encode("utf-8")
    if len(data) > MAX_PARAM or b"\r" in data:
        raise ValueError("PJLink parameter longer than 128 bytes or containing CR")
    return b"%" + str(cls).encode() + command.encode() + b" " + data + b"\r"


@dataclass(frozen=True, slots=True)
class Greeting:
    auth: bool
    random: str = ""


@dataclass(frozen=True, slots=True)
class AuthFailed:
    pass


@dataclass(frozen=True, slots=True)
class Reply:
    cls: int
    command: str
    param: str

    @property
    def error(self) -> str | None:
        """ERR1..ERR4, or None for a value."""
        p = self.param.upper()
        return p if p in ERRORS else None

    @property
    def ok(self) -> bool:
        return self.param.upper() == "OK"


Line = Greeting | AuthFailed | Reply

_REPLY = re.compile(r"^%([0-9])([A-Za-z0-9]{4})[=\s](.*)$", re.S)


class ProtocolError(ValueError):
    pass


def clean(raw: bytes) -> str:
    """Strip what field devices put around lines: NUL padding, LF, spaces."""
    text = raw.replace(b"\x00", b"").decode("utf-8", errors="replace")
    return text.strip("\r\n ")


def parse_line(raw: bytes) -> Line:
    """One CR-terminated line from a projector (CR optional), tolerant of case and padding."""
    text = clean(raw)
    if not text:
        raise ProtocolError("empty line")
    if len(text) > MAX_LINE:
        raise ProtocolError(f"line longer than {MAX_LINE} bytes")
    upper = text.upper()
    if upper.startswith("PJLINK "):
        rest = text[7:].strip()
        if rest.upper() == "ERRA":
            return AuthFailed()
        if rest == "0":
            return Greeting(auth=False)
        if rest.startswith("1 ") and len(rest) > 2:
            return Greeting(auth=True, random=rest[2:].strip())
        if rest.startswith("2 "):
            raise ProtocolError(
                "SHA-256 authentication (PJLINK 2) is not supported; set the projector to MD5"
            )
        raise ProtocolError(f"unknown greeting {text!r}")
    match = _REPLY.match(text)
    if not match:
        raise ProtocolError(f"not a PJLink line: {text[:40]!r}")
    return Reply(int(match.group(1)), match.group(2).upper(), match.group(3).strip())


# ---- values -----------------------------------------------------------------------------------


def parse_power(param: str) -> str:
    try:
        return POWER[param.strip()]
    except KeyError:
        raise ProtocolError(f"POWR value {param!r}") from None


def parse_erst(param: str) -> dict[str, str]:
    p = param.strip()
    if len(p) != 6 or any(c not in ERROR_LEVEL for c in p):
        raise ProtocolError(f"ERST value {param!r}")
    return {
        f"projector_error_{name}": ERROR_LEVEL[c] for name, c in zip(ERST_FIELDS, p, strict=True)
    }


def parse_lamps(param: str) -> list[tuple[int, bool]]:
    """`1200 1 800 0` → [(1200, True), (800, False)]: hours and on/off per lamp."""
    parts = param.split()
    if not parts or len(parts) % 2 or len(parts) > 16:
        raise ProtocolError(f"LAMP value {param!r}")
    try:
        return [(int(parts[i]), parts[i + 1] == "1") for i in range(0, len(parts), 2)]
    except ValueError:
        raise ProtocolError(f"LAMP value {param!r}") from None


def parse_class(param: str) -> int:
    """`1`, `2`, and field variants like `Class 1` or `Version1`: the first digit."""
    match = re.search(r"[12]", param)
    if not match:
        raise ProtocolError(f"CLSS value {param!r}")
    return int(match.group(0))


def parse_avmt(param: str) -> str:
    try:
        return AVMT[param.strip()]
    except KeyError:
        raise ProtocolError(f"AVMT value {param!r}") from None


def parse_resolution(param: str) -> tuple[int, int] | None:
    """`1920x1080` → (1920, 1080); `-` (no signal) → None."""
    p = param.strip()
    if p in ("-", "*", ""):
        return None
    match = re.fullmatch(r"(\d{1,5})\s*[xX]\s*(\d{1,5})", p)
    if not match:
        raise ProtocolError(f"resolution value {param!r}")
    return int(match.group(1)), int(match.group(2))


def parse_int(param: str, what: str) -> int:
    try:
        return int(param.strip())
    except ValueError:
        raise ProtocolError(f"{what} value {param!r}") from None


def valid_input(code: str) -> bool:
    """Two characters: a type digit 1-6 and a channel 1-9 or A-Z (class 2)."""
    return bool(re.fullmatch(r"[1-6][1-9A-Z]", code))


def parse_ackn(raw: bytes) -> str | None:
    """`%2ACKN=00:11:22:33:44:55` → the MAC, else None."""
    try:
        line = parse_line(raw)
    except ProtocolError:
        return None
    if isinstance(line, Reply) and line.command == "ACKN":
        return line.param
    return None
