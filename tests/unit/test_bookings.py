"""Bookings: iCalendar expansion (recurrences, exceptions, cancellations), pushed JSON, and
sources that fail without losing the last good bookings."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from roomd.daemon.bookings import (
    BookingError,
    CalendarWorker,
    RoomBookings,
    parse_bookings_message,
    parse_ical,
)

DAY = datetime(2026, 11, 23, tzinfo=UTC).timestamp()


def cal(*events: str) -> bytes:
    body = "".join(f"BEGIN:VEVENT\n{e.strip()}\nEND:VEVENT\n" for e in events)
    text = f"BEGIN:VCALENDAR\nVERSION:2.0\nPRODID:-//t//t//EN\n{body}END:VCALENDAR\n"
    return text.replace("\n", "\r\n").encode()


WEEKLY = """
UID:weekly
DTSTART:20261123T090000Z
DTEND:20261123T100000Z
RRULE:FREQ=WEEKLY;BYDAY=MO,WE;COUNT=6
EXDATE:20261125T090000Z
SUMMARY:Planning
ORGANIZER;CN=Ann Lee:mailto:ann@example.org
ATTENDEE:mailto:a@x
ATTENDEE:mailto:b@x
CATEGORIES:large
"""
MOVED = """
UID:weekly
RECURRENCE-ID:20261130T090000Z
DTSTART:20261130T140000Z
DTEND:20261130T153000Z
SUMMARY:Planning (afternoon)
"""


def test_recurrence_exdate_and_moved_occurrence() -> None:
    week = parse_ical(cal(WEEKLY, MOVED), "r301", "f.ics", DAY, DAY + 14 * 86400).bookings
    starts = [datetime.fromtimestamp(b.start, UTC).strftime("%a %d %H:%M") for b in week]
    assert starts == ["Mon 23 09:00", "Mon 30 14:00", "Wed 02 09:00"]  # 25th: EXDATE
    moved = week[1]
    assert moved.id == "weekly@2026-11-30T09:00:00Z"  # named by its original slot
    assert moved.title == "Planning (afternoon)" and moved.end - moved.start == 5400
    # what the exception leaves out comes from the series
    assert (moved.organiser, moved.attendees, moved.cls) == ("Ann Lee", 2, "large")
    assert week[0].id == "weekly@2026-11-23T09:00:00Z" and week[0].room == "r301"


def test_single_events_cancelled_duration_and_explicit_class() -> None:
    events = parse_ical(
        cal(
            "UID:a\nDTSTART:20261123T130000Z\nDURATION:PT90M\nSUMMARY:Board\n"
            "X-ROOMD-CLASS:important\nX-ROOMD-ATTENDEES:40",
            "UID:b\nDTSTART:20261123T150000Z\nDTEND:20261123T160000Z\nSTATUS:CANCELLED",
            "UID:c\nDTSTART:20261124T080000Z\nDTEND:20261124T083000Z",
        ),
        "r302",
        "f.ics",
        DAY,
        DAY + 86400,
    ).bookings
    assert [e.id for e in events] == ["a"]
    assert events[0].end - events[0].start == 5400
    assert (events[0].cls, events[0].attendees) == ("important", 40)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not a calendar", "not an iCalendar file"),
        (cal("DTSTART:20261123T090000Z\nDTEND:20261123T100000Z"), "no UID"),
        (cal("UID:x\nDTSTART:20261123T100000Z\nRRULE:FREQ=SOMETIMES"), "cannot expand"),
    ],
)
def test_unusable_calendars_say_why(data: bytes, reason: str) -> None:
    with pytest.raises(BookingError, match=reason):
        parse_ical(data, "r301", "f.ics", DAY, DAY + 86400)


def test_pushed_bookings_are_validated_with_the_offending_field() -> None:
    ok = parse_bookings_message(
        json.dumps(
            [
                {"id": "m2", "start": "2026-11-23T11:00:00Z", "end": "2026-11-23T12:00:00Z"},
                {"id": "m1", "start": "2026-11-23T09:00:00+01:00", "end": "2026-11-23T09:30:00Z",
                 "title": "Review", "organiser": "Ann", "attendees": 8, "class": "large"},
            ]
        ).encode(),
        "r301",
    ).bookings  # fmt: skip
    assert [b.id for b in ok] == ["m1", "m2"] and ok[0].cls == "large"
    assert parse_bookings_message(b"", "r301").bookings == []
    for payload, reason in [
        (b"{", "not JSON"),
        (b"{}", "JSON list"),
        (b'[{"id": "x", "start": "2026-11-23T09:00:00", "end": "2026-11-23T10:00:00Z"}]',
         "start: .*time zone"),
        (b'[{"id": "x", "start": "2026-11-23T10:00:00Z", "end": "2026-11-23T09:00:00Z"}]',
         "end is not after start"),
        (b'[{"id": "x", "start": "2026-11-23T09:00:00Z", "end": "2026-11-23T10:00:00Z",'
         b' "class": "huge"}]', r"\[0\]\.class"),
        (b"[" * 1000, "not JSON"),  # deep nesting: a precise error, never a RecursionError
        (b"[" * 40 + b"]" * 40, "nested deeper than 16"),
        (b"\xff\xfe[]", "not JSON"),
        (b"[" + b'"x",' * 400_000 + b'"x"]', "over the limit"),
    ]:  # fmt: skip
        with pytest.raises(BookingError, match=reason):
            parse_bookings_message(payload, "r301")


@pytest.fixture
def http_calendar(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    (tmp_path / "r301.ics").write_bytes(cal(WEEKLY))

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: object, **kw: object) -> None:
            super().__init__(*a, directory=str(tmp_path), **kw)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path
    server.shutdown()


async def test_sources_over_http_keep_the_last_good_bookings(
    http_calendar: tuple[str, Path],
) -> None:
    url, folder = http_calendar
    worker = CalendarWorker()
    try:
        rb = RoomBookings("r301", (f"{url}/r301.ics", str(folder / "local.ics")))
        (folder / "local.ics").write_bytes(
            cal("UID:local\nDTSTART:20261123T160000Z\nDURATION:PT1H")
        )
        await rb.refresh(worker, DAY, 14 * 86400)
        assert not rb.errors
        assert "local" in [b.id for b in rb.all()] and len(rb.all()) == 4
        # The web calendar breaks and the file disappears: errors name the source, bookings stay.
        (folder / "r301.ics").write_text("garbage")
        (folder / "local.ics").unlink()
        await rb.refresh(worker, DAY, 14 * 86400)
        assert "not an iCalendar file" in rb.errors[f"{url}/r301.ics"]
        assert "cannot read" in rb.errors[str(folder / "local.ics")]
        assert len(rb.all()) == 4
        missing = RoomBookings("r302", (f"{url}/nope.ics",))
        await missing.refresh(worker, DAY, 86400)
        assert "HTTP 404" in missing.errors[f"{url}/nope.ics"]
        assert rb.current(DAY + 9.5 * 3600) is not None and rb.current(DAY + 11 * 3600) is None
    finally:
        worker.close()


async def test_a_calendar_that_takes_too_long_is_cut_off_and_the_next_one_still_read(
    tmp_path: Path,
) -> None:
    """A DAILY rule from the year 26 walks 730,000 days before the window (304 s in the fuzz
    bench). The worker process is killed at the budget; the event loop never waited."""
    import time

    slow = tmp_path / "slow.ics"
    slow.write_bytes(cal("UID:old\nDTSTART:00260101T090000Z\nDURATION:PT1H\nRRULE:FREQ=DAILY"))
    good = tmp_path / "good.ics"
    good.write_bytes(cal("UID:ok\nDTSTART:20261123T090000Z\nDTEND:20261123T100000Z"))
    worker = CalendarWorker(budget=2.0)
    try:
        rb = RoomBookings("r301", (str(slow), str(good)))
        started = time.monotonic()
        await rb.refresh(worker, DAY, 86400)
        assert time.monotonic() - started < 10
        assert rb.errors[str(slow)].endswith("took longer than 2 s to read and expand; left out")
        assert [b.id for b in rb.all()] == ["ok"] and str(good) not in rb.errors
    finally:
        worker.close()


def test_a_secondly_rule_is_left_out_quickly_and_named() -> None:
    """A calendar someone else edits: RRULE:FREQ=SECONDLY would be 259,200 bookings over the
    window, and from a DTSTART in January dateutil walks 28 million steps (76 s) before the
    window starts. No meeting recurs like that: the series is left out and named."""
    import time

    data = cal(
        "UID:flood\nDTSTART:20260101T000000Z\nDURATION:PT1S\nRRULE:FREQ=SECONDLY",
        "UID:ok\nDTSTART:20261123T090000Z\nDTEND:20261123T100000Z",
    )
    started = time.process_time()
    parsed = parse_ical(data, "r301", "f.ics", DAY - 86400, DAY + 2 * 86400)
    assert time.process_time() - started < 2.0
    assert [b.id for b in parsed.bookings] == ["ok"]
    assert parsed.problem(2000) == "event flood: RRULE FREQ=SECONDLY is no meeting's; ignored"


def test_occurrences_are_capped_in_start_order_and_the_cap_is_named() -> None:
    data = cal("UID:hourly\nDTSTART:20261120T000000Z\nDURATION:PT30M\nRRULE:FREQ=HOURLY")
    parsed = parse_ical(data, "r301", "f.ics", DAY, DAY + 2 * 86400, limit=10)
    assert len(parsed.bookings) == 10 and parsed.dropped
    assert parsed.bookings[0].start == DAY and parsed.bookings[-1].start == DAY + 9 * 3600
    assert "more than 10 bookings; the first 10 are used" in (parsed.problem(10) or "")


def test_pushed_lists_are_capped_with_a_problem_named() -> None:
    items = [
        {"id": f"m{i}", "start": f"2026-11-23T{i % 24:02d}:00:00Z",
         "end": f"2026-11-23T{i % 24:02d}:30:00Z"}
        for i in range(30)
    ]  # fmt: skip
    parsed = parse_bookings_message(json.dumps(items).encode(), "r301", limit=10)
    assert len(parsed.bookings) == 10 and parsed.dropped == 20
    assert parsed.problem(10) == "more than 10 bookings; the first 10 are used, 20+ dropped"
