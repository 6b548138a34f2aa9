"""Who is told about an alert, and when: routes, escalation tiers, quiet hours, repeats, the
clear to whoever got the raise, and a daily digest (STANDARD §3: on-site control → organiser →
security centre within a minute; a problem reported again and again until it is solved).

The planner decides and writes each notification into the store (the outbox pattern); the
deliverer (sinks/notify.py) sends them. Decisions are keyed by alert, route, tier and target,
so a restart neither repeats nor forgets one. Time comes from the site's clock.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections.abc import Callable

from .config import NotificationsConfig, NotifyRoute, QuietHours
from .model import Alert, Transition
from .notify_text import render, render_digest
from .site import Site
from .store import Notification, epoch

log = logging.getLogger("roomd.notify")

DIGEST_WINDOW = 86400.0


class NotificationPlanner:
    def __init__(
        self,
        site: Site,
        config: NotificationsConfig,
        kick: Callable[[], None] = lambda: None,
    ) -> None:
        self.site = site
        self.config = config
        self.kick = kick  # wakes the deliverer
        self._digest_day: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.config.routes or self.config.digest)

    # ---- reacting to transitions ---------------------------------------------------------------

    def on_transitions(self, transitions: list[Transition]) -> None:
        queued: list[Notification] = []
        for t in transitions:
            if t.kind == "raised":
                queued += self._due(t.alert)
            elif t.kind == "cleared":
                queued += self._clears(t.alert)
        self._queue(queued)

    def tick(self) -> int:
        """Tiers that came due, repeats, the digest; the number queued."""
        queued: list[Notification] = []
        for alert in list(self.site.book.active.values()):
            queued += self._due(alert)
        queued += self._digest()
        return self._queue(queued)

    def _queue(self, rows: list[Notification]) -> int:
        if not rows:
            return 0
        n = self.site.store.queue_notifications(rows)
        if n:
            self.kick()
        return n

    # ---- deciding ----------------------------------------------------------------------------

    def _due(self, alert: Alert) -> list[Notification]:
        if alert.state != "active":
            return []  # acknowledged: somebody is on it, the chain stops
        now = self.site.clock.time()
        waited = now - epoch(alert.since)
        out: list[Notification] = []
        done: set[tuple[str, int, str, str]] | None = None
        for route in self.config.routes:
            if not self._matches(route, alert):
                continue
            reached = [i for i, tier in enumerate(route.tiers) if waited >= tier.after]
            if not reached:
                continue
            if route.quiet_hours and self._quiet(route.quiet_hours, alert, now):
                continue  # decided again when the quiet hours end
            if done is None:
                done = set(self.site.store.notified(alert.id, alert.since))
            due = [
                (i, "raised" if i == 0 else "escalated", target)
                for i in reached
                for target in route.tiers[i].targets
            ]
            fresh = [
                self._make(alert, route, i, kind, target, waited, now)
                for i, kind, target in due
                if (route.name, i, kind, target) not in done
            ]
            out += fresh
            if route.repeat and not fresh:
                out += self._repeat(alert, route, reached[-1], waited, now, done)
        return out

    def _repeat(
        self,
        alert: Alert,
        route: NotifyRoute,
        tier: int,
        waited: float,
        now: float,
        done: set[tuple[str, int, str, str]],
    ) -> list[Notification]:
        assert route.repeat is not None
        last = self.site.store.last_sent(alert.id, alert.since, route.name)
        if last is None or now - last < route.repeat:
            return []
        n = 1 + sum(1 for (r, _, k, _) in done if r == route.name and k.startswith("repeat"))
        return [
            self._make(alert, route, tier, f"repeat-{n}", target, waited, now)
            for target in route.tiers[tier].targets
        ]

    def _clears(self, alert: Alert) -> list[Notification]:
        """The clear goes to everyone who was told of this alert, once each."""
        now = self.site.clock.time()
        told: dict[str, str] = {}
        for route_name, _tier, kind, target in self.site.store.notified(alert.id, alert.since):
            if kind != "cleared":
                told.setdefault(target, route_name)
        route_by_name = {r.name: r for r in self.config.routes}
        out = []
        for target, route_name in sorted(told.items()):
            route = route_by_name.get(route_name)
            language = self._language(route, target)
            title, body = self._text(alert, "cleared", language, 0.0)
            out.append(
                Notification(
                    alert.id, alert.since, route_name, 0, "cleared", target, title, body, now
                )
            )
        return out

    def _make(
        self,
        alert: Alert,
        route: NotifyRoute,
        tier: int,
        kind: str,
        target: str,
        waited: float,
        now: float,
    ) -> Notification:
        title, body = self._text(alert, kind, self._language(route, target), waited)
        return Notification(alert.id, alert.since, route.name, tier, kind, target, title, body, now)

    def _text(self, alert: Alert, kind: str, language: str, waited: float) -> tuple[str, str]:
        room = self.site.config.room(alert.room)
        name = (room.config.name if room else "") or alert.room
        label = self.site.config.label(alert.room, alert.metric)
        return render(alert, kind, language, name, label, self.config.console_url, waited)

    def _language(self, route: NotifyRoute | None, target: str) -> str:
        t = self.config.targets.get(target)
        return (
            (t.language if t else None)
            or (route.language if route else None)
            or self.site.config.language
        )

    def _matches(self, route: NotifyRoute, alert: Alert) -> bool:
        m = route.match
        if alert.severity not in m.grades:
            return False
        room = self.site.config.room(alert.room)
        names = [alert.room] + ([room.config.group] if room and room.config.group else [])
        if not any(fnmatch.fnmatchcase(n, g) for g in m.rooms for n in names):
            return False
        if m.kinds:
            poller = self.site.pollers.get((alert.room, alert.device))
            kind = poller.driver.kind if poller is not None else "room"
            if kind not in m.kinds:
                return False
        if m.metrics and not any(fnmatch.fnmatchcase(alert.metric, g) for g in m.metrics):
            return False
        if m.in_meeting != "any":
            in_meeting = alert.room in self.site.book.meeting_rooms
            if in_meeting != (m.in_meeting == "yes"):
                return False
        return True

    @staticmethod
    def _quiet(q: QuietHours, alert: Alert, now: float) -> bool:
        if alert.severity in q.grades:
            return False
        t = time.localtime(now)
        minute = t.tm_hour * 60 + t.tm_min
        start = int(q.start[:2]) * 60 + int(q.start[3:])
        end = int(q.end[:2]) * 60 + int(q.end[3:])
        return start <= minute < end if start < end else (minute >= start or minute < end)

    def _digest(self) -> list[Notification]:
        d = self.config.digest
        if d is None:
            return []
        now = self.site.clock.time()
        t = time.localtime(now)
        day = time.strftime("%Y-%m-%d", t)
        if f"{t.tm_hour:02d}:{t.tm_min:02d}" < d.at or self._digest_day == day:
            return []
        self._digest_day = day
        incidents = [
            i
            for i in self.site.store.incidents(now - DIGEST_WINDOW, limit=10_000)
            if i.severity in d.grades
        ]
        out = []
        for target in d.targets:
            title, body = render_digest(
                incidents, self._language(None, target), self.site.config.site
            )
            out.append(
                Notification(f"digest:{day}", day, "digest", 0, "digest", target, title, body, now)
            )
        return out
