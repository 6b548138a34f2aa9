"""What a person reads about an alert, in their language: the room by its name, what is wrong,
the value and the limit, since when, the grade, and how to acknowledge."""

from __future__ import annotations

import time
from typing import Any

from ..i18n import translations
from .model import Alert
from .store import Incident, epoch


def local_time(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(epoch))


def _value(value: Any, unit: str) -> str:
    if isinstance(value, float):
        value = f"{value:.2f}".rstrip("0").rstrip(".")
    return f"{value} {unit}".strip() if value is not None else "—"


def describe(alert: Alert, label: str | None, language: str) -> str:
    """The alert's message; in another language rebuilt from its parts (the label through
    the catalog), since the stored message is English."""
    if language == "en" or label is None:
        return alert.message
    _ = translations(language).gettext
    name = _(label)
    if alert.metric == "online":
        return _("%(device)s offline") % {"device": alert.device}
    if alert.rule in ("max", "critical_max"):
        template = _("%(label)s %(value)s, above %(limit)s")
    elif alert.rule in ("min", "critical_min"):
        template = _("%(label)s %(value)s, below %(limit)s")
    else:
        # A state ("error") or a room-level fact with its detail: the label translated, the
        # detail (a device's or a service's own words) as it came.
        detail = alert.message.removeprefix(f"{label}: ")
        if detail == alert.message:
            detail = str(alert.value)
        return _("%(label)s: %(detail)s") % {"label": name, "detail": detail}
    return template % {
        "label": name,
        "value": _value(alert.value, alert.unit),
        "limit": _value(alert.limit, alert.unit),
    }


def render(
    alert: Alert,
    kind: str,
    language: str,
    room_name: str,
    label: str | None,
    console_url: str | None,
    waited: float = 0.0,
) -> tuple[str, str]:
    """(title, body) of a raise, an escalation, a repeat or a clear."""
    _ = translations(language).gettext
    what = describe(alert, label, language)
    grade = _("grade %(grade)s") % {"grade": alert.severity}
    if kind == "cleared":
        title = _("Cleared: %(room)s: %(what)s") % {"room": room_name, "what": what}
    elif kind in ("escalated", "repeat"):
        minutes = max(1, round(waited / 60))
        title = _("Not acknowledged after %(minutes)s min: [%(grade)s] %(room)s: %(what)s") % {
            "minutes": minutes,
            "grade": alert.severity,
            "room": room_name,
            "what": what,
        }
    else:
        title = _("[%(grade)s] %(room)s: %(what)s") % {
            "grade": alert.severity,
            "room": room_name,
            "what": what,
        }
    lines = [
        _("Room: %(name)s (%(id)s)") % {"name": room_name, "id": alert.room},
        _("Problem: %(what)s") % {"what": what},
        _("Device: %(device)s") % {"device": alert.device},
    ]
    if alert.limit is not None and not isinstance(alert.limit, str):
        lines.append(
            _("Value: %(value)s (limit %(limit)s)")
            % {"value": _value(alert.value, alert.unit), "limit": _value(alert.limit, alert.unit)}
        )
    lines.append(_("Since: %(when)s") % {"when": local_time(epoch(alert.since))})
    lines.append(_("Grade: %(grade)s") % {"grade": grade})
    if kind == "cleared":
        lines.append(_("Cleared at: %(when)s") % {"when": local_time(epoch(alert.ts))})
        reason = alert.extra.get("reason")
        if reason:
            lines.append(_("Reason: %(reason)s") % {"reason": reason})
    else:
        lines.append(
            _("To acknowledge: roomd ack %(id)s") % {"id": alert.id}
            + (f"  ·  {console_url.rstrip('/')}/rooms/{alert.room}" if console_url else "")
        )
    lines.append(_("Alert id: %(id)s") % {"id": alert.id})
    return title, "\n".join(lines)


def render_digest(incidents: list[Incident], language: str, site: str) -> tuple[str, str]:
    _ = translations(language).gettext
    title = _("%(site)s: %(n)s grade IV alerts in the last 24 hours") % {
        "site": site,
        "n": len(incidents),
    }
    lines = []
    for i in incidents:
        state = (
            _("open")
            if i.cleared is None
            else _("cleared after %(minutes)s min") % {"minutes": round((i.to_clear or 0) / 60)}
        )
        lines.append(f"{local_time(i.raised)}  {i.room}  {i.message}  ({state})")
    return title, "\n".join(lines) or _("No alert.")


def render_summary(titles: list[str], language: str) -> tuple[str, str]:
    """Several notifications as one, when a target has had its share for the hour."""
    _ = translations(language).gettext
    title = _("%(n)s more alerts (rate limit reached)") % {"n": len(titles)}
    return title, "\n".join(f"- {t}" for t in titles)
