"""Parsers of outside input under hypothesis: each raises only its declared error type, and
each input costs bounded time (hypothesis' deadline). The wire parsers (PJLink, OSC, Modbus
TCP/RTU, NFC framings, RTP) have theirs beside their unit tests; 10^5-input runs of all of
them are `bench/fuzz_parsers.py` (docs/reliability.md)."""

from __future__ import annotations

import contextlib
import json
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roomd.daemon.bookings import BookingError, parse_bookings_message, parse_ical
from roomd.daemon.config import ConfigError, load_config
from roomd.daemon.inbound import InputRejected, parse_command

DAY = 1795392000.0  # 2026-11-23T00:00:00Z
FAST = settings(max_examples=150, deadline=timedelta(milliseconds=500))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)

ICAL_LINES = st.sampled_from(
    [
        "UID:a", "UID:b", "DTSTART:20261123T090000Z", "DTSTART;VALUE=DATE:20261123",
        "DTSTART:20261123T090000", "DTEND:20261123T100000Z", "DTEND:20261122T100000Z",
        "DURATION:PT1H", "DURATION:-PT1H", "DURATION:P1000000D", "RRULE:FREQ=DAILY",
        "RRULE:FREQ=SECONDLY", "RRULE:FREQ=MINUTELY;COUNT=100000", "RRULE:FREQ=WEEKLY;BYDAY=MO",
        "RRULE:FREQ=YEARLY;UNTIL=19700101T000000Z", "RRULE:FREQ=NEVER", "EXDATE:20261124T090000Z",
        "RECURRENCE-ID:20261124T090000Z", "STATUS:CANCELLED", "SUMMARY:x", "X-ROOMD-CLASS:large",
        "X-ROOMD-ATTENDEES:lots", "CATEGORIES:important", "ORGANIZER;CN=A:mailto:a@b",
        "ATTENDEE:mailto:c@d", "BEGIN:VEVENT", "END:VEVENT", "BEGIN:VTIMEZONE", "garbage",
    ]
)  # fmt: skip


@FAST
@given(st.lists(st.lists(ICAL_LINES, max_size=8), max_size=4), st.binary(max_size=40))
def test_ical_raises_only_booking_errors(events: list[list[str]], junk: bytes) -> None:
    body = "".join("BEGIN:VEVENT\r\n" + "\r\n".join(e) + "\r\nEND:VEVENT\r\n" for e in events)
    data = b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\n" + body.encode() + junk + b"END:VCALENDAR\r\n"
    try:
        parsed = parse_ical(data, "r1", "f.ics", DAY, DAY + 2 * 86400, limit=200)
    except BookingError:
        return
    assert len(parsed.bookings) <= 200


@FAST
@given(st.lists(json_values, max_size=6) | json_values | st.binary(max_size=200))
def test_bookings_json_raises_only_booking_errors(value: object) -> None:
    payload = value if isinstance(value, bytes) else json.dumps(value).encode()
    with contextlib.suppress(BookingError):
        parse_bookings_message(payload, "r1", limit=50)


@FAST
@given(json_values | st.binary(max_size=200))
def test_mqtt_commands_raise_only_input_rejected(value: object) -> None:
    payload = value if isinstance(value, bytes) else json.dumps(value).encode()
    try:
        command = parse_command(payload)
    except InputRejected:
        return
    assert isinstance(command.name, str) and isinstance(command.args, dict)


@settings(
    max_examples=100,
    deadline=timedelta(milliseconds=1000),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_config_raises_only_config_errors(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "roomd.yaml"
    path.write_bytes(b"site: hq\nrooms:\n  - id: r1\n" + raw)
    with contextlib.suppress(ConfigError):
        load_config(path)
