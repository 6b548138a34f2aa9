"""Housekeeping the daemon does every few seconds: escalation of unacknowledged alerts, days
since inspection, file descriptors near the limit. Depends on the site only."""

from __future__ import annotations

import logging
import os
import resource
import time
from datetime import date

from ..drivers.base import Readings
from .clock import iso
from .model import Transition
from .site import Site

log = logging.getLogger("roomd")


class Housekeeping:
    def __init__(self, site: Site) -> None:
        self.site = site
        self._announced: dict[str, float] = {}  # alert id → monotonic time last announced
        self._fd_warned = False

    def check_inspections(self) -> None:
        """days_since_inspection for every device with `last_inspected` (profile: > 90 → IV)."""
        today = time.gmtime(self.site.clock.time())
        today_ordinal = date(today.tm_year, today.tm_mon, today.tm_mday).toordinal()
        for p in self.site.pollers.values():
            if p.config.last_inspected is not None:
                days = today_ordinal - p.config.last_inspected.toordinal()
                reading: Readings = {"days_since_inspection": days}
                self.site.emit(self.site.book.observe(p.room.id, p.config.id, reading))
                self.site.metrics.update(p.room.id, p.config.id, reading)

    def escalate_due(self) -> list[Transition]:
        """Re-announce unacknowledged alerts of the configured grades every interval."""
        esc = self.site.config.escalation
        now = self.site.clock.monotonic()
        out: list[Transition] = []
        for alert_id, alert in list(self.site.book.active.items()):
            if alert.state != "active" or alert.severity not in esc.grades:
                self._announced.pop(alert_id, None)
                continue
            last = self._announced.setdefault(alert_id, now)
            if now - last >= esc.interval:
                self._announced[alert_id] = now
                alert.extra["escalations"] = int(alert.extra.get("escalations", 0)) + 1
                alert.ts = iso(self.site.clock.time())
                out.append(Transition("escalated", alert))
        for gone in set(self._announced) - set(self.site.book.active):
            del self._announced[gone]
        if out:
            self.site.emit(out)
        return out

    def check_descriptors(self) -> None:
        """Say when open file descriptors near the limit (each TCP device holds one; 1,000
        devices ≈ 1,010) — once on the way up, once on the way down."""
        used, soft = open_descriptors(), descriptor_limit()
        if used is None or soft is None:
            return
        near = used >= 0.8 * soft
        if near and not self._fd_warned:
            log.warning(
                "%d of %d file descriptors in use: raise LimitNOFILE= (systemd) or ulimit -n",
                used,
                soft,
            )
        elif not near and self._fd_warned:
            log.info("file descriptors back to %d of %d", used, soft)
        self._fd_warned = near


def open_descriptors() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def descriptor_limit() -> int | None:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def raise_descriptor_limit(devices: int) -> str | None:
    """A daemon needs about one descriptor per network device plus ~64 of its own: raise the
    soft limit up to the hard one when that is short, else say so."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = devices + 64
    if soft == resource.RLIM_INFINITY or soft >= need * 1.25:
        return None
    target = hard if hard == resource.RLIM_INFINITY else min(hard, max(need * 2, soft))
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        target = soft
    if target != resource.RLIM_INFINITY and target < need * 1.25:
        return (
            f"{devices} devices need about {need} file descriptors but the limit is {target}: "
            "set LimitNOFILE= in the unit (or ulimit -n)"
        )
    return None
