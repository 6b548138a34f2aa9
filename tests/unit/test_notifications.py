"""The notification planner and deliverer on a fake clock, without a network: quiet hours,
the digest, routes' matching, the rate limit's summary, backoff and giving up."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from roomd.daemon.clock import FakeClock, iso
from roomd.daemon.config import NotificationsConfig
from roomd.daemon.model import Alert, Transition
from roomd.daemon.notifications import NotificationPlanner
from roomd.daemon.notify_text import describe
from roomd.daemon.sinks.notify import Delivery
from roomd.daemon.store import Notification, Store

# A Monday 10:00 local time, whatever the machine's zone.
START = time.mktime((2026, 11, 30, 10, 0, 0, 0, 0, -1))


def notifications(**extra: Any) -> NotificationsConfig:
    return NotificationsConfig.model_validate(
        {
            "targets": {
                "a": {"url": "json://127.0.0.1:9/a"},
                "b": {"url": "json://127.0.0.1:9/b", "language": "zh-CN"},
            },
            **extra,
        }
    )


def alert(severity: str = "III", metric: str = "co2_ppm", at: float = START) -> Alert:
    return Alert(
        id=f"r301.env.{metric}.max",
        room="r301",
        device="env",
        metric=metric,
        rule="max",
        limit=1000,
        value=1250,
        unit="ppm",
        severity=severity,  # type: ignore[arg-type]
        state="active",
        since=iso(at),
        ts=iso(at),
        message="CO2 1250 ppm above 1000 ppm",
    )


def site(tmp_path: Path, clock: FakeClock, *alerts: Alert) -> Any:
    room = SimpleNamespace(
        id="r301",
        config=SimpleNamespace(name="市政厅 301", group="City Hall 3F"),
        thresholds={"co2_ppm": SimpleNamespace(label="CO2")},
    )
    return SimpleNamespace(
        clock=clock,
        store=Store(tmp_path),
        book=SimpleNamespace(active={a.id: a for a in alerts}, meeting_rooms=set()),
        pollers={("r301", "env"): SimpleNamespace(driver=SimpleNamespace(kind="modbus"))},
        config=SimpleNamespace(
            site="hq",
            language="en",
            room=lambda rid: room if rid == "r301" else None,
            label=lambda room_id, metric: "CO2" if metric == "co2_ppm" else None,
        ),
    )


def test_chinese_descriptions_are_built_from_the_parts() -> None:
    a = alert()
    assert describe(a, "CO2", "en") == "CO2 1250 ppm above 1000 ppm"
    assert describe(a, "CO2", "zh-CN") == "二氧化碳 1250 ppm，高于 1000 ppm"
    low = Alert.from_json({**a.to_json(), "rule": "min", "metric": "illuminance_lux"})
    low.value, low.limit, low.unit = 320.5, 500, "lx"
    assert describe(low, "Illuminance", "zh-CN") == "照度 320.5 lx，低于 500 lx"


def test_routes_match_grade_room_group_kind_and_metric(tmp_path: Path) -> None:
    clock = FakeClock(START)
    a = alert("III")
    s = site(tmp_path, clock, a)
    route = {"name": "r", "tiers": [{"targets": ["a"]}]}

    def decided(match: dict[str, Any]) -> int:
        cfg = notifications(routes=[{**route, "match": match}])
        return NotificationPlanner(s, cfg).tick()

    assert decided({"grades": ["I", "II"]}) == 0
    assert decided({"grades": ["III"], "rooms": ["r2*"]}) == 0
    assert decided({"grades": ["III"], "kinds": ["pjlink"]}) == 0
    assert decided({"grades": ["III"], "metrics": ["temp*"]}) == 0
    assert decided({"grades": ["III"], "in_meeting": "yes"}) == 0
    assert decided({"grades": ["III"], "rooms": ["City Hall *"], "metrics": ["co2*"]}) == 1
    assert decided({"grades": ["III"]}) == 0  # the same decision is not made twice


def test_quiet_hours_hold_minor_grades_until_they_end(tmp_path: Path) -> None:
    night = time.mktime((2026, 11, 30, 23, 30, 0, 0, 0, -1))
    clock = FakeClock(night)
    minor, major = alert("III", at=night), alert("II", "temperature_c", at=night)
    s = site(tmp_path, clock, minor, major)
    cfg = notifications(
        routes=[
            {
                "name": "r",
                "match": {"grades": ["II", "III"]},
                "tiers": [{"targets": ["a"]}],
                "quiet_hours": {"start": "22:00", "end": "07:00", "grades": ["I", "II"]},
            }
        ]
    )
    planner = NotificationPlanner(s, cfg)
    assert planner.tick() == 1  # grade II goes out at night
    clock.advance(7 * 3600)  # 06:30: still quiet
    assert planner.tick() == 0
    clock.advance(1800)  # 07:00: the grade III alert, still active, goes out now
    assert planner.tick() == 1
    assert {n["alert"] for n in s.store.notifications_log()} == {minor.id, major.id}


def test_the_digest_goes_once_a_day_in_each_targets_language(tmp_path: Path) -> None:
    clock = FakeClock(START - 3 * 3600)  # 07:00
    s = site(tmp_path, clock)
    minor = alert("IV", "humidity_pct", at=START - 5 * 3600)
    s.store.commit([Transition("raised", minor)], [])
    planner = NotificationPlanner(s, notifications(digest={"at": "08:30", "targets": ["a", "b"]}))
    assert planner.tick() == 0
    clock.advance(1.5 * 3600)  # 08:30
    assert planner.tick() == 2
    clock.advance(3600)
    assert planner.tick() == 0  # once a day
    rows = s.store.due_notifications(clock.time())
    by_target = {r.target: r for r in rows}
    assert by_target["a"].title == "hq: 1 grade IV alerts in the last 24 hours"
    assert by_target["b"].title == "hq：过去 24 小时共 1 条 IV 级告警"
    assert "r301" in by_target["a"].body and "open" in by_target["a"].body


async def test_rate_limit_sends_the_rest_as_one_summary_and_backoff_gives_up(
    tmp_path: Path,
) -> None:
    clock = FakeClock(START)
    store = Store(tmp_path)
    cfg = notifications(rate_limit={"messages": 3, "per": "1h"})
    failing: list[tuple[str, str | None]] = []
    delivery = Delivery(
        cfg, store, clock.time, "en", on_failing=lambda r, e: failing.append((r, e))
    )
    sent: list[tuple[str, str]] = []
    outcome: dict[str, str | None] = {"a": None}

    async def fake_send(target: str, title: str, body: str) -> str | None:
        error = outcome.get(target)
        if error is None:
            sent.append((target, title))
        return error

    delivery._send = fake_send  # type: ignore[method-assign]
    store.queue_notifications(
        Notification(f"r301.d{i}.m.max", iso(START), "r", 0, "raised", "a", f"alert {i}", "", START)
        for i in range(6)
    )
    assert await delivery.deliver_due() == 3
    assert [t for _, t in sent] == ["alert 0", "alert 1", "4 more alerts (rate limit reached)"]
    assert store.notifications_pending() == 0

    # Over the limit for the hour: the next one waits for the window.
    store.queue_notifications(
        [Notification("r301.x.m.max", iso(START), "r", 0, "raised", "a", "late", "", START)]
    )
    assert await delivery.deliver_due() == 0
    clock.advance(3601)
    assert await delivery.deliver_due() == 1 and sent[-1] == ("a", "late")

    # A failing target: retried with backoff, an alert after 3 attempts, given up after a day.
    outcome["a"] = "connection refused"
    store.queue_notifications(
        [Notification("r302.x.m.max", iso(START), "r", 0, "raised", "a", "t", "", clock.time())]
    )
    for _ in range(3):
        await delivery.deliver_due()
        clock.advance(400)
    assert failing == [("r302", "a: connection refused")]
    clock.advance(86400)
    await delivery.deliver_due()
    [row] = [r for r in store.notifications_log() if r["alert"] == "r302.x.m.max"]
    assert row["state"] == "failed" and row["attempts"] == 4
    outcome["a"] = None
    store.queue_notifications(
        [Notification("r302.y.m.max", iso(START), "r", 0, "raised", "a", "ok", "", clock.time())]
    )
    await delivery.deliver_due()
    assert failing[-1] == ("r302", None)  # delivered again: the alert clears


def test_notification_config_is_checked() -> None:
    with pytest.raises(ValueError, match="unknown targets"):
        notifications(routes=[{"name": "r", "tiers": [{"targets": ["nobody"]}]}])
    with pytest.raises(ValueError, match="later one after another"):
        notifications(
            routes=[
                {
                    "name": "r",
                    "tiers": [{"after": "5m", "targets": ["a"]}, {"after": "1m", "targets": ["a"]}],
                }
            ]
        )
    with pytest.raises(ValueError, match="url or url_file"):
        NotificationsConfig.model_validate({"targets": {"a": {}}})
