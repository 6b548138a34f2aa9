"""Sends queued notifications through Apprise (one library for e-mail, WeCom, DingTalk, Feishu,
Slack, Teams, ntfy, webhooks and more), one target at a time, off the event loop.

A failed attempt is retried with capped, jittered backoff; a target that keeps failing raises
an alert in the rooms it had news for (cleared when it delivers again); a message that could
not go out within a day is given up and counted. Each target gets at most `rate_limit`
messages an hour: more are sent as one summary.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

from ..config import NotificationsConfig
from ..notify_text import render_summary
from ..store import QueuedNotification, Store

log = logging.getLogger("roomd.notify")

BACKOFF_MIN, BACKOFF_MAX = 5.0, 300.0
GIVE_UP_AFTER = 86400.0
FAILING_AFTER = 3  # attempts before the target's failure becomes an alert
SEND_TIMEOUT = 30.0


class Delivery:
    def __init__(
        self,
        config: NotificationsConfig,
        store: Store,
        now: Callable[[], float],
        language: str,
        on_failing: Callable[[str, str | None], None] = lambda room, error: None,
        count: Callable[[str, str], None] = lambda target, outcome: None,
    ) -> None:
        self.config = config
        self.store = store
        self.now = now
        self.language = language
        # (room, "target: error") when a target with news for the room keeps failing;
        # (room, None) when every such target delivers again.
        self.on_failing = on_failing
        self.count = count
        self._sent: dict[str, deque[float]] = defaultdict(deque)
        self._failing: dict[str, set[str]] = {}  # target → rooms it failed to tell
        # Rooms whose delivery alert was active at start (which target is not known then):
        # cleared by the first message that goes out.
        self.restored: set[str] = set()
        self._wake = asyncio.Event()
        self._apprise: dict[str, Any] = {}
        self._lock = asyncio.Lock()  # one pass at a time: a row is never sent twice at once

    def reset(self) -> None:
        """After a reload: targets' URLs may have changed."""
        self._apprise.clear()
        self.kick()

    def kick(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.deliver_due()
            except Exception:
                log.exception("notification delivery")
            try:
                async with asyncio.timeout(1.0):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def deliver_due(self) -> int:
        """Send what is due; the number of messages that went out."""
        async with self._lock:
            return await self._deliver_due()

    async def _deliver_due(self) -> int:
        now = self.now()
        by_target: dict[str, list[QueuedNotification]] = defaultdict(list)
        for row in self.store.due_notifications(now, limit=500):
            by_target[row.target].append(row)
        sent = 0
        for target, rows in by_target.items():
            sent += await self._deliver(target, rows, now)
        return sent

    async def _deliver(self, target: str, rows: list[QueuedNotification], now: float) -> int:
        window = self._sent[target]
        limit = self.config.rate_limit
        while window and window[0] <= now - limit.per:
            window.popleft()
        allowance = limit.messages - len(window)
        if allowance <= 0:
            # Wait for the window: the oldest send leaves it at window[0] + per.
            self.store.postpone_notifications([r.id for r in rows], window[0] + limit.per)
            return 0
        batches: list[tuple[list[int], str, str]]
        if len(rows) <= allowance:
            batches = [([r.id], r.title, r.body) for r in rows]
        else:
            batches = [([r.id], r.title, r.body) for r in rows[: allowance - 1]]
            rest = rows[allowance - 1 :]
            target_cfg = self.config.targets.get(target)
            language = (target_cfg.language if target_cfg else None) or self.language
            title, body = render_summary([r.title for r in rest], language)
            batches.append(([r.id for r in rest], title, body))
        sent = 0
        stopping = False
        for ids, title, body in batches:
            send = asyncio.ensure_future(self._send(target, title, body))
            try:
                error = await asyncio.shield(send)
            except asyncio.CancelledError:
                # Stopping mid-send: the message may be out already. Wait for the answer and
                # record it, or a restart would send it again.
                error = await send
                stopping = True
            at = self.now()
            if error is None:
                self.store.notification_sent(ids, at)
                window.append(at)
                sent += 1
                self.count(target, "sent")
                for room in sorted(self.restored):
                    self.on_failing(room, None)
                self.restored.clear()
                if target in self._failing:
                    log.info("notifications to %s delivered again", target)
                    for room in self._failing.pop(target):
                        if not any(room in rooms for rooms in self._failing.values()):
                            self.on_failing(room, None)
                if stopping:
                    raise asyncio.CancelledError
                continue
            first = next(r for r in rows if r.id == ids[0])
            attempts = first.attempts + 1
            if at - first.created > GIVE_UP_AFTER:
                self.store.notification_failed(ids, None, error)
                self.count(target, "given_up")
                log.error("notification to %s given up after a day: %s", target, error)
            else:
                backoff = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** (attempts - 1))
                self.store.notification_failed(
                    ids, at + random.uniform(backoff / 2, backoff), error
                )
                self.count(target, "failed")
            if attempts >= FAILING_AFTER:
                rooms = {r.alert.split(".", 1)[0] for r in rows if r.id in ids}
                new = rooms - self._failing.get(target, set())
                if target not in self._failing:
                    log.warning("notifications to %s are failing: %s", target, error)
                self._failing.setdefault(target, set()).update(rooms)
                for room in sorted(new):
                    self.on_failing(room, f"{target}: {error}")
            if stopping:
                raise asyncio.CancelledError
        return sent

    async def _send(self, target: str, title: str, body: str) -> str | None:
        """None when sent; otherwise what went wrong."""
        cfg = self.config.targets.get(target)
        if cfg is None:
            return f"no target {target!r} in the config"
        try:
            async with asyncio.timeout(SEND_TIMEOUT):
                return await asyncio.to_thread(self._send_blocking, target, title, body)
        except TimeoutError:
            return f"no answer within {SEND_TIMEOUT:g} s"

    def _send_blocking(self, target: str, title: str, body: str) -> str | None:
        import apprise  # imported on first use: a site without notifications never loads it

        ap = self._apprise.get(target)
        if ap is None:
            ap = apprise.Apprise()
            if not ap.add(self.config.targets[target].secret()):
                return "Apprise does not understand this target's URL"
            self._apprise[target] = ap
        with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as logs:
            ok = ap.notify(title=title, body=body)
        if ok:
            return None
        text = " ".join(str(logs.getvalue()).split())[-300:]
        return text or "delivery failed"
