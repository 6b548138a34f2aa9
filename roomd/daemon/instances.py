"""Two daemons that poll the same rooms fight over devices (a single-client gateway, a PJLink
projector with one session) and double every alert. Each instance announces itself on
`{prefix}/{site}/_daemon/instances` (not retained: a dead instance must not look alive) with
its id and the rooms it owns; an instance that hears another claim one of its rooms raises
`instance_conflict` on that room, and clears it when the other has been silent for a while.

The contract's availability payload stays `online`/`offline` (Home Assistant and controllers
parse it); the instance id travels here instead.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from .inbound import InputRejected, LogLimiter, load_json

log = logging.getLogger("roomd.instances")
_limited = LogLimiter(log)

HEARTBEAT = 30.0  # seconds between announcements
FORGET = 3 * HEARTBEAT + 5  # another instance silent this long is gone


class Instances:
    def __init__(
        self,
        publish: Callable[[dict[str, Any]], None],
        conflict: Callable[[str, str | None], None],
        rooms: Callable[[], Iterable[str]],
        monotonic: Callable[[], float] = time.monotonic,
        instance_id: str | None = None,
    ) -> None:
        self.id = instance_id or uuid.uuid4().hex[:12]
        self._publish = publish
        self._conflict = conflict  # (room, detail or None to clear)
        self._rooms = rooms
        self._monotonic = monotonic
        self.host = socket.gethostname()
        self.started = time.time()
        self._sent_at = -1e9
        # other instance id → (last heard, its rooms that are also ours, description)
        self.others: dict[str, tuple[float, frozenset[str], str]] = {}
        self._conflicting: set[str] = set()

    def announcement(self) -> dict[str, Any]:
        return {
            "instance": self.id,
            "host": self.host,
            "pid": os.getpid(),
            "started": self.started,
            "rooms": sorted(self._rooms()),
        }

    def announce(self) -> None:
        self._sent_at = self._monotonic()
        self._publish(self.announcement())

    def tick(self) -> None:
        """Every few seconds: announce when due, forget instances that went quiet."""
        now = self._monotonic()
        if now - self._sent_at >= HEARTBEAT:
            self.announce()
        for other, (heard, _rooms, _what) in list(self.others.items()):
            if now - heard > FORGET:
                del self.others[other]
        self._update()

    def heard(self, payload: bytes) -> None:
        try:
            msg = load_json(payload, max_bytes=256 * 1024, max_depth=3)
            if not isinstance(msg, dict):
                raise InputRejected("not an object")
            other, rooms = msg.get("instance"), msg.get("rooms")
            if not isinstance(other, str) or not isinstance(rooms, list):
                raise InputRejected("needs instance (str) and rooms (list)")
        except InputRejected as exc:
            _limited(logging.WARNING, "bad", "instance announcement ignored: %s", exc)
            return
        if other == self.id:
            return
        shared = frozenset(r for r in rooms if isinstance(r, str)) & frozenset(self._rooms())
        first = other not in self.others
        what = f"instance {other[:12]} on {str(msg.get('host', '?'))[:64]}"
        self.others[other] = (self._monotonic(), shared, what)
        if shared and first:
            rooms_text = ", ".join(sorted(shared))
            log.error("%s also polls %s: one site config, one instance", what, rooms_text)
            self.announce()  # let it know at once, rather than at our next heartbeat
        self._update()

    def _update(self) -> None:
        claimed: dict[str, list[str]] = {}
        for _heard, rooms, what in self.others.values():
            for room in rooms:
                claimed.setdefault(room, []).append(what)
        for room, whats in claimed.items():
            self._conflict(room, f"{', '.join(sorted(whats))} also polls this room")
        for room in self._conflicting - claimed.keys():
            self._conflict(room, None)
        self._conflicting = set(claimed)
