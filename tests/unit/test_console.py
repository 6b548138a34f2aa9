"""The console's parts without a browser: logins and sessions on a fake clock, the guessing
brake, room states and groups, incidents and their CSV, and the Chinese catalog."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from roomd.console import views
from roomd.console.auth import FAILURES_ALLOWED, Gate, hash_password
from roomd.daemon.checks import render_html, render_text
from roomd.daemon.config import ConsoleConfig
from roomd.daemon.model import Alert, Transition
from roomd.daemon.store import Store
from roomd.drivers.base import ArgSpec, CommandError
from roomd.i18n import LOCALE_DIR, translations

ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def gate(tmp_path: Path, clock: FakeClock, **kw: Any) -> Gate:
    token = tmp_path / "token"
    token.write_text("kiosk-token-abcdefghijklmnop\n")
    config = ConsoleConfig.model_validate(
        {
            "enabled": True,
            "users": [
                {"name": "ana", "role": "technician", "password_hash": hash_password("s3cret!")},
                {"name": "kiosk", "token_file": str(token)},
            ],
            **kw,
        }
    )
    return Gate(config, clock)


async def test_password_and_token_logins(tmp_path: Path) -> None:
    g = gate(tmp_path, FakeClock())
    ana = await g.login("ana", "s3cret!", "127.0.0.1")
    assert ana is not None and ana.role == "technician"
    assert await g.login("ana", "wrong", "127.0.0.1") is None
    assert await g.login("nobody", "s3cret!", "127.0.0.1") is None
    kiosk = await g.login("kiosk", "kiosk-token-abcdefghijklmnop", "127.0.0.1")
    assert kiosk is not None and kiosk.role == "viewer"
    assert g.bearer("kiosk-token-abcdefghijklmnop") is kiosk
    assert g.bearer("kiosk-token") is None


async def test_sessions_expire_when_idle_and_after_their_maximum(tmp_path: Path) -> None:
    clock = FakeClock()
    g = gate(tmp_path, clock, session_idle="10m", session_max="1h")
    account = await g.login("ana", "s3cret!", "127.0.0.1")
    assert account is not None
    s = g.open(account)
    clock.t += 9 * 60
    assert g.session(s.token) is s  # used: the idle timer starts again
    clock.t += 9 * 60
    assert g.session(s.token) is s
    clock.t += 11 * 60
    assert g.session(s.token) is None  # idle too long
    s2 = g.open(account)
    for _ in range(7):  # kept busy, still ends at the maximum
        clock.t += 9 * 60
        alive = g.session(s2.token)
    assert alive is None
    assert g.session("not-a-session") is None
    assert not g.csrf_ok(s2, None) and not g.csrf_ok(s2, "x") and g.csrf_ok(s2, s2.csrf)


async def test_guessing_is_braked_per_name_and_per_address(tmp_path: Path) -> None:
    clock = FakeClock()
    g = gate(tmp_path, clock)
    for _ in range(FAILURES_ALLOWED):
        assert await g.login("ana", "guess", "127.0.0.9") is None
    # Even the right password is refused now, from any address (per name) ...
    assert await g.login("ana", "s3cret!", "127.0.0.2") is None
    # ... and that address tries no other name.
    assert await g.login("kiosk", "kiosk-token-abcdefghijklmnop", "127.0.0.9") is None
    clock.t += 301
    assert await g.login("ana", "s3cret!", "127.0.0.2") is not None


def test_console_config_is_validated() -> None:
    with pytest.raises(ValueError, match="at least one user"):
        ConsoleConfig.model_validate({"enabled": True})
    with pytest.raises(ValueError, match="needs password_hash"):
        ConsoleConfig.model_validate({"users": [{"name": "x"}]})
    with pytest.raises(ValueError, match="argon2"):
        ConsoleConfig.model_validate({"users": [{"name": "x", "password_hash": "plain"}]})
    assert ConsoleConfig().host == "127.0.0.1"  # binds loopback unless told


def _alert(severity: str, metric: str = "co2_ppm", state: str = "active") -> Alert:
    return Alert(
        id=f"r1.d.{metric}.max",
        room="r1",
        device="d",
        metric=metric,
        rule="max",
        limit=1000,
        value=1200,
        unit="ppm",
        severity=severity,  # type: ignore[arg-type]
        state=state,  # type: ignore[arg-type]
        since="2026-11-30T10:00:00.000Z",
        ts="2026-11-30T10:00:00.000Z",
        message="CO2 1200 ppm above 1000 ppm",
    )


def test_room_states() -> None:
    up, down, waiting = (SimpleNamespace(online=v) for v in (True, False, None))
    assert views.room_status([up, up], []) == "ready"
    assert views.room_status([up, down], []) == "degraded"
    assert views.room_status([up], [_alert("III")]) == "degraded"
    assert views.room_status([up], [_alert("II")]) == "not_ready"
    assert views.room_status([down, down], [_alert("II")]) == "offline"
    assert views.room_status([waiting], []) == "waiting"


def test_room_groups_from_names_or_config() -> None:
    def room(name: str, group: str | None = None) -> Any:
        return SimpleNamespace(id="x", config=SimpleNamespace(name=name, group=group))

    def label(b: str, f: int) -> str:
        return f"{b}|{f}"

    assert views.room_group(room("City Hall 301"), label) == "City Hall|3"
    assert views.room_group(room("市政厅1205会议室"), label) == "市政厅|12"
    assert views.room_group(room("Boardroom"), label) == ""
    assert views.room_group(room("City Hall 301", "Annex"), label) == "Annex"
    zh = translations("zh-CN").gettext("%(building)s · floor %(floor)s")
    assert zh % {"building": "市政厅", "floor": 3} == "市政厅 · 3层"


def test_form_arguments_are_checked_against_the_spec() -> None:
    assert ArgSpec("state", ("on", "off")).parse("on") == "on"
    with pytest.raises(CommandError, match="one of on, off"):
        ArgSpec("state", ("on", "off")).parse("maybe")
    db = ArgSpec("db", min=-90, max=10)
    assert db.parse("-12.5") == -12.5 and db.parse("3") == 3
    for bad in ("11", "nan", "inf", "x", ""):
        with pytest.raises(CommandError, match="db: a number"):
            db.parse(bad)
    assert ArgSpec("register", fixed="setpoint_c").parse("anything") == "setpoint_c"


def test_incidents_record_time_to_acknowledge_and_to_clear(tmp_path: Path) -> None:
    store = Store(tmp_path)
    alert = _alert("II")
    store.commit([Transition("raised", alert)], [])
    acked = Alert.from_json({**alert.to_json(), "state": "acknowledged"})
    acked.ts, acked.extra["acknowledged_by"] = "2026-11-30T10:00:42.500Z", "ana@console"
    store.commit([Transition("acknowledged", acked)], [])
    escalated = Alert.from_json({**acked.to_json(), "escalations": 2})
    store.commit([Transition("escalated", escalated)], [])
    cleared = Alert.from_json({**alert.to_json(), "state": "cleared"})
    cleared.ts = "2026-11-30T10:04:00.000Z"
    store.commit([Transition("cleared", cleared, "back within limits")], [])
    [row] = store.incidents()
    assert row.to_ack == pytest.approx(42.5) and row.to_clear == pytest.approx(240.0)
    assert row.acked_by == "ana@console" and row.escalations == 2
    assert row.reason == "back within limits"
    # A formula in device text is never run by a spreadsheet.
    evil = Alert.from_json({**alert.to_json(), "id": "r1.d.x.max", "message": "=HYPERLINK(1)"})
    evil.since = "2026-11-30T11:00:00.000Z"
    store.commit([Transition("raised", evil)], [])
    text = views.incidents_csv(store.incidents()).decode("utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0]["message"] == "'=HYPERLINK(1)" and rows[0]["time_to_clear_s"] == ""
    assert rows[1]["time_to_acknowledge_s"] == "42.5"
    store.close()


def test_check_report_in_chinese_keeps_the_signature_block() -> None:
    report = {
        "room": "r301",
        "room_name": "市政厅 301",
        "level": 1,
        "level_name": "L1",
        "passed": False,
        "ts": "2026-11-30T08:00:00Z",
        "duration_s": 3.0,
        "items": [
            {
                "passed": False,
                "device": "proj",
                "item": "power",
                "expected": "on",
                "measured": "off",
                "duration_s": 1.0,
            }
        ],
    }
    zh = render_html(report, "zh-CN")
    assert "会前检查" in zh and "未就绪" in zh and "检查人" in zh and "签字" in zh
    assert "不合格" in zh and "无预订（临时检查）" in zh
    text = render_text(report, "zh-CN")
    assert "会前检查: 市政厅 301 (r301)" in text and "结论:  未就绪" in text
    assert "检查人: ____" in text and "不合格" in text
    assert "Result:  NOT READY" in render_text(report)
    en = render_html(report)
    assert "Pre-meeting check" in en and "Signature" in en and "NOT READY" in en


def test_every_message_has_a_chinese_translation() -> None:
    """pybabel's own extraction over the code and the templates, against the zh_CN catalog."""
    with (LOCALE_DIR / "zh_CN" / "LC_MESSAGES" / "roomd.po").open("rb") as f:
        catalog = read_po(f)
    translated = {
        m.id if isinstance(m.id, str) else m.id[0]
        for m in catalog
        if m.id and (all(m.string) if isinstance(m.string, tuple) else m.string)
    }
    method_map = [
        ("roomd/**.py", "python"),
        ("roomd/console/templates/**.html", "jinja2"),
        ("roomd/profiles/*.yaml", "roomd.i18n:extract_profile_labels"),
        ("dashboards/grafana/*.json", "roomd.i18n:extract_dashboard_texts"),
    ]
    options = {"roomd/console/templates/**.html": {"extensions": "jinja2.ext.i18n"}}
    found = {
        msg[2] if isinstance(msg[2], str) else msg[2][0]
        for msg in extract_from_dir(str(ROOT), method_map, options)
    }
    assert len(found) > 200 and "Projector lamp" in found  # a profile label
    assert "Rooms: ready?" in found  # a dashboard's panel
    missing = sorted(found - translated)
    assert not missing, f"no zh-CN translation for: {missing}"


def test_chinese_dashboards_are_current_and_chinese() -> None:
    """dashboards/grafana/zh-CN/ is written from the English boards through the catalog."""
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "translate-dashboards"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    fleet = json.loads((ROOT / "dashboards/grafana/zh-CN/fleet.json").read_text())
    english = json.loads((ROOT / "dashboards/grafana/fleet.json").read_text())
    assert fleet["title"] == "roomd — 全部会议室" and fleet["uid"] == "roomd-fleet-zh"
    assert fleet["panels"][0]["title"] == "各会议室是否就绪"
    mapping = fleet["panels"][0]["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert mapping["2"]["text"] == "未就绪"
    assert [p["targets"] for p in fleet["panels"]] == [p["targets"] for p in english["panels"]]
