"""Input from the network, bounded before anything believes it.

Every message on a subscribed topic passes through `load_json` (size, nesting depth, UTF-8,
one JSON value) before a handler looks at it, and a handler's failure is logged through a
`LogLimiter` so that a flood of bad input costs a bounded number of log lines.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

COMMAND_MAX_BYTES = 64 * 1024  # a command is a few hundred bytes; 64 KiB is generous
BOOKINGS_MAX_BYTES = 1024 * 1024  # ~8,000 bookings
MAX_DEPTH = 16  # commands nest 3 deep, bookings 2


class InputRejected(ValueError):
    """Input that is not used; the text says precisely why (it goes into `ok:false` replies,
    bookings error alerts and the log)."""


def load_json(payload: bytes, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """One JSON value from `payload`, or InputRejected. orjson bounds the parser itself (no
    recursion error, invalid UTF-8 rejected, depth ≤ 1024); the depth walk below bounds what
    a handler must be ready for."""
    if len(payload) > max_bytes:
        raise InputRejected(f"message of {len(payload)} bytes, over the limit of {max_bytes}")
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        # orjson stops deep nesting with "depth limit exceeded" (closed) or, for a run of
        # unclosed brackets, "failed to allocate memory": both mean too deep, not out of memory.
        if "depth limit" in str(exc) or "allocate" in str(exc):
            raise InputRejected(f"not JSON: nested deeper than {max_depth} levels") from None
        raise InputRejected(f"not JSON: {exc}") from None
    if _depth_over(value, max_depth):
        raise InputRejected(f"nested deeper than {max_depth} levels")
    return value


def _depth_over(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


class LogLimiter:
    """At most one log line per key per `interval`; the next line says how many were held
    back. Keys are sources (a topic, a peer), so one noisy source cannot hide another."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 60.0,
        max_keys: int = 1024,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = logger
        self.interval = interval
        self.max_keys = max_keys
        self.monotonic = monotonic
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def __call__(self, level: int, key: str, msg: str, *args: Any) -> bool:
        now = self.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        if last is None and len(self._last) >= self.max_keys:
            self._forget_oldest(now)
        held = self._held.pop(key, 0)
        self._last[key] = now
        suffix = f" ({held} more like this in the last {self.interval:g}s)" if held else ""
        self.log.log(level, msg + suffix, *args)
        return True

    def _forget_oldest(self, now: float) -> None:
        # Keys past their interval carry no state worth keeping; else drop the oldest half.
        expired = [k for k, t in self._last.items() if now - t >= self.interval]
        victims = expired or sorted(self._last, key=self._last.__getitem__)[: self.max_keys // 2]
        for key in victims:
            self._last.pop(key, None)
            self._held.pop(key, None)


class Command:
    """A command message that passed the shape checks (contract §3)."""

    __slots__ = ("args", "id", "message", "name")

    def __init__(self, message: dict[str, Any], cmd_id: str | int | None, name: str) -> None:
        self.message = message
        self.id = cmd_id
        self.name = name
        self.args: dict[str, Any] = message.get("args", {})


class BadCommand(InputRejected):
    """A command that cannot be run; `cmd_id` is its id when that much could be read."""

    def __init__(self, message: str, cmd_id: str | int | None = None) -> None:
        super().__init__(message)
        self.cmd_id = cmd_id


def parse_command(payload: bytes) -> Command:
    """`{"command": str, "args": {...}, "id": str|int}`, bounded; BadCommand says what is wrong."""
    try:
        msg = load_json(payload, max_bytes=COMMAND_MAX_BYTES)
    except InputRejected as exc:
        raise BadCommand(str(exc)) from None
    if not isinstance(msg, dict):
        raise BadCommand("a command must be a JSON object")
    cmd_id = msg.get("id")
    if not isinstance(cmd_id, str | int | None) or isinstance(cmd_id, bool):
        raise BadCommand("id: must be a string or a number")
    if isinstance(cmd_id, str) and len(cmd_id) > 128:
        raise BadCommand("id: longer than 128 characters")
    name = msg.get("command")
    if not isinstance(name, str) or not name or len(name) > 64:
        raise BadCommand("command: missing or not a short string", cmd_id)
    if not isinstance(msg.get("args", {}), dict):
        raise BadCommand("args: must be an object", cmd_id)
    return Command(msg, cmd_id, name)
