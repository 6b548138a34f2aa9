from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from roomd.daemon.alerts import NO_QUIET_BAND, AlertBook
from roomd.daemon.clock import FakeClock
from roomd.daemon.profiles import Threshold, load_profile
from roomd.daemon.site import _AT_ONCE, _NUMBER, Site


def book_with(**thresholds: Threshold) -> tuple[AlertBook, FakeClock]:
    clock = FakeClock()
    book = AlertBook(clock)
    book.set_rules("r301", "env", thresholds)
    return book, clock


def test_hold_time_then_raise_once() -> None:
    book, clock = book_with(
        co2_ppm=Threshold(max=1000, hysteresis=50, hold=30, unit="ppm", label="CO2")
    )
    assert book.observe("r301", "env", {"co2_ppm": 1240}) == []
    clock.advance(29)
    assert book.observe("r301", "env", {"co2_ppm": 1240}) == []
    clock.advance(1)
    (t,) = book.observe("r301", "env", {"co2_ppm": 1240})
    assert t.kind == "raised"
    a = t.alert
    assert a.id == "r301.env.co2_ppm.max"
    assert (a.room, a.device, a.metric, a.rule, a.limit, a.value, a.unit) == (
        "r301",
        "env",
        "co2_ppm",
        "max",
        1000,
        1240,
        "ppm",
    )
    assert a.message == "CO2 1240 ppm above 1000 ppm"
    assert a.severity == "III" and a.state == "active" and a.since.endswith("Z")
    clock.advance(60)
    assert book.observe("r301", "env", {"co2_ppm": 1300}) == []  # raised once


def test_a_dip_restarts_the_hold() -> None:
    book, clock = book_with(co2_ppm=Threshold(max=1000, hold=30))
    book.observe("r301", "env", {"co2_ppm": 1100})
    clock.advance(20)
    book.observe("r301", "env", {"co2_ppm": 900})
    clock.advance(20)
    assert book.observe("r301", "env", {"co2_ppm": 1100}) == []
    clock.advance(29)
    assert book.observe("r301", "env", {"co2_ppm": 1100}) == []
    clock.advance(1)
    assert len(book.observe("r301", "env", {"co2_ppm": 1100})) == 1


def test_hysteresis_clears_once() -> None:
    book, _ = book_with(co2_ppm=Threshold(max=1000, hysteresis=50))
    assert book.observe("r301", "env", {"co2_ppm": 1001})[0].kind == "raised"
    # Back at the limit but inside the hysteresis band: still active.
    assert book.observe("r301", "env", {"co2_ppm": 1000}) == []
    assert book.observe("r301", "env", {"co2_ppm": 951}) == []
    (t,) = book.observe("r301", "env", {"co2_ppm": 950})
    assert (
        t.kind == "cleared" and t.alert.state == "cleared" and t.alert.id == "r301.env.co2_ppm.max"
    )
    assert book.observe("r301", "env", {"co2_ppm": 900}) == []
    assert book.active == {}


def test_min_and_max_are_separate_alerts() -> None:
    book, _ = book_with(
        temperature_c=Threshold(min=20, max=24, hysteresis=0.5, unit="°C", label="Temperature")
    )
    (low,) = book.observe("r301", "env", {"temperature_c": 19.2})
    assert low.alert.id == "r301.env.temperature_c.min"
    assert low.alert.message == "Temperature 19.2 °C below 20 °C"
    assert book.observe("r301", "env", {"temperature_c": 20.4}) == []
    kinds = [(t.kind, t.alert.rule) for t in book.observe("r301", "env", {"temperature_c": 25})]
    assert kinds == [("cleared", "min"), ("raised", "max")]


def test_clear_hold() -> None:
    book, clock = book_with(x=Threshold(max=10, clear_hold=5))
    book.observe("r301", "env", {"x": 11})
    assert book.observe("r301", "env", {"x": 5}) == []
    clock.advance(5)
    assert [t.kind for t in book.observe("r301", "env", {"x": 5})] == ["cleared"]


def test_acknowledge_and_restore() -> None:
    book, _ = book_with(x=Threshold(max=10))
    book.observe("r301", "env", {"x": 11})
    t = book.acknowledge("r301.env.x.max", by="tech")
    assert t is not None and t.alert.state == "acknowledged"
    assert book.acknowledge("nope") is None
    # A new book built from persisted alerts does not raise them again.
    book2 = AlertBook(FakeClock(), book.active.values())
    book2.set_rules("r301", "env", {"x": Threshold(max=10)})
    assert book2.observe("r301", "env", {"x": 12}) == []
    assert [t.kind for t in book2.observe("r301", "env", {"x": 3})] == ["cleared"]


def test_text_values_and_unknown_metrics_are_ignored() -> None:
    book, _ = book_with(x=Threshold(max=10))
    assert book.observe("r301", "env", {"x": "on", "y": 99}) == []
    assert book.observe("r301", "other", {"x": 99}) == []


def test_offline_message_and_disabled_rule() -> None:
    profile = load_profile("standard")
    book, _ = book_with(**{**profile.thresholds, "co2_ppm": Threshold(max=1000, enabled=False)})
    (t,) = book.observe("r301", "env", {"online": 0, "co2_ppm": 5000}, detail="no reply within 1s")
    assert t.alert.id == "r301.env.online.min" and t.alert.severity == "II"
    assert t.alert.message == "env offline: no reply within 1s"
    assert [x.kind for x in book.observe("r301", "env", {"online": 1})] == ["cleared"]


def test_standard_profile_has_every_rule_of_the_standard() -> None:
    t = load_profile("standard").thresholds
    expect = {
        "temperature_c": (20, 24),
        "humidity_pct": (40, 60),
        "co2_ppm": (None, 1000),
        "illuminance_lux": (500, None),
        "color_temp_k": (4000, 5000),
        "sound_level_db": (85, None),
        "snr_db": (40, None),
        "link_mbps": (100, None),
        "wifi_rssi_dbm": (-65, None),
        "air_changes_per_hour": (4, None),
        "area_per_person_m2": (1.5, None),
        "signin_latency_s": (None, 5),
        "input_lines": (1080, None),
        "rated_lumens": (3000, None),
        "audio_dropouts": (None, 0),
        "online": (1, None),
    }
    for metric, (lo, hi) in expect.items():
        assert (t[metric].min, t[metric].max) == (lo, hi), metric
    assert t["online"].severity == "II"


def test_faults_during_a_meeting_are_one_grade_more_severe() -> None:
    book, _clock = book_with(
        projector_error_lamp=Threshold(states={"error": "II"}, label="Lamp"),
        co2_ppm=Threshold(max=1000, severity="IV"),
    )
    book.set_rules("r301", "_room", {"attendees": Threshold(max=10, severity="III")})
    book.meeting_rooms.add("r301")
    (lamp,) = book.observe("r301", "env", {"projector_error_lamp": "error"})
    assert lamp.alert.severity == "I"  # STANDARD §3: a lamp error in a meeting is grade I
    assert lamp.alert.extra["graded_up_for_meeting"] == "II"
    (co2,) = book.observe("r301", "env", {"co2_ppm": 1200})
    assert co2.alert.severity == "III"
    (room,) = book.observe("r301", "_room", {"attendees": 12})
    assert room.alert.severity == "III"  # room-level readings are not device faults
    book.meeting_rooms.clear()
    book.observe("r301", "env", {"co2_ppm": 500, "projector_error_lamp": "ok"})
    (again,) = book.observe("r301", "env", {"co2_ppm": 1200})
    assert again.alert.severity == "IV" and "graded_up_for_meeting" not in again.alert.extra


def test_in_use_only_rules_apply_while_the_room_is_in_use() -> None:
    book, _clock = book_with(
        main_mute=Threshold(states={"on": "II"}, in_use_only=True),
        main_level_dbfs=Threshold(max=0, inclusive=True),
    )
    book.idle_rooms.add("r301")  # no meeting now: a muted main is normal
    assert book.observe("r301", "env", {"main_mute": "on"}) == []
    (clip,) = book.observe("r301", "env", {"main_level_dbfs": 3.0})  # always applies
    assert clip.alert.rule == "max"
    book.idle_rooms.clear()  # the meeting starts
    (muted,) = book.observe("r301", "env", {"main_mute": "on"})
    assert muted.kind == "raised" and muted.alert.severity == "II"
    book.idle_rooms.add("r301")  # it ends: the mute alert is no longer applicable
    (cleared,) = book.observe("r301", "env", {"main_mute": "on", "main_level_dbfs": 3.0})
    assert cleared.kind == "cleared" and cleared.reason == "not applicable now"
    assert "r301.env.main_level_dbfs.max" in book.active


def test_a_state_alert_carries_its_detail() -> None:
    book, _clock = book_with(bookings=Threshold(states={"error": "III"}, label="Bookings"))
    (t,) = book.observe("r301", "env", {"bookings": "error"}, detail="r301.ics: not a calendar")
    assert t.alert.message == "Bookings: r301.ics: not a calendar"


def test_a_value_beyond_its_limit_never_reads_as_equal_to_it() -> None:
    book, _ = book_with(
        area_per_person_m2=Threshold(min=1.5, hold=0, unit="m²", label="Floor area per person"),
        temperature_c=Threshold(max=24, hold=0, unit="°C", label="Temperature"),
    )
    (t,) = book.observe("r301", "env", {"area_per_person_m2": 1.46})
    assert t.alert.message == "Floor area per person 1.46 m² below 1.5 m²"  # was "1.5 below 1.5"
    (t,) = book.observe("r301", "env", {"temperature_c": 24.004})
    assert t.alert.message == "Temperature 24.004 °C above 24 °C"


_STEPS = st.lists(
    st.tuples(
        st.sampled_from([0.0, 1.0, 10.0, 31.0, 61.0]),  # seconds since the last poll
        # values on, just inside and just outside each limit and its hysteresis
        st.sampled_from([None, 800, 950, 951, 1000, 1001, 1499, 1500, 1501]),
        st.sampled_from([None, 19.4, 19.9, 20.0, 20.5, 22.0, 23.5, 24.0, 24.1]),
        st.sampled_from([300, 500, 600]),  # illuminance: below, on and above its minimum
        st.booleans(),  # the room idle (in_use_only rules off)
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(_STEPS)
@example([(0.0, None, 20.0, 600, False), (61.0, None, 20.0, 600, False)])  # inclusive edge
def test_quiet_band_shortcut_decides_as_the_full_rules_do(steps: list[Any]) -> None:
    """The shortcut for a device with nothing active or pending (every value inside its quiet
    band → no transition) must give exactly the transitions of the rule-by-rule pass."""
    thresholds = {
        "co2_ppm": Threshold(max=1000, critical_max=1500, hysteresis=50, hold=30, clear_hold=10),
        "temperature_c": Threshold(min=20, max=24, hysteresis=0.5, hold=60, inclusive=True),
        "illuminance_lux": Threshold(min=500, hold=0, in_use_only=True),
    }
    fast, fast_clock = book_with(**thresholds)
    full, full_clock = book_with(**thresholds)
    for dev in full._rules.values():  # no band: every reading goes through every rule
        dev.bands = {metric: NO_QUIET_BAND for metric in dev.compiled}
    for dt, co2, temp, lux, idle in steps:
        readings: dict[str, Any] = {"co2_ppm": co2, "temperature_c": temp, "illuminance_lux": lux}
        for book, clock in ((fast, fast_clock), (full, full_clock)):
            clock.advance(dt)
            if idle:
                book.idle_rooms.add("r301")
            else:
                book.idle_rooms.discard("r301")
        got = [(t.kind, t.alert.id) for t in fast.observe("r301", "env", readings)]
        want = [(t.kind, t.alert.id) for t in full.observe("r301", "env", readings)]
        assert got == want
    assert set(fast.active) == set(full.active)


def test_what_moved_since_the_published_state() -> None:
    """Measured values past their deadband may wait for state_min_interval; anything else that
    changed (a text state, a number without a deadband, a bool, the set of readings) goes at
    once; a move inside the deadband is nothing."""
    moved = Site._moved
    bands = {"co2_ppm": 10.0, "temperature_c": 0.1}
    last = {"co2_ppm": 600, "temperature_c": 22.0, "power": "on", "lamp_hours": 100, "door": True}
    assert moved(last, dict(last), bands) is None
    assert moved(last, {**last, "co2_ppm": 605}, bands) is None
    assert moved(last, {**last, "co2_ppm": 612}, bands) is _NUMBER
    assert moved(last, {**last, "temperature_c": 22.2, "co2_ppm": 605}, bands) is _NUMBER
    assert moved(last, {**last, "co2_ppm": 612, "power": "off"}, bands) is _AT_ONCE
    assert moved(last, {**last, "lamp_hours": 101}, bands) is _AT_ONCE
    assert moved(last, {**last, "door": False}, bands) is _AT_ONCE
    assert moved(last, {**last, "co2_ppm": None}, bands) is _AT_ONCE
    # A measured value that was text or None before (a sensor warming up) goes at once; one
    # that became a float from an int is still a measured move.
    assert moved({**last, "co2_ppm": "warming up"}, last, bands) is _AT_ONCE
    assert moved({**last, "co2_ppm": None}, last, bands) is _AT_ONCE
    assert moved(last, {**last, "co2_ppm": 612.5}, bands) is _NUMBER
    assert moved(last, {**last, "co2_ppm": 605.5}, bands) is None
    assert moved(last, {k: v for k, v in last.items() if k != "door"}, bands) is _AT_ONCE
    assert moved(last, {**{k: v for k, v in last.items() if k != "door"}, "window": 1}, bands) is (
        _AT_ONCE
    )
