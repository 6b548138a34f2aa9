"""Bookings: iCalendar files or URLs (recurrences and exceptions expanded by icalendar +
recurring-ical-events) and JSON lists pushed by booking systems over MQTT.

A source that cannot be read or parsed keeps its last good bookings; the caller turns the
error into an alert for that room.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import urllib.error
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Literal

import icalendar
import recurring_ical_events  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .inbound import BOOKINGS_MAX_BYTES, InputRejected, load_json

BookingClass = Literal["small", "large", "important"]
CLASSES: tuple[BookingClass, ...] = ("small", "large", "important")
MAX_BOOKINGS = 2000  # per source: a month of 15-minute slots; calendars are other people's files
OFF_LOOP_BYTES = 64 * 1024  # larger sources are parsed in a worker thread


class BookingError(ValueError):
    """A source or message that could not be used; the text names what was wrong."""


@dataclass
class Parsed:
    bookings: list[Booking]
    dropped: int = 0  # occurrences past the cap (`MAX_BOOKINGS`): the latest are dropped
    ignored: list[str] = field(default_factory=list)  # series that are no meeting's

    def problem(self, limit: int) -> str | None:
        out = list(self.ignored)
        if self.dropped:
            out.append(
                f"more than {limit} bookings; the first {limit} are used, {self.dropped}+ dropped"
            )
        return "; ".join(out) or None


# Expanding these from a DTSTART months back costs millions of steps before the window even
# starts (dateutil walks from DTSTART): 76 s for FREQ=SECONDLY since January. No meeting recurs
# like that, so such a series is left out and named.
_NOT_MEETINGS = {"SECONDLY", "MINUTELY"}


def _drop_unbounded_series(calendar: Any) -> list[str]:
    ignored = []
    for parent in [calendar, *calendar.walk()]:
        for component in list(parent.subcomponents):
            rule = component.get("RRULE") if component.name == "VEVENT" else None
            freq = str((rule or {}).get("FREQ", [""])[0]).upper() if rule is not None else ""
            if freq in _NOT_MEETINGS:
                parent.subcomponents.remove(component)
                uid = str(component.get("UID") or "?")[:80]
                ignored.append(f"event {uid}: RRULE FREQ={freq} is no meeting's; ignored")
    return ignored


@dataclass(frozen=True, slots=True)
class Booking:
    id: str
    room: str
    start: float  # epoch seconds
    end: float
    title: str = ""
    organiser: str = ""
    attendees: int | None = None
    cls: BookingClass = "small"
    source: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "start": _iso(self.start),
            "end": _iso(self.end),
            "title": self.title,
            "organiser": self.organiser,
            "attendees": self.attendees,
            "class": self.cls,
        }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.astimezone()  # floating time: the daemon's local time zone
        return value.timestamp()
    if isinstance(value, date):  # an all-day event: local midnight
        return datetime(value.year, value.month, value.day).astimezone().timestamp()
    raise BookingError(f"not a date or time: {value!r}")


def _class_of(event: Any) -> BookingClass:
    """From X-ROOMD-CLASS, else from CATEGORIES (`large`, `important`), else small."""
    explicit = event.get("X-ROOMD-CLASS")
    if explicit is not None:
        text = str(explicit).strip().lower()
        if text in CLASSES:
            return text
    categories = event.get("CATEGORIES")
    words: list[str] = []
    for entry in categories if isinstance(categories, list) else [categories]:
        if entry is not None:
            words += [str(c).strip().lower() for c in getattr(entry, "cats", [entry])]
    for cls in ("important", "large"):
        if cls in words:
            return cls
    return "small"


def _organiser(event: Any) -> str:
    org = event.get("ORGANIZER")
    if org is None:
        return ""
    name = getattr(org, "params", {}).get("CN")
    return str(name) if name else str(org).removeprefix("mailto:")


def _attendees(event: Any) -> int | None:
    explicit = event.get("X-ROOMD-ATTENDEES")
    if explicit is not None:
        try:
            return int(str(explicit))
        except ValueError:
            pass
    listed = event.get("ATTENDEE")
    if listed is None:
        return None
    return len(listed) if isinstance(listed, list) else 1


def parse_ical(
    data: bytes, room: str, source: str, start: float, end: float, limit: int = MAX_BOOKINGS
) -> Parsed:
    """Events overlapping [start, end), recurrences expanded in start order and no further
    than `limit` occurrences (an RRULE:FREQ=SECONDLY would otherwise make 86,400 a day).
    BookingError when unusable."""
    try:
        calendar = icalendar.Calendar.from_ical(data)
    except Exception as exc:  # icalendar raises ValueError, IndexError, KeyError, …
        raise BookingError(f"not an iCalendar file: {type(exc).__name__}: {exc}") from None
    if not isinstance(calendar, icalendar.Calendar):
        raise BookingError("not an iCalendar file: no VCALENDAR")
    try:
        ignored = _drop_unbounded_series(calendar)
    except Exception as exc:  # a malformed RRULE value
        raise BookingError(f"cannot expand the calendar: {type(exc).__name__}: {exc}") from None
    try:
        events: list[Any] = []
        dropped = 0
        # `after` yields in start order, expanding lazily: the cap bounds the work, not just
        # the result.
        for event in recurring_ical_events.of(calendar).after(datetime.fromtimestamp(start, UTC)):
            begin_prop = event.get("DTSTART")
            if begin_prop is not None and _epoch(begin_prop.dt) >= end:
                break
            if len(events) >= limit:
                dropped = 1
                break
            events.append(event)
    except BookingError:
        raise
    except Exception as exc:  # the library raises its own types for bad RRULEs and dates
        raise BookingError(f"cannot expand the calendar: {type(exc).__name__}: {exc}") from None
    # A moved occurrence (RECURRENCE-ID) may omit organiser, class and attendees: its series'
    # master event has them.
    masters: dict[str, Any] = {}
    for component in calendar.walk("VEVENT"):
        if component.get("RECURRENCE-ID") is None and component.get("UID") is not None:
            masters[str(component.get("UID"))] = component
    out: list[Booking] = []
    for event in events:
        if str(event.get("STATUS", "")).upper() == "CANCELLED":
            continue
        uid = str(event.get("UID") or "")
        if not uid:
            raise BookingError("an event has no UID")
        master = masters.get(uid, event)
        begin = _epoch(event.get("DTSTART").dt)
        finish_prop = event.get("DTEND")
        if finish_prop is not None:
            finish = _epoch(finish_prop.dt)
        elif event.get("DURATION") is not None:
            finish = begin + event.get("DURATION").dt.total_seconds()
        else:
            finish = begin + 3600.0
        if finish <= begin:
            raise BookingError(f"event {uid}: ends before it starts")
        title = str(event.get("SUMMARY") or master.get("SUMMARY") or "")
        # An occurrence is named by its original start (RECURRENCE-ID), so a moved one keeps
        # its id and the checks already done for it.
        rid = event.get("RECURRENCE-ID")
        if master.get("RRULE") is not None or master.get("RDATE") is not None:
            occurrence = f"{uid}@{_iso(_epoch(rid.dt) if rid is not None else begin)}"
        else:
            occurrence = uid
        out.append(
            Booking(
                id=occurrence,
                room=room,
                start=begin,
                end=finish,
                title=title,
                organiser=_organiser(event) or _organiser(master),
                attendees=_attendees(event)
                if _attendees(event) is not None
                else _attendees(master),
                cls=_class_of(event)
                if event.get("CATEGORIES") or event.get("X-ROOMD-CLASS")
                else _class_of(master),
                source=source,
            )
        )
    return Parsed(sorted(out, key=lambda b: b.start), dropped, ignored)


class _PushedBooking(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1)
    start: datetime
    end: datetime
    title: str = ""
    organiser: str = ""
    attendees: int | None = Field(None, ge=0)
    cls: BookingClass = Field("small", alias="class")

    @field_validator("start", "end")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("needs a time zone (e.g. a trailing Z)")
        return value


def parse_bookings_message(payload: bytes, room: str, limit: int = MAX_BOOKINGS) -> Parsed:
    """The retained JSON list on `{prefix}/{site}/{room}/bookings`. An empty payload: none."""
    if not payload.strip():
        return Parsed([])
    try:
        data = load_json(payload, max_bytes=BOOKINGS_MAX_BYTES)
    except InputRejected as exc:
        raise BookingError(str(exc)) from None
    if not isinstance(data, list):
        raise BookingError("expected a JSON list of bookings")
    out = []
    for i, item in enumerate(itertools.islice(data, limit)):
        try:
            b = _PushedBooking.model_validate(item)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "item"
            raise BookingError(f"[{i}].{where}: {first['msg']}") from None
        if b.end <= b.start:
            raise BookingError(f"[{i}]: end is not after start")
        out.append(
            Booking(
                b.id,
                room,
                b.start.timestamp(),
                b.end.timestamp(),
                b.title,
                b.organiser,
                b.attendees,
                b.cls,
                "mqtt",
            )
        )
    return Parsed(sorted(out, key=lambda b: b.start), max(0, len(data) - limit))


MAX_CALENDAR_BYTES = 8 * 1024 * 1024


def _fetch(source: str, timeout: float) -> bytes:
    if source.startswith(("http://", "https://")):
        request = urllib.request.Request(source, headers={"User-Agent": "roomd"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data: bytes = response.read(MAX_CALENDAR_BYTES + 1)
    else:
        with open(source, "rb") as f:
            data = f.read(MAX_CALENDAR_BYTES + 1)
    if len(data) > MAX_CALENDAR_BYTES:
        raise BookingError(f"larger than {MAX_CALENDAR_BYTES // (1024 * 1024)} MiB")
    return data


def read_calendar(
    source: str, room: str, start: float, end: float, limit: int, timeout: float
) -> Parsed:
    """Fetch and expand one source. Runs in the calendar worker process, so every failure is
    a BookingError (it crosses the process boundary as a message)."""
    try:
        return parse_ical(_fetch(source, timeout), room, source, start, end, limit)
    except BookingError:
        raise
    except urllib.error.HTTPError as exc:
        raise BookingError(f"HTTP {exc.code} {exc.reason}") from None
    except OSError as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or exc
        raise BookingError(f"cannot read: {reason}") from None


class CalendarWorker:
    """Calendars are other people's files, expanded by libraries that walk every occurrence
    from DTSTART: a DAILY rule from year 26 took 304 s in bench/fuzz_parsers.py. They are read
    in one separate process, one at a time, each with a time budget; a source that runs over is
    reported and its process killed, and the next read starts a fresh one. A thread could not
    be stopped, and it would hold the GIL the event loop needs."""

    def __init__(self, budget: float = 20.0) -> None:
        self.budget = budget
        self._pool: ProcessPoolExecutor | None = None
        self._lock = asyncio.Lock()

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: the daemon has threads (paho's connect, to_thread) a fork copies
            # mid-lock.
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    async def read(
        self, source: str, room: str, start: float, end: float, limit: int, timeout: float
    ) -> Parsed:
        async with self._lock:  # one at a time: each budget counts only its own work
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(
                self._executor(), read_calendar, source, room, start, end, limit, timeout
            )
            try:
                async with asyncio.timeout(self.budget):
                    return await future
            except TimeoutError:
                self.close()
                raise BookingError(
                    f"took longer than {self.budget:g} s to read and expand; left out"
                ) from None
            except BrokenProcessPool:
                self.close()
                raise BookingError("the calendar worker process died reading it") from None

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # The executor has no way to stop a running call: end its process.
        for process in list(getattr(pool, "_processes", {}).values()):
            with contextlib.suppress(Exception):
                process.kill()
        pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class RoomBookings:
    """One room's bookings from all its sources; each source keeps its last good list."""

    room: str
    sources: tuple[str, ...] = ()
    by_source: dict[str, list[Booking]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # source → reason
    pushed: bool = False  # a booking system has written the MQTT topic

    @property
    def known(self) -> bool:
        """Does this room have bookings at all (else it counts as always in use)?"""
        return bool(self.sources) or self.pushed

    # The merged list, and the lists it was merged from (held, so compared by content: an id
    # could be reused): the planner asks several times a second per room; the lists change
    # when a calendar is fetched or a booking system pushes.
    _merged: tuple[tuple[tuple[str, list[Booking], int], ...], list[Booking]] = field(
        default_factory=lambda: ((), []), repr=False, compare=False
    )

    def all(self) -> list[Booking]:
        if not self.by_source:
            return []
        key = tuple((source, got, len(got)) for source, got in self.by_source.items())
        if self._merged[0] != key:
            merged: dict[str, Booking] = {}
            for bookings in self.by_source.values():
                for b in bookings:
                    merged.setdefault(b.id, b)
            self._merged = (key, sorted(merged.values(), key=lambda b: b.start))
        return list(self._merged[1])

    async def refresh(
        self,
        worker: CalendarWorker,
        now: float,
        horizon: float,
        limit: int = MAX_BOOKINGS,
        timeout: float = 10.0,
    ) -> None:
        """Re-read every calendar source; [now − 1 day, now + horizon] is expanded."""
        for source in self.sources:
            try:
                parsed = await worker.read(
                    source, self.room, now - 86400, now + horizon, limit, timeout
                )
                self.by_source[source] = parsed.bookings
                self._note(source, parsed.problem(limit), source)
            except BookingError as exc:
                self.errors[source] = f"{source}: {exc}"

    def _note(self, source: str, problem: str | None, label: str) -> None:
        if problem:
            self.errors[source] = f"{label}: {problem}"
        else:
            self.errors.pop(source, None)

    def push(self, payload: bytes, limit: int = MAX_BOOKINGS) -> None:
        self.pushed_result(parse_push(payload, self.room, limit), limit)

    def pushed_result(self, parsed: Parsed | BookingError, limit: int) -> None:
        if isinstance(parsed, BookingError):
            self.errors["mqtt"] = f"bookings message: {parsed}"
        else:
            self.by_source["mqtt"] = parsed.bookings
            self._note("mqtt", parsed.problem(limit), "bookings message")
        self.pushed = True

    def current(self, now: float) -> Booking | None:
        for b in self.all():
            if b.start <= now < b.end:
                return b
        return None

    def next_after(self, now: float) -> Booking | None:
        for b in self.all():
            if b.start > now:
                return b
        return None


def parse_push(payload: bytes, room: str, limit: int) -> Parsed | BookingError:
    try:
        return parse_bookings_message(payload, room, limit)
    except BookingError as exc:
        return exc
