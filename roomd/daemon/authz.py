"""Who may make roomd do what: principals, rules, and signed commands.

The broker authenticates clients; roomd decides what each of them may drive. A command's
principal is known in one of two ways, both of which a client cannot fake:

- **by topic**: `{base}/{room}/{device}/cmd/by/{user}` (and `_daemon/cmd/by/{user}`,
  `{room}/bookings/by/{user}`), where the broker's ACL lets each user write only under its own
  name (`pattern write roomd/hq/+/+/cmd/by/%u` in Mosquitto), so the last level *is* the broker
  login;
- **signed**: on any command topic, an `auth` object `{"principal", "ts", "sig"}` with
  `sig = hex(HMAC-SHA256(key, topic + "\\n" + ts + "\\n" + body))`, where `body` is the command
  without `auth` as compact JSON with sorted keys, for clients behind one shared broker account
  (a control processor, a gateway). A signature is good for `max_skew` seconds and once.

A command on the plain `cmd` topic without a signature comes from `anonymous`. MQTT 5 user
properties were considered and not used: the publisher sets them and no broker checks them, so
they would prove nothing a payload field does not.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

ANONYMOUS = "anonymous"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PrincipalConfig(_Strict):
    # A signing key (any length, from a file, never inline): commands signed with it count as
    # this principal on any command topic.
    key_file: Path | None = None


class RuleConfig(_Strict):
    """One grant. Every list is a set of glob patterns; an empty list (default) matches all."""

    principals: list[str] = Field(min_length=1)
    rooms: list[str] = ["*"]
    # Device ids, driver names (pjlink, x32) or kinds (projector, mixer, sensor, reader, probe).
    devices: list[str] = ["*"]
    commands: list[str] = ["*"]
    # Site-level commands on `_daemon/cmd` (ack, reload, status, check); none unless listed.
    site_commands: list[str] = []


class AuthorizationConfig(_Strict):
    enabled: bool = True
    principals: dict[str, PrincipalConfig] = {}
    rules: list[RuleConfig] = []
    bookings: list[str] = []  # principals that may push bookings over MQTT
    max_skew: float = Field(60.0, gt=0, le=3600)  # seconds a signature stays good


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    how: str  # "topic", "signature", "none"

    @staticmethod
    def by_topic(login: str | None) -> Principal:
        """The sender as its topic says: `.../by/{login}`, else anonymous."""
        return Principal(login, "topic") if login else Principal(ANONYMOUS, "none")


class Refused(Exception):
    """A command or message roomd will not obey; `reason` is a metric label, the text goes
    into `ok:false`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def canonical_body(command: dict[str, Any]) -> bytes:
    body = {k: v for k, v in command.items() if k != "auth"}
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def sign(
    key: bytes, topic: str, command: dict[str, Any], principal: str, ts: int
) -> dict[str, Any]:
    """The command with its `auth` object (what a client library does; used by the tests and
    `roomd` tools). Python without roomd: json.dumps(body, sort_keys=True, separators=(",",
    ":"), ensure_ascii=False).encode() gives the same body."""
    message = f"{topic}\n{ts}\n".encode() + canonical_body(command)
    sig = hmac.new(key, message, hashlib.sha256).hexdigest()
    return {**command, "auth": {"principal": principal, "ts": ts, "sig": sig}}


def kind_of(driver: str) -> str:
    return {
        "pjlink": "projector",
        "serial-projector": "projector",
        "x32": "mixer",
        "xair": "mixer",
        "modbus": "sensor",
        "nfc-serial": "reader",
        "nfc-pcsc": "reader",
        "audio-probe": "probe",
    }.get(driver, driver)


def _any(patterns: list[str], *values: str) -> bool:
    return any(fnmatch.fnmatchcase(v, p) for p in patterns for v in values)


class Authorizer:
    """Decides; keeps no secrets in messages. `None` config: everything allowed (a site that
    has not configured authorization yet; the daemon warns at start)."""

    def __init__(
        self,
        config: AuthorizationConfig | None,
        own_user: str | None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config if config is not None and config.enabled else None
        self.own_user = own_user
        self.wall = wall
        self._keys: dict[str, bytes] = {}
        self._seen: dict[str, float] = {}  # signature → expiry: a signed command works once
        if self.config is not None:
            for name, principal in self.config.principals.items():
                if principal.key_file is not None:
                    self._keys[name] = principal.key_file.read_bytes().strip()

    def identify(self, topic: str, by: str | None, message: dict[str, Any]) -> Principal:
        """The principal of a command; Refused when its signature is bad, old or replayed."""
        auth = message.get("auth")
        if auth is None or self.config is None:  # no authorization configured: nothing to check
            return Principal.by_topic(by)
        if not isinstance(auth, dict):
            raise Refused("bad_signature", "auth: must be an object {principal, ts, sig}")
        name, ts, sig = auth.get("principal"), auth.get("ts"), auth.get("sig")
        if not isinstance(name, str) or not isinstance(ts, int) or not isinstance(sig, str):
            raise Refused("bad_signature", "auth: needs principal (str), ts (int), sig (hex)")
        key = self._keys.get(name)
        if key is None:
            raise Refused("bad_signature", f"auth: no signing key for principal {name!r}")
        if by is not None and by != name:
            raise Refused("bad_signature", f"auth: signed as {name!r} but sent by {by!r}")
        assert self.config is not None
        now = self.wall()
        if abs(now - ts) > self.config.max_skew:
            raise Refused("bad_signature", "auth: signature too old or from the future")
        expected = sign(key, topic, message, name, ts)["auth"]["sig"]
        if not hmac.compare_digest(expected, sig):
            raise Refused("bad_signature", "auth: signature does not match")
        self._remember(sig, now)
        return Principal(name, "signature")

    def _remember(self, sig: str, now: float) -> None:
        if sig in self._seen:
            raise Refused("replayed", "auth: this signed command was already used")
        if len(self._seen) > 10_000:
            self._seen = {s: t for s, t in self._seen.items() if t > now}
        assert self.config is not None
        self._seen[sig] = now + 2 * self.config.max_skew

    def _is_self(self, who: Principal) -> bool:
        # The daemon's own broker user (its CLI tools log in as it) may send every command.
        return who.how == "topic" and self.own_user is not None and who.name == self.own_user

    def device_command(
        self, who: Principal, room: str, device: str, driver: str, command: str
    ) -> None:
        if self.config is None or self._is_self(who):
            return
        for rule in self.config.rules:
            if (
                _any(rule.principals, who.name)
                and _any(rule.rooms, room)
                and _any(rule.devices, device, driver, kind_of(driver))
                and _any(rule.commands, command)
            ):
                return
        raise Refused(
            "unauthorised",
            f"{who.name} may not send {command!r} to {room}/{device} (see authorization.rules)",
        )

    def site_command(self, who: Principal, command: str) -> None:
        if self.config is None or self._is_self(who):
            return
        for rule in self.config.rules:
            if _any(rule.principals, who.name) and _any(rule.site_commands, command):
                return
        raise Refused(
            "unauthorised",
            f"{who.name} may not send the site command {command!r} (see authorization.rules)",
        )

    def bookings(self, who: Principal) -> None:
        if self.config is None or self._is_self(who):
            return
        if not _any(self.config.bookings, who.name):
            raise Refused(
                "unauthorised",
                f"{who.name} may not push bookings (see authorization.bookings)",
            )
