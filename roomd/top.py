"""`roomd top`: the live terminal view of a running daemon, read from its MQTT topics.

Per room: readiness, the running or next meeting, the last check; alerts with their grade,
since when and who acknowledged, related ones grouped (one CO₂ condition seen by three
sensors is one line); devices with their readings, an offline device with the age of its last
values; idle microphones said to be idle rather than "SNR 0.6 dB". Fits the terminal: when the
rooms do not, ready rooms fold into one line and the rest is cut with a count. Plain lines when
stdout is not a terminal. In the site's language.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.text import Text

from .daemon.clock import human_duration
from .daemon.config import SiteConfig
from .daemon.model import Alert
from .daemon.notify_text import describe
from .daemon.site import room_state
from .daemon.store import epoch
from .daemon.units import severity_rank
from .i18n import translations

GRADE_STYLE = {"I": "bold white on red", "II": "bold red", "III": "yellow", "IV": "cyan"}
STATE_STYLE = {
    "ready": "bold green",
    "degraded": "bold yellow",
    "not_ready": "bold red",
    "offline": "bold white on red",
    "waiting": "dim",
}
SHORT = {
    "temperature_c": ("T", "°C"),
    "humidity_pct": ("RH", "%"),
    "co2_ppm": ("CO₂", "ppm"),
    "illuminance_lux": ("lux", ""),
    "color_temp_k": ("CCT", "K"),
    "cards_read": ("cards", ""),
    "link_mbps": ("", " Mbit/s"),
    "link_state": ("link", ""),
    "wifi_rssi_dbm": ("Wi-Fi", " dBm"),
    "wifi_clients": ("clients", ""),
    "supply_airflow_m3h": ("supply", " m³/h"),
    "ping_loss_pct": ("loss", "%"),
    "ping_rtt_ms": ("rtt", " ms"),
    "throughput_mbps": ("", " Mbit/s"),
}
# Detail a one-line view leaves out (the console and MQTT have them).
QUIET = frozenset(
    {
        "if_in_errors_per_min", "if_out_errors_per_min", "if_in_discards_per_min",
        "if_out_discards_per_min", "wifi_rssi_min_dbm", "blinds_position_pct",
        "throughput_error",
    }
)  # fmt: skip
STATES = ("lights", "blinds", "door", "window", "projector_circuit", "poe_state")
AUDIO_METRICS = ("sound_level_db", "snr_db")


@dataclass
class RoomView:
    id: str
    name: str
    summary: dict[str, Any] = field(default_factory=dict)
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    alerts: dict[str, Alert] = field(default_factory=dict)
    check: dict[str, Any] | None = None
    meeting: dict[str, Any] = field(default_factory=dict)


class SiteView:
    """What the daemon's retained and live topics say, kept up to date from MQTT."""

    def __init__(self, cfg: SiteConfig) -> None:
        self.cfg = cfg
        self.base = f"{cfg.mqtt.topic_prefix}/{cfg.site}"
        self.rooms = {r.id: RoomView(r.id, r.config.name or r.id) for r in cfg.rooms}
        self.lock = threading.Lock()
        self.daemon_online: bool | None = None

    def on_message(self, topic: str, payload: bytes) -> None:
        if not topic.startswith(self.base + "/"):
            return
        parts = topic[len(self.base) + 1 :].split("/")
        with self.lock:
            if parts[:2] == ["_daemon", "availability"]:
                self.daemon_online = payload == b"online"
                return
            room = self.rooms.get(parts[0])
            if room is None:
                return
            try:
                data = json.loads(payload) if payload else None
            except ValueError:
                return
            if parts[1:] == ["state"] and isinstance(data, dict):
                room.summary = data
            elif parts[1:2] == ["alerts"] and len(parts) == 3:
                if isinstance(data, dict):
                    room.alerts[parts[2]] = Alert.from_json(data)
                else:
                    room.alerts.pop(parts[2], None)
            elif parts[1:] == ["checks", "latest"] and isinstance(data, dict):
                room.check = data
            elif parts[1:] == ["meeting"] and isinstance(data, dict):
                room.meeting = data
            elif len(parts) == 3 and parts[2] == "state" and isinstance(data, dict):
                room.devices[parts[1]] = data

    # ---- rendering --------------------------------------------------------------------------

    def state_of(self, room: RoomView) -> str:
        online = [d.get("online") for d in room.devices.values()]
        if not room.devices:
            return "waiting"
        return room_state(online, (a.severity for a in room.alerts.values()))

    def render(self, width: int, height: int, language: str, now: float) -> list[Text]:
        _ = translations(language).gettext
        names = {
            "ready": _("ready"),
            "degraded": _("degraded"),
            "not_ready": _("not ready"),
            "offline": _("offline"),
            "waiting": _("waiting for devices"),
        }
        header = Text(f"roomd top · {self.cfg.site} · ", style="bold")
        header.append(time.strftime("%H:%M:%S", time.localtime(now)))
        if self.daemon_online is False:
            header.append("  " + _("the daemon is offline"), style="bold red")
        lines: list[Text] = [header]
        ready_rooms: list[str] = []
        blocks: list[list[Text]] = []
        with self.lock:
            rooms = list(self.rooms.values())
            for room in rooms:
                state = self.state_of(room)
                if state == "ready" and not room.alerts:
                    ready_rooms.append(room.name)
                blocks.append(self._room(room, state, names, language, now, width))
        legend = Text(_("Grades:") + " ")
        for grade, meaning in (
            ("I", _("very serious")),
            ("II", _("serious")),
            ("III", _("minor")),
            ("IV", _("very minor")),
        ):
            legend.append(f" {grade} ", style=GRADE_STYLE[grade])
            legend.append(f" {meaning}  ")
        budget = max(5, height - 3)
        body = [line for block in blocks for line in block]
        if len(body) > budget and ready_rooms:
            # Compact: ready rooms in one line, details for the others.
            folded = Text(_("Ready: ") + ", ".join(ready_rooms), style="green")
            detailed = [
                line
                for block, room in zip(blocks, rooms, strict=True)
                if room.name not in ready_rooms
                for line in block
            ]
            body = [folded, *detailed]
        if len(body) > budget:
            hidden = len(body) - (budget - 1)
            more = _("… %(n)s more lines: a taller terminal shows them") % {"n": hidden}
            body = [*body[: budget - 1], Text(more)]
        return [*lines, *body, legend]

    def _room(
        self,
        room: RoomView,
        state: str,
        names: dict[str, str],
        language: str,
        now: float,
        width: int,
    ) -> list[Text]:
        _ = translations(language).gettext
        head = Text()
        head.append(f"{room.name} ({room.id}) ", style="bold")
        head.append(names[state], style=STATE_STYLE[state])
        current, upcoming = room.meeting.get("current"), room.meeting.get("next")
        if current:
            head.append("  · " + _("now") + f": {current.get('title') or current['id']}")
        elif upcoming:
            start = _clock(upcoming["start"])
            head.append("  · " + _("next") + f": {upcoming.get('title') or upcoming['id']} {start}")
        check = room.check
        if check:
            verdict = _("passed") if check.get("passed") else _("FAILED")
            head.append(
                f"  · {_('Last check')}: {check.get('level_name', '')} {verdict} "
                f"{_clock(check.get('ts', ''))}",
                style=None if check.get("passed") else "red",
            )
        if "attendees" in room.summary:
            head.append("  · " + _("signed in: %(n)s") % {"n": room.summary["attendees"]})
        out = [head]
        # Related alerts: one condition (metric and rule) seen by several devices, one line.
        groups: dict[tuple[str, str], list[Alert]] = defaultdict(list)
        for alert in room.alerts.values():
            groups[(alert.metric, alert.rule)].append(alert)
        for alerts in groups.values():
            alerts.sort(key=lambda a: (severity_rank(a.severity), a.device))
        for alerts in sorted(
            groups.values(), key=lambda g: (severity_rank(g[0].severity), g[0].since)
        ):
            first = alerts[0]
            line = Text("  ")
            line.append(f" {first.severity} ", style=GRADE_STYLE.get(first.severity, ""))
            line.append(" " + describe(first, self.cfg.label(room.id, first.metric), language))
            if len(alerts) > 1:
                line.append(
                    "  "
                    + _("seen by %(devices)s") % {"devices": ", ".join(a.device for a in alerts)}
                )
            since = min(epoch(a.since) for a in alerts)
            line.append("  " + _("for %(age)s") % {"age": human_duration(now - since)}, style="dim")
            acked = [a for a in alerts if a.state == "acknowledged"]
            if acked:
                who = acked[0].extra.get("acknowledged_by", "?")
                line.append("  " + _("acknowledged by %(who)s") % {"who": who}, style="green")
            line.truncate(width, overflow="ellipsis")
            out.append(line)
        in_meeting = bool(current)
        width_id = max((len(d) for d in room.devices), default=8)
        for dev_id, dev in sorted(room.devices.items()):
            line = Text(f"    {dev_id:<{width_id}} ", style="dim" if dev.get("online") else "red")
            readings = dev.get("readings") or {}
            if not dev.get("online"):
                age = now - epoch(dev["ts"]) if dev.get("ts") else None
                line.append(_("offline") + (f" ({dev['error']})" if dev.get("error") else ""))
                if age is not None:
                    line.append(
                        "  " + _("values %(age)s old") % {"age": human_duration(age)}, style="dim"
                    )
            else:
                line.append(_readings(readings, in_meeting, language))
            line.truncate(width, overflow="ellipsis")
            out.append(line)
        return out


def _clock(iso_time: str) -> str:
    """Our ISO time (a booking's start, a check's) as local HH:MM."""
    try:
        return time.strftime("%H:%M", time.localtime(epoch(iso_time)))
    except ValueError:
        return iso_time


def _fmt_projector(r: dict[str, Any]) -> str:
    parts = [f"{r.get('projector_power', '?')}"]
    if "input_resolution" in r and r.get("projector_power") == "on":
        parts.append(f"in {r.get('input', '?')} {r['input_resolution']}")
    if "lamp_hours" in r:
        life = f" ({r['lamp_life_pct']:g}%)" if "lamp_life_pct" in r else ""
        parts.append(f"lamp {r['lamp_hours']} h{life}")
    errors = [
        k.removeprefix("projector_error_") + "=" + str(v)
        for k, v in r.items()
        if k.startswith("projector_error_") and v != "ok"
    ]
    parts += errors or ["no errors"]
    return "  ".join(parts)


def _fmt_mixer(r: dict[str, Any]) -> str:
    main = "MUTED" if r.get("main_mute") == "on" else "open"
    parts = [f"main {main} {r.get('main_fader_db', '?')} dB"]
    level = r.get("main_level_dbfs")
    if level is not None:
        parts.append(f"{level:.0f} dBFS")
    mics = sorted(k[:4] for k in r if k.startswith("ch") and k.endswith("_mute"))
    for ch in mics:
        mute = " muted" if r.get(f"{ch}_mute") == "on" else ""
        lvl = r.get(f"{ch}_level_dbfs")
        parts.append(f"{ch} {'-' if lvl is None else f'{lvl:.0f}'}{mute}")
    if r.get("test_tone") == "on":
        parts.append("TONE")
    return "  ".join(parts)


def _fmt_probe(r: dict[str, Any]) -> str:
    def num(key: str, unit: str) -> str:
        v = r.get(key)
        return "-" if v is None else f"{v:.1f}{unit}"

    parts = [f"sound {num('sound_level_db', ' dB(A)')}", f"SNR {num('snr_db', ' dB')}"]
    parts.append(f"floor {num('noise_floor_db', ' dB')}")
    if r.get("hum_db") is not None:
        parts.append(f"HUM {r['hum_db']:.0f} dB")
    if r.get("audio_dropouts"):
        parts.append(f"{r['audio_dropouts']} dropouts")
    return "  ".join(parts)


def _readings(readings: dict[str, Any], in_meeting: bool, language: str) -> str:
    """A device's readings on one line, by kind: projector, mixer, microphone, sensor."""
    if "projector_power" in readings:
        return _fmt_projector(readings)
    if "main_mute" in readings:
        return _fmt_mixer(readings)
    if any(m in readings for m in AUDIO_METRICS):
        if not in_meeting and not readings.get("hum_db") and not readings.get("audio_dropouts"):
            # SNR in an empty room is the room's noise against itself: not a fault, not news.
            _ = translations(language).gettext
            return _("microphone idle: no meeting (SNR is measured with speech or the test tone)")
        return _fmt_probe(readings)
    parts = []
    for metric, value in readings.items():
        if value is None or metric in QUIET:
            continue
        if metric in STATES:  # "lights off", "door closed"
            parts.append(f"{metric.replace('_', ' ')} {value}")
            continue
        short, unit = SHORT.get(metric, (metric, ""))
        if isinstance(value, float):
            value = f"{value:.1f}".rstrip("0").rstrip(".")
        parts.append(f"{short} {value}{unit}".strip())
    return "  ".join(parts) or "—"


def follow(view: SiteView, cfg: SiteConfig, port: int | None = None) -> tuple[Any, threading.Event]:
    """A paho client feeding `view` from the site's topics (its own thread), and an event set
    once the subscription stands. OSError when the broker cannot be reached."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from .cli import _mqtt_client_setup

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"roomd-top-{time.time_ns()}")
    _mqtt_client_setup(client, cfg)
    subscribed = threading.Event()
    client.on_connect = lambda c, *_: c.subscribe(f"{view.base}/#", 0)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = lambda c, u, m: view.on_message(m.topic, bytes(m.payload))
    client.connect(cfg.mqtt.host, port or cfg.mqtt.port, keepalive=30)
    client.loop_start()
    return client, subscribed


def run_top(cfg: SiteConfig, once: bool, language: str | None, interval: float = 1.0) -> int:
    """Subscribe, then redraw (a terminal) or print snapshots (a pipe) until Ctrl-C."""
    view = SiteView(cfg)
    lang = language or cfg.language
    console = Console()
    try:
        client, subscribed = follow(view, cfg)
    except OSError as exc:
        console.print(f"roomd top: cannot reach the broker {cfg.mqtt.url}: {exc}")
        return 2
    try:
        if not subscribed.wait(10):
            console.print(f"roomd top: no answer from the broker {cfg.mqtt.url}")
            return 2
        time.sleep(0.5)  # the retained topics arrive
        if once or not console.is_terminal:
            while True:
                for line in view.render(console.width, 10_000, lang, time.time()):
                    print(line.plain)
                if once:
                    return 0
                print(flush=True)
                time.sleep(max(interval, 5.0))
        from rich.live import Live

        def frame() -> RenderableType:
            size = console.size
            return Group(*view.render(size.width, size.height, lang, time.time()))

        with Live(frame(), console=console, screen=True, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(frame(), refresh=True)
    except KeyboardInterrupt:
        return 0
    finally:
        client.loop_stop()
        client.disconnect()
