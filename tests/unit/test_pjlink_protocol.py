"""PJLink framing against the specification's own examples."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomd.drivers import pjlink_protocol as pj


def test_spec_md5_vector() -> None:
    # PJLink specification, authentication example.
    assert pj.digest("498e4a67", "JBMIAProjectorLink") == "5d8409bc1c3fa39749434aa3a5c38682"


def test_encode_spec_examples() -> None:
    assert pj.encode("POWR", "1") == b"%1POWR 1\r"
    assert pj.encode("POWR") == b"%1POWR ?\r"
    assert pj.encode("INPT", "31") == b"%1INPT 31\r"
    assert pj.encode("IRES", "?", 2) == b"%2IRES ?\r"
    with pytest.raises(ValueError, match="4 upper-case"):
        pj.encode("powr")
    with pytest.raises(ValueError, match="longer than 128"):
        pj.encode("NAME", "x" * 129)


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        (b"PJLINK 0\r", pj.Greeting(auth=False)),
        (b"PJLINK 1 498e4a67\r", pj.Greeting(auth=True, random="498e4a67")),
        (b"PJLINK ERRA\r", pj.AuthFailed()),
        (b"%1POWR=OK\r", pj.Reply(1, "POWR", "OK")),
        (b"%1POWR=0\r", pj.Reply(1, "POWR", "0")),
        (b"%1powr=0\r", pj.Reply(1, "POWR", "0")),  # lower-case replies
        (b"\x00%1ERST=000000\r\x00", pj.Reply(1, "ERST", "000000")),  # NUL padding
        (b"%1LAMP=1200 1 800 0\r", pj.Reply(1, "LAMP", "1200 1 800 0")),
        (b"%2LKUP=00:11:22:33:44:55\r", pj.Reply(2, "LKUP", "00:11:22:33:44:55")),
        (b"%1NAME=Room 301 Projector\r", pj.Reply(1, "NAME", "Room 301 Projector")),
        (b"%2ACKN=00:11:22:33:44:55\r", pj.Reply(2, "ACKN", "00:11:22:33:44:55")),
    ],
)
def test_parse_line(raw: bytes, parsed: pj.Line) -> None:
    assert pj.parse_line(raw) == parsed


def test_errors_are_distinct() -> None:
    for code in ("ERR1", "ERR2", "ERR3", "ERR4"):
        reply = pj.parse_line(f"%1LAMP={code}\r".encode())
        assert isinstance(reply, pj.Reply) and reply.error == code
    ok = pj.parse_line(b"%1POWR=OK\r")
    assert isinstance(ok, pj.Reply) and ok.ok and ok.error is None


def test_values() -> None:
    assert pj.parse_power("3") == "warming" and pj.parse_power("2") == "cooling"
    erst = pj.parse_erst("021000")
    assert erst["projector_error_fan"] == "ok" and erst["projector_error_lamp"] == "error"
    assert erst["projector_error_temperature"] == "warning"
    assert pj.parse_lamps("1200 1 800 0") == [(1200, True), (800, False)]
    assert pj.parse_class("1") == 1 and pj.parse_class("Class 1") == 1
    assert pj.parse_class("Version1") == 1 and pj.parse_class("2") == 2
    assert pj.parse_avmt("31") == "both" and pj.parse_avmt("30") == "off"
    assert pj.parse_resolution("1920x1080") == (1920, 1080)
    assert pj.parse_resolution("-") is None
    assert pj.valid_input("31") and pj.valid_input("6A") and not pj.valid_input("71")
    assert pj.parse_ackn(b"%2ACKN=00:11:22:33:44:55\r") == "00:11:22:33:44:55"
    for bad in (
        lambda: pj.parse_erst("0000"),
        lambda: pj.parse_lamps("12 1 8"),
        lambda: pj.parse_power("9"),
        lambda: pj.parse_resolution("big"),
    ):
        with pytest.raises(pj.ProtocolError):
            bad()


@given(st.binary(max_size=200))
def test_parser_only_raises_protocol_errors(raw: bytes) -> None:
    with contextlib.suppress(pj.ProtocolError):
        pj.parse_line(raw)
