"""Who is at the console: logins (argon2 password hashes or tokens from files), sessions that
expire, a CSRF token per session, and a brake on password guessing.

Sessions live in memory: a daemon restart asks everyone to log in again, which is the safe
side for a tool that switches projectors off.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ..daemon.config import ConsoleConfig, ConsoleUser

Role = str  # "viewer" | "technician"
_hasher = PasswordHasher()
# Verified against when the name is unknown, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))

FAILURES_ALLOWED = 5  # per name and per client address ...
FAILURE_WINDOW = 300.0  # ... within this many seconds; then refused until the window passes


def hash_password(password: str) -> str:
    return _hasher.hash(password)


@dataclass
class Account:
    name: str
    role: Role
    language: str | None
    password_hash: str | None
    token: str | None

    @classmethod
    def from_config(cls, user: ConsoleUser) -> Account:
        pw_hash = user.password_hash
        if pw_hash is None and user.password_hash_file is not None:
            pw_hash = _read_secret(user.password_hash_file)
        token = _read_secret(user.token_file) if user.token_file is not None else None
        return cls(user.name, user.role, user.language, pw_hash, token)


def _read_secret(path: Path) -> str:
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        raise ValueError(f"{path} is empty")
    return text


@dataclass
class Session:
    token: str
    account: Account
    csrf: str
    created: float
    seen: float

    @property
    def may_act(self) -> bool:
        """Technicians acknowledge, command and run checks; viewers only look."""
        return self.account.role == "technician"


@dataclass
class Gate:
    """Accounts, sessions and the guessing brake."""

    config: ConsoleConfig
    now: Callable[[], float]
    accounts: dict[str, Account] = field(default_factory=dict)
    sessions: dict[str, Session] = field(default_factory=dict)
    _failures: dict[str, deque[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.accounts = {u.name: Account.from_config(u) for u in self.config.users}

    def throttled(self, *keys: str) -> bool:
        horizon = self.now() - FAILURE_WINDOW
        for key in keys:
            q = self._failures.get(key)
            while q and q[0] < horizon:
                q.popleft()
            if q is not None and len(q) >= FAILURES_ALLOWED:
                return True
        return False

    def failed(self, *keys: str) -> None:
        for key in keys:
            self._failures.setdefault(key, deque(maxlen=FAILURES_ALLOWED)).append(self.now())
        if len(self._failures) > 10_000:  # a spray of names: forget the oldest
            for key in list(self._failures)[:5_000]:
                del self._failures[key]

    async def login(self, name: str, secret: str, client: str) -> Account | None:
        """The account for a name and a password or token; None (and counted) otherwise."""
        name = name[:64]
        if self.throttled(f"user:{name}", f"addr:{client}"):
            return None
        account = self.accounts.get(name)
        ok = False
        if account is not None and account.token is not None:
            ok = hmac.compare_digest(account.token.encode(), secret.encode())
        if not ok:
            pw_hash = account.password_hash if account and account.password_hash else _DUMMY_HASH
            ok = await asyncio.to_thread(_verify, pw_hash, secret) and account is not None
        if not ok:
            self.failed(f"user:{name}", f"addr:{client}")
            return None
        return account

    def bearer(self, token: str) -> Account | None:
        """A script's `Authorization: Bearer <token>` (an account with a token_file)."""
        for account in self.accounts.values():
            if account.token is not None and hmac.compare_digest(
                account.token.encode(), token.encode()
            ):
                return account
        return None

    def open(self, account: Account) -> Session:
        now = self.now()
        token = secrets.token_urlsafe(32)
        session = Session(token, account, secrets.token_urlsafe(24), now, now)
        self.sessions[token] = session
        return session

    def session(self, token: str | None) -> Session | None:
        """The live session for a cookie; expired ones are forgotten."""
        if not token:
            return None
        session = self.sessions.get(token)
        if session is None:
            return None
        now = self.now()
        if (
            now - session.seen > self.config.session_idle
            or now - session.created > self.config.session_max
        ):
            del self.sessions[token]
            return None
        session.seen = now
        return session

    def close(self, token: str | None) -> None:
        if token:
            self.sessions.pop(token, None)

    @staticmethod
    def csrf_ok(session: Session, sent: str | None) -> bool:
        return bool(sent) and hmac.compare_digest(session.csrf.encode(), str(sent).encode())


def _verify(pw_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(pw_hash, password)
    except (VerificationError, InvalidHashError):
        return False
