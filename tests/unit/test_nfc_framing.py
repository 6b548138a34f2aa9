from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from roomd.drivers.nfc_framing import (
    Deduplicator,
    LineParser,
    Rdm6300Parser,
    rdm6300_checksum,
    rdm6300_frame,
)


def test_rdm6300_checksum_and_frame() -> None:
    # Version 0x62, tag 0xE3086CED: 62 ^ E3 ^ 08 ^ 6C ^ ED = 0x08.
    assert rdm6300_checksum(bytes.fromhex("62E3086CED")) == 0x08
    assert rdm6300_frame("62E3086CED") == b"\x0262E3086CED08\x03"


def test_rdm6300_parser_split_repeats_and_corruption() -> None:
    p = Rdm6300Parser()
    frame = rdm6300_frame("62E3086CED")
    assert p.feed(frame[:5]) == []
    assert p.feed(frame[5:] + frame) == ["62E3086CED", "62E3086CED"]
    bad_sum = frame[:11] + b"FF" + frame[13:]
    assert p.feed(bad_sum) == [] and p.bad_frames == 1
    assert p.feed(b"noise" + rdm6300_frame("0100ABCDEF")) == ["0100ABCDEF"]
    assert p.bad_frames == 2
    assert p.feed(b"\x02ZZZZZZZZZZZZ\x03" + rdm6300_frame("0100ABCDEF")) == ["0100ABCDEF"]


def test_line_parser_hex_decimal_crlf() -> None:
    p = LineParser()
    assert p.feed(b"04A1B2C3D4\r\n0012345678\r") == ["04A1B2C3D4", "BC614E"]
    assert p.feed(b"04:A1:B2:C3\n") == ["04A1B2C3"]
    assert p.feed(b"not a card!\r") == [] and p.bad_frames == 1
    d = LineParser(fmt="decimal")
    assert d.feed(b"0012345678\n") == ["BC614E"]


def test_dedup_window() -> None:
    d = Deduplicator(window=2.0)
    assert d.fresh("A", 0.0) and not d.fresh("A", 1.0) and not d.fresh("A", 2.9)
    assert d.fresh("A", 5.0)  # released for 2 s, then tapped again
    assert d.fresh("B", 5.1)


@given(st.binary(max_size=400))
def test_parsers_survive_any_bytes(junk: bytes) -> None:
    r, line = Rdm6300Parser(), LineParser()
    for uid in r.feed(junk):
        assert len(uid) == 10
    for uid in line.feed(junk):
        assert uid.isalnum()


def test_attendance_forgets_a_rooms_previous_meeting() -> None:
    from roomd.daemon.attendance import Attendance

    att = Attendance(b"k" * 32)
    att.enter("r301", "r301-20261122")
    att.cards["r301-20261122"] = {"a"}
    att.latencies["r301-20261122"] = [0.001]
    att.enter("r302", "r302-20261122")
    att.cards["r302-20261122"] = {"b"}
    att.enter("r301", "r301-20261123")
    assert "r301-20261122" not in att.cards and "r301-20261122" not in att.latencies
    assert att.cards["r302-20261122"] == {"b"}
    assert att.card("04:a1:b2") == att.card("04A1B2")  # UIDs are normalized before hashing
