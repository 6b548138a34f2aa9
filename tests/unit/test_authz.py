"""Authorization decisions without a broker: rules, kinds, signatures, replays, open mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from roomd.daemon.authz import AuthorizationConfig, Authorizer, Principal, Refused, sign

TOPIC = "roomd/hq/r301/proj1/cmd"
POWER = {"command": "power", "args": {"state": "on"}, "id": "1"}


def authorizer(tmp_path: Path, now: float = 1000.0) -> Authorizer:
    key = tmp_path / "k"
    key.write_bytes(b"secret\n")
    config = AuthorizationConfig.model_validate(
        {
            "principals": {"crestron": {"key_file": str(key)}},
            "rules": [
                {"principals": ["ha", "crestron"], "rooms": ["r3*"], "devices": ["projector"],
                 "commands": ["power", "input"]},
                {"principals": ["ops"], "site_commands": ["ack"]},
            ],
            "bookings": ["bookings"],
        }
    )  # fmt: skip
    return Authorizer(config, own_user="roomd", wall=lambda: now)


def test_rules_match_principal_room_kind_and_command(tmp_path: Path) -> None:
    a = authorizer(tmp_path)
    ha = Principal.by_topic("ha")
    a.device_command(ha, "r301", "proj1", "pjlink", "power")
    a.device_command(ha, "r302", "proj2", "serial-projector", "input")  # kind: projector
    for room, driver, command in [("r401", "pjlink", "power"), ("r301", "x32", "mute"),
                                  ("r301", "pjlink", "mute")]:  # fmt: skip
        with pytest.raises(Refused, match="ha may not send"):
            a.device_command(ha, room, "d", driver, command)
    with pytest.raises(Refused, match="anonymous may not"):
        a.device_command(Principal.by_topic(None), "r301", "proj1", "pjlink", "power")
    a.site_command(Principal.by_topic("ops"), "ack")
    with pytest.raises(Refused, match="ops may not send the site command 'reload'"):
        a.site_command(Principal.by_topic("ops"), "reload")
    a.site_command(Principal.by_topic("roomd"), "reload")  # the daemon's own login
    a.bookings(Principal.by_topic("bookings"))
    with pytest.raises(Refused):
        a.bookings(Principal.by_topic("ha"))


def test_signatures_bind_topic_time_and_body_and_work_once(tmp_path: Path) -> None:
    a = authorizer(tmp_path)
    key = b"secret"
    signed = sign(key, TOPIC, POWER, "crestron", 1000)
    assert a.identify(TOPIC, None, signed) == Principal("crestron", "signature")
    with pytest.raises(Refused, match="already used"):
        a.identify(TOPIC, None, signed)
    cases = [
        ("roomd/hq/r301/proj2/cmd", sign(key, TOPIC, POWER, "crestron", 1001), "does not match"),
        (TOPIC, {**sign(key, TOPIC, POWER, "crestron", 1002), "id": "2"}, "does not match"),
        (TOPIC, sign(key, TOPIC, POWER, "crestron", 900), "too old"),
        (TOPIC, sign(b"other", TOPIC, POWER, "crestron", 1003), "does not match"),
        (TOPIC, sign(key, TOPIC, POWER, "ha", 1004), "no signing key for principal 'ha'"),
        (TOPIC, {**POWER, "auth": "x"}, "must be an object"),
    ]
    for topic, message, reason in cases:
        with pytest.raises(Refused, match=reason):
            a.identify(topic, None, message)
    with pytest.raises(Refused, match="signed as 'crestron' but sent by 'ha'"):
        a.identify(TOPIC, "ha", sign(key, TOPIC, POWER, "crestron", 1005))


def test_without_authorization_everything_is_obeyed(tmp_path: Path) -> None:
    a = Authorizer(None, own_user=None)
    who = a.identify(TOPIC, None, sign(b"k", TOPIC, POWER, "someone", 1))  # not refused
    assert who == Principal("anonymous", "none")
    a.device_command(who, "r301", "proj1", "pjlink", "power")
    a.site_command(who, "reload")
    a.bookings(who)
