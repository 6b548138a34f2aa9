"""The pre-meeting check of one room (STANDARD §2: three levels at T−2 h, T−1 h, T−30 min).

Generic items for every device (answers, no grade I–III alert, readings within the profile),
then each driver's own self-test (`Driver.self_test`: projectors power on and show a signal),
the room's sound check where a mixer and an audio probe exist, and what the previous level
found. The report is what a technician would print and sign.
"""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ..drivers.audio_probe import AudioProbeDriver
from ..drivers.base import CommandError, DeviceError, Readings
from ..drivers.x32 import MixerDriver
from ..i18n import translations
from .bookings import Booking
from .checktypes import CheckContext, CheckItem
from .clock import iso
from .config import ROOM_DEVICE
from .profiles import Threshold
from .soundcheck import SoundCheckResult, soundcheck

if TYPE_CHECKING:
    from .config import Room
    from .site import Poller, Site

LEVEL_NAMES = {
    0: "inspection (day before)",
    1: "level 1 (T-2 h)",
    2: "level 2 (T-1 h)",
    3: "level 3 (T-30 min)",
}
# Readings whose profile limits the check holds the room to at the moment of the check.
ENVIRONMENT = (
    "temperature_c",
    "humidity_pct",
    "co2_ppm",
    "air_changes_per_hour",
    "illuminance_lux",
    "color_temp_k",
    "door",
    "window",
    "link_state",
    "link_mbps",
    "wifi_rssi_dbm",
    "ping_loss_pct",
    "throughput_mbps",
)
BLOCKING_GRADES = ("I", "II", "III")
LIGHT = ("illuminance_lux", "color_temp_k")  # what a check waits to see after lights go on
CHECK_METRICS = ("room_ready", "room_sealed", "bookings")  # the check's own alerts


class RoomChecker:
    def __init__(self, site: Site) -> None:
        self.site = site
        self._running: dict[str, asyncio.Task[dict[str, Any]]] = {}

    async def run(
        self, room: Room, level: int, booking: Booking | None, previous: dict[str, Any] | None
    ) -> dict[str, Any]:
        """One check at a time per room: a second request waits for the running one."""
        running = self._running.get(room.id)
        if running is not None and not running.done():
            await asyncio.wait({running})
        task = asyncio.ensure_future(self._run(room, level, booking, previous))
        self._running[room.id] = task
        return await task

    async def _run(
        self, room: Room, level: int, booking: Booking | None, previous: dict[str, Any] | None
    ) -> dict[str, Any]:
        d = self.site
        started = time.monotonic()
        at = d.clock.time()
        pollers = list(d.room_pollers.get(room.id, {}).values())
        # Just started (or reloaded): give every device its first poll before judging it.
        patience = max((p.config.poll + p.config.timeout for p in pollers), default=0.0) * 2
        for _ in range(int(min(30.0, patience) * 10)):
            if all(p.online is not None for p in pollers):
                break
            await asyncio.sleep(0.1)
        items: list[CheckItem] = await self._prepare(pollers)
        for p in pollers:
            answers = p.online is True
            items.append(
                CheckItem(
                    "answers",
                    "online",
                    "online"
                    if answers
                    else (f"offline: {p.error}" if p.error else "not yet polled"),
                    answers,
                    device=p.config.id,
                )
            )
        blocking = sorted(
            (
                a
                for a in d.book.active.values()
                if a.room == room.id
                and a.severity in BLOCKING_GRADES
                and a.metric not in CHECK_METRICS
                and a.metric != "online"  # already an "answers" item
            ),
            key=lambda a: a.id,
        )
        items.append(
            CheckItem(
                "no active alert of grade III or worse",
                "none",
                "; ".join(f"[{a.severity}] {a.message}" for a in blocking) or "none",
                not blocking,
            )
        )
        items += self._environment(room, pollers)
        near = booking is not None and booking.start - at <= d.config.meetings.keep_on_within
        for p in pollers:
            if not p.online:
                continue
            ctx = CheckContext(
                level=level,
                keep_on=near,
                expect_source=d.config.meetings.expect_source,
                readings=lambda p=p: dict(p.readings),  # type: ignore[misc]
                wait_for=self._waiter(p),
            )
            t = time.monotonic()
            try:
                extra = await p.driver.self_test(ctx)
            except (DeviceError, CommandError, TimeoutError) as exc:
                extra = [CheckItem("self-test", "completes", f"failed: {exc}", False)]
            for item in extra:
                item.device = item.device or p.config.id
                item.duration_s = item.duration_s or round(time.monotonic() - t, 2)
            items += extra
        if booking is not None and booking.start <= at < booking.end:
            # A test tone at 85+ dB would interrupt the meeting: the check says so instead.
            if self._sound_pair(pollers) is not None:
                items.append(
                    CheckItem("sound check", "run", "skipped: a meeting is in progress", True)
                )
        else:
            items += await self._sound(room, pollers)
        if previous is not None and not previous.get("passed", True):
            items.append(self._previous(previous, items))
        report: dict[str, Any] = {
            "room": room.id,
            "room_name": room.config.name,
            "meeting": booking.as_dict() if booking else None,
            "level": level,
            "level_name": LEVEL_NAMES.get(level, f"level {level}"),
            "at": at,
            "ts": iso(at),
            "passed": all(i.passed for i in items),
            "failed": [_label(i) for i in items if not i.passed],
            "duration_s": round(time.monotonic() - started, 2),
            "items": [asdict(i) for i in items],
        }
        return report

    async def _prepare(self, pollers: list[Poller]) -> list[CheckItem]:
        """What devices do before the room is measured (an I/O module switches the lights on),
        then a wait until the light sensors have seen it, so the illuminance is the lit room's."""
        items = []
        for p in pollers:
            if not p.online:
                continue
            try:
                async with asyncio.timeout(p.config.timeout * 4 + 5):
                    done = await p.driver.prepare_check()
            except (DeviceError, CommandError, TimeoutError) as exc:
                reason = str(exc) or type(exc).__name__
                failed = CheckItem(
                    "prepare", "done", f"failed: {reason}", False, device=p.config.id
                )
                items.append(failed)
                continue
            if done:
                items.append(CheckItem("prepare", "done", done, True, device=p.config.id))
        if items:
            await self._settle(pollers)
        return items

    @staticmethod
    async def _settle(pollers: list[Poller]) -> None:
        """Until the devices that measure light have seen the change: two more polls (the
        second started after the switch), or a new value pushed (KNX sends it); at most 15 s."""
        watched = [p for p in pollers if p.online and any(m in p.readings for m in LIGHT)]
        before = {id(p): (p.polls, [p.readings.get(m) for m in LIGHT]) for p in watched}

        def settled(p: Poller) -> bool:
            polls, values = before[id(p)]
            return p.polls >= polls + 2 or [p.readings.get(m) for m in LIGHT] != values

        longest = max((p.config.poll + p.config.timeout for p in watched), default=0.0)
        deadline = time.monotonic() + min(15.0, 2 * longest + 0.5)
        while time.monotonic() < deadline:
            if all(settled(p) for p in watched):
                break
            await asyncio.sleep(0.1)  # polls are counted, not signalled: look again

    def _environment(self, room: Room, pollers: list[Poller]) -> list[CheckItem]:
        """Climate, air and light within the profile now (no hold time: the room must be right
        when the check runs)."""
        out = []
        sources: list[tuple[str, Readings, dict[str, Threshold]]] = [
            (p.config.id, p.readings, p.driver.expand_thresholds(room.device_thresholds(p.config)))
            for p in pollers
            if p.online
        ]
        # The room's own readings (ventilation estimated from the CO₂ decay of the last meeting).
        room_values = self.site.room_values.get(room.id)
        if room_values:
            sources.append((ROOM_DEVICE, room_values, room.thresholds))
        for device, readings, thresholds in sources:
            for metric in ENVIRONMENT:
                value = readings.get(metric)
                t = thresholds.get(metric)
                if t is None or not t.enabled:
                    continue
                if isinstance(value, str) and t.states:
                    grade = t.states.get(value)
                    out.append(
                        CheckItem(
                            t.label or metric,
                            "not " + " / ".join(sorted(t.states)),
                            value,
                            grade is None or grade not in BLOCKING_GRADES,
                            device=device,
                        )
                    )
                    continue
                if not isinstance(value, int | float) or isinstance(value, bool):
                    continue
                low = t.min is None or value >= t.min
                high = t.max is None or value <= t.max
                expected = (
                    f"{t.min:g}..{t.max:g}"
                    if t.min is not None and t.max is not None
                    else (f">= {t.min:g}" if t.min is not None else f"<= {t.max:g}")
                )
                out.append(
                    CheckItem(
                        t.label or metric,
                        f"{expected} {t.unit}".strip(),
                        f"{value:g} {t.unit}".strip(),
                        low and high,
                        device=device,
                    )
                )
        return out

    @staticmethod
    def _sound_pair(pollers: list[Poller]) -> tuple[Poller, Poller] | None:
        """The room's (mixer, probe), both online; an offline one is a failed "answers" item."""
        mixer, probe = audio_devices([p for p in pollers if p.online])
        return (mixer, probe) if mixer is not None and probe is not None else None

    async def _sound(self, room: Room, pollers: list[Poller]) -> list[CheckItem]:
        pair = self._sound_pair(pollers)
        if pair is None:
            return []
        mixer, probe = pair
        result = await room_soundcheck(room, mixer, probe)
        for item in result.items:
            item.device = probe.config.id
            item.item = f"sound check: {item.item}"
        return result.items

    @staticmethod
    def _previous(previous: dict[str, Any], items: list[CheckItem]) -> CheckItem:
        """STANDARD §2: each level re-checks what the previous level found."""
        found = previous.get("failed", [])
        now_failing = {_label(i) for i in items if not i.passed}
        still = [f for f in found if f in now_failing]
        return CheckItem(
            f"findings of {previous.get('level_name', 'the previous level')}",
            "all fixed",
            "; ".join(still) + " still failing" if still else f"{len(found)} fixed",
            not still,
            detail="; ".join(found),
        )

    def _waiter(self, p: Poller) -> Callable[[str, Callable[[Any], bool], float], Any]:
        async def wait_for(metric: str, pred: Callable[[Any], bool], timeout: float) -> Any:
            deadline = time.monotonic() + timeout
            while True:
                value = p.readings.get(metric)
                if pred(value) or time.monotonic() >= deadline:
                    return value
                await asyncio.sleep(0.2)

        return wait_for


def audio_devices(pollers: Iterable[Poller]) -> tuple[Poller | None, Poller | None]:
    """A room's first mixer and first audio probe (either may be missing)."""
    pollers = list(pollers)
    mixer = next((p for p in pollers if isinstance(p.driver, MixerDriver)), None)
    probe = next((p for p in pollers if isinstance(p.driver, AudioProbeDriver)), None)
    return mixer, probe


async def room_soundcheck(room: Room, mixer: Poller | None, probe: Poller) -> SoundCheckResult:
    """The sound check with the probe's thresholds (the room's profile and overrides)."""
    assert isinstance(probe.driver, AudioProbeDriver)
    thresholds = probe.driver.expand_thresholds(room.device_thresholds(probe.config))
    desk = mixer.driver if mixer is not None else None
    assert desk is None or isinstance(desk, MixerDriver)
    return await soundcheck(desk, probe.driver, thresholds)


def _label(item: CheckItem) -> str:
    return f"{item.device}: {item.item}" if item.device else item.item


# ---- rendering ---------------------------------------------------------------------------------


def _meeting_line(report: dict[str, Any], gettext: Callable[[str], str] = str) -> str:
    _ = gettext
    m = report.get("meeting")
    if not m:
        return _("no booking (on-demand check)")
    who = (", " + _("organiser %(name)s") % {"name": m["organiser"]}) if m.get("organiser") else ""
    return f"{m.get('title') or m['id']} ({m['start']} – {m['end']}, {m['class']}{who})"


def render_text(report: dict[str, Any], language: str = "en") -> str:
    """The report as text, in the site's language, with the signature line."""
    _ = translations(language).gettext
    verdict = _("READY") if report["passed"] else _("NOT READY")
    name = report.get("room_name") or report["room"]
    # (Labels first: gettext calls inside f-strings are invisible to the extractor.)
    title, meeting, level, time_, result = (
        _("Pre-meeting check"),
        _("Meeting"),
        _("Level"),
        _("Time"),
        _("Result"),
    )
    device, item_, expected, measured = _("device"), _("item"), _("expected"), _("measured")
    lines = [
        f"{title}: {name} ({report['room']})",
        f"{meeting}: {_meeting_line(report, _)}",
        f"{level}:   {report['level_name']}",
        f"{time_}:    {report['ts']}  ({report['duration_s']:g} s)",
        f"{result}:  {verdict}",
        "",
        f"{'':5}{device:16}{item_:40}{expected:18}{measured}",
    ]
    ok, fail = _("ok"), _("FAIL")
    for item in report["items"]:
        mark = ok if item["passed"] else fail
        lines.append(
            f"{mark:5}{item['device'][:15]:16}{item['item'][:39]:40}{item['expected'][:17]:18}"
            f"{item['measured']}"
        )
    checked, signed = _("Checked by"), _("Signature")
    lines += ["", f"{checked}: ____________________   {signed}: ____________________"]
    return "\n".join(lines) + "\n"


def render_html(report: dict[str, Any], language: str = "en") -> str:
    """The printable report, in the site's language, with the signature block (STANDARD §2)."""
    _ = translations(language).gettext
    e = html.escape
    verdict = _("READY") if report["passed"] else _("NOT READY")
    ok, fail = e(_("ok")), e(_("FAIL"))
    rows = "\n".join(
        f'<tr class="{"ok" if i["passed"] else "fail"}"><td>{ok if i["passed"] else fail}'
        f"</td><td>{e(i['device'])}</td><td>{e(i['item'])}</td><td>{e(i['expected'])}</td>"
        f"<td>{e(i['measured'])}</td><td>{i['duration_s']:g} s</td></tr>"
        for i in report["items"]
    )
    name = e(report.get("room_name") or report["room"])
    title = e(_("Pre-meeting check"))
    columns = [_("device"), _("item"), _("expected"), _("measured"), _("duration")]
    head = "<tr><th></th>" + "".join(f"<th>{e(c)}</th>" for c in columns) + "</tr>"
    meeting, level, time_, checked, signature = (
        e(_("Meeting")),
        e(_("Level")),
        e(_("Time")),
        e(_("Checked by")),
        e(_("Signature")),
    )
    lang = "zh-CN" if language == "zh-CN" else "en"
    return f"""<!doctype html>
<html lang="{lang}"><head><meta charset="utf-8">
<title>{title} {name}, {e(report["level_name"])}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; width: 100%; }}
td, th {{ border: 1px solid #999; padding: 4px 8px; text-align: left; }}
tr.fail td {{ background: #fdd; }}
.verdict {{ font-size: 1.4em; font-weight: bold; }}
.sign {{ margin-top: 3em; }}
@media print {{ tr.fail td {{ -webkit-print-color-adjust: exact; print-color-adjust: exact; }} }}
</style></head><body>
<h1>{title}: {name} ({e(report["room"])})</h1>
<p>{meeting}: {e(_meeting_line(report, _))}<br>
{level}: {e(report["level_name"])}<br>
{time_}: {e(report["ts"])} ({report["duration_s"]:g} s)</p>
<p class="verdict">{verdict}</p>
<table>{head}
{rows}
</table>
<p class="sign">{checked}: ____________________ &nbsp;
{signature}: ____________________</p>
</body></html>
"""
