"""Attendance: rosters, card hashing, per-meeting sign-in counts. Raw UIDs never leave memory:
the roster is hashed on load and every card read is hashed before it is looked up or stored."""

from __future__ import annotations

import csv
import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger("roomd.signins")


def normalize_uid(uid: str) -> str:
    return uid.strip().replace(":", "").replace(" ", "").replace("-", "").upper()


class Attendance:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._rosters: dict[str, dict[str, str]] = {}  # room → card hash → attendee
        self.cards: dict[str, set[str]] = {}  # meeting → card hashes signed in
        self.latencies: dict[str, list[float]] = {}  # meeting → sign-in latencies (s)
        self._current: dict[str, str] = {}  # room → its current meeting

    def enter(self, room: str, meeting: str) -> None:
        """A room moved on to `meeting`: forget the previous one's in-memory state (the
        records stay in the store), so a daemon that runs for years does not grow."""
        previous = self._current.get(room)
        if previous is not None and previous != meeting:
            self.cards.pop(previous, None)
            self.latencies.pop(previous, None)
        self._current[room] = meeting

    @staticmethod
    def load_secret(secret_file: Path | None, state_dir: Path) -> bytes:
        """The site secret for card hashes: a configured file, else one generated once in
        state_dir (mode 0600). Losing it makes old records unmatchable, not readable."""
        if secret_file is not None:
            return secret_file.read_bytes().strip()
        path = state_dir / "signin.key"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
            log.info("generated the sign-in hashing secret %s", path)
        return path.read_bytes().strip()

    def card(self, uid: str) -> str:
        return hmac.new(self._secret, normalize_uid(uid).encode(), hashlib.sha256).hexdigest()

    def load_roster(self, room: str, path: Path) -> int:
        """CSV with a header: `uid,name` (extra columns ignored)."""
        roster: dict[str, str] = {}
        with path.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                uid, name = (row.get("uid") or "").strip(), (row.get("name") or "").strip()
                if uid and name:
                    roster[self.card(uid)] = name
        self._rosters[room] = roster
        return len(roster)

    def attendee(self, room: str, card: str) -> str | None:
        return self._rosters.get(room, {}).get(card)

    def p95(self, meeting: str) -> float | None:
        values = sorted(self.latencies.get(meeting, []))
        if not values:
            return None
        return values[min(len(values) - 1, max(0, round(0.95 * len(values)) - 1))]


def check_roster(path: Path) -> str | None:
    """A config-time check: None when the roster is readable CSV with uid and name columns."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    if "uid" not in header or "name" not in header:
        return f"{path}: the first line must name the columns uid and name"
    return None
