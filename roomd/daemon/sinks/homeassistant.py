"""Home Assistant MQTT discovery: a device per room (readiness, problems, alert count, buttons
to run a check and acknowledge its alerts) and per roomd device (its readings with readable
names, connectivity, projector power and error states, the mixer's main mute, the card
reader, the last command's answer), each in the room's area.

Configs are retained and re-sent when Home Assistant announces `online` on `{prefix}/status`;
entities that left the site config get an empty retained config, which removes them. The set of
published config topics is kept in state_dir so removals survive a restart.

Templates never warn: a reading a device has not published renders `None`, which Home
Assistant shows as unknown; entities of an offline device are unavailable (a second
availability topic, the device's own state), not stale values shown as current.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...i18n import N_, translations
from ..private import write_private

# metric → (device_class, unit, state_class); None device_class: a plain sensor.
METRICS: dict[str, tuple[str | None, str | None, str | None]] = {
    "temperature_c": ("temperature", "°C", "measurement"),
    "humidity_pct": ("humidity", "%", "measurement"),
    "co2_ppm": ("carbon_dioxide", "ppm", "measurement"),
    "illuminance_lux": ("illuminance", "lx", "measurement"),
    "color_temp_k": (None, "K", "measurement"),
    "sound_level_db": ("sound_pressure", "dB", "measurement"),
    "snr_db": (None, "dB", "measurement"),
    "noise_floor_db": ("sound_pressure", "dB", "measurement"),
    "audio_dropouts": (None, None, "total_increasing"),
    "lamp_hours": ("duration", "h", "total_increasing"),
    "filter_hours": ("duration", "h", "total_increasing"),
    "lamp_life_pct": (None, "%", "measurement"),
    "filter_life_pct": (None, "%", "measurement"),
    "input_lines": (None, None, "measurement"),
    "attendees": (None, None, "measurement"),
    "area_per_person_m2": (None, "m²", "measurement"),
    "signin_latency_s": ("duration", "s", "measurement"),
    "link_mbps": ("data_rate", "Mbit/s", "measurement"),
    "wifi_rssi_dbm": ("signal_strength", "dBm", "measurement"),
    "wifi_clients": (None, None, "measurement"),
    "ping_loss_pct": (None, "%", "measurement"),
    "ping_rtt_ms": ("duration", "ms", "measurement"),
    "throughput_mbps": ("data_rate", "Mbit/s", "measurement"),
    "supply_airflow_m3h": ("volume_flow_rate", "m³/h", "measurement"),
    "damper_pct": (None, "%", "measurement"),
    "blinds_position_pct": (None, "%", "measurement"),
    "rated_lumens": (None, "lm", None),
    "main_fader_db": (None, "dB", "measurement"),
    "cards_read": (None, None, "total_increasing"),
    "bad_frames": (None, None, "total_increasing"),
}
TEXT_METRICS = {"projector_power", "input_name", "input_resolution", "link_state", "blinds"}
# Contacts: binary sensors with Home Assistant's device class, on while "open".
CONTACTS = {"door": "door", "window": "window"}
# Relays a room controller may switch: metric → (the on action, the off action); sent as the
# driver's command (`act` on KNX, `write` of a named coil on a Modbus I/O module).
RELAYS = {
    "lights": ("lights_on", "lights_off"),
    "projector_circuit": ("projector_circuit_on", "projector_circuit_off"),
}
PROBLEMS = {
    f"projector_error_{f}" for f in ("fan", "lamp", "temperature", "cover", "filter", "other")
}
# Upkeep and link quality: shown under the device's diagnostics, not on its main card.
DIAGNOSTIC = {
    "lamp_hours",
    "filter_hours",
    "lamp_life_pct",
    "filter_life_pct",
    "rated_lumens",
    "input_lines",
    "signin_latency_s",
    "bad_frames",
    "noise_floor_db",
}
# Readable names ("CO₂", not "Co2 ppm"); the site's language through the catalog.
NAMES = {
    "co2_ppm": N_("CO₂"),
    "temperature_c": N_("Temperature"),
    "humidity_pct": N_("Humidity"),
    "illuminance_lux": N_("Illuminance"),
    "color_temp_k": N_("Colour temperature"),
    "sound_level_db": N_("Sound level"),
    "snr_db": N_("Signal-to-noise"),
    "noise_floor_db": N_("Noise floor"),
    "audio_dropouts": N_("Audio dropouts"),
    "lamp_hours": N_("Lamp hours"),
    "filter_hours": N_("Filter hours"),
    "lamp_life_pct": N_("Lamp life used"),
    "filter_life_pct": N_("Filter life used"),
    "input_lines": N_("Input resolution"),
    "rated_lumens": N_("Rated brightness"),
    "projector_power": N_("Projector power"),
    "input_name": N_("Input"),
    "input_resolution": N_("Input signal"),
    "cards_read": N_("Cards read"),
    "bad_frames": N_("Bad frames"),
    "attendees": N_("Attendees"),
    "area_per_person_m2": N_("Floor area per person"),
    "signin_latency_s": N_("Sign-in latency"),
    "main_mute": N_("Main mute"),
    "main_fader_db": N_("Main fader"),
    "link_mbps": N_("Wired link"),
    "wifi_rssi_dbm": N_("Wi-Fi signal"),
    "link_state": N_("Wired link state"),
    "wifi_clients": N_("Wi-Fi clients"),
    "ping_loss_pct": N_("Packet loss"),
    "ping_rtt_ms": N_("Round trip"),
    "throughput_mbps": N_("Measured throughput"),
    "supply_airflow_m3h": N_("Supply air flow"),
    "damper_pct": N_("Damper"),
    "door": N_("Door"),
    "window": N_("Window"),
    "lights": N_("Lights"),
    "blinds": N_("Blinds"),
    "projector_circuit": N_("Projector circuit"),
    "projector_error_fan": N_("Projector fan"),
    "projector_error_lamp": N_("Projector lamp"),
    "projector_error_temperature": N_("Projector temperature"),
    "projector_error_cover": N_("Projector cover"),
    "projector_error_filter": N_("Projector filter"),
    "projector_error_other": N_("Projector (other error)"),
}


@dataclass(frozen=True)
class DeviceInfo:
    room: str
    room_name: str
    device: str
    name: str
    driver: str
    model: str
    metrics: tuple[str, ...]
    info: dict[str, str] = field(default_factory=dict)  # what the device says of itself
    commands: tuple[str, ...] = ()  # command names the device takes


def _slug(*parts: str) -> str:
    return "_".join(p.replace("-", "_") for p in parts)


def _reading(metric: str) -> str:
    # .get(): a reading not (yet) published renders None (unknown), never a template warning.
    return f"{{{{ value_json.readings.get('{metric}') }}}}"


def _relay_command(metric: str, commands: tuple[str, ...]) -> tuple[str, str] | None:
    """The on and off payloads for a relay the device can switch, or None."""
    actions = RELAYS.get(metric)
    if actions is None:
        return None
    if "act" in commands:  # KNX
        args = [{"action": a} for a in actions]
        name = "act"
    elif "write" in commands:  # a Modbus I/O module's named coils
        args = [{"register": a} for a in actions]
        name = "write"
    else:
        return None
    on, off = (json.dumps({"command": name, "args": a, "id": "ha"}) for a in args)
    return on, off


def discovery_configs(
    ha_prefix: str,
    base: str,
    site: str,
    rooms: dict[str, str],
    devices: list[DeviceInfo],
    login: str | None = None,
    availability_topic: str | None = None,
    language: str = "en",
) -> dict[str, dict[str, Any]]:
    """topic → config payload, for everything the site config has now. With `login` (Home
    Assistant's broker user), commands go to `.../cmd/by/{login}`, which roomd's authorization
    can tell apart from anyone else's. Names are in the site's `language`."""
    _ = translations(language).gettext

    def label(metric: str) -> str:
        return _(NAMES[metric]) if metric in NAMES else metric.replace("_", " ").capitalize()

    daemon = {
        "topic": availability_topic or f"{base}/_daemon/availability",
        "payload_available": "online",
        "payload_not_available": "offline",
    }
    by = f"/by/{login}" if login else ""
    out: dict[str, dict[str, Any]] = {}
    for room, room_name in rooms.items():
        node = _slug("roomd", site, room)
        state = f"{base}/{room}/state"
        device = {
            "identifiers": [node],
            "name": room_name or room,
            "manufacturer": "roomd",
            "model": "meeting room",
            "suggested_area": room_name or room,
        }
        common = {"availability": [daemon], "device": device}
        out[f"{ha_prefix}/binary_sensor/{node}_ready/config"] = {
            "name": _("Ready"),
            "unique_id": f"{node}_ready",
            "object_id": f"{node}_ready",
            "state_topic": state,
            "value_template": "{{ 'ON' if value_json.ok else 'OFF' }}",
            **common,
        }
        out[f"{ha_prefix}/binary_sensor/{node}_problem/config"] = {
            "name": _("Problem"),
            "unique_id": f"{node}_problem",
            "object_id": f"{node}_problem",
            "state_topic": state,
            "value_template": "{{ 'ON' if value_json.active_alerts > 0 else 'OFF' }}",
            "device_class": "problem",
            **common,
        }
        out[f"{ha_prefix}/sensor/{node}_alerts/config"] = {
            "name": _("Active alerts"),
            "unique_id": f"{node}_alerts",
            "object_id": f"{node}_alerts",
            "state_topic": state,
            "value_template": "{{ value_json.active_alerts }}",
            "state_class": "measurement",
            **common,
        }
        site_cmd = f"{base}/_daemon/cmd{by}"
        for key, name, command in (
            ("check", _("Run pre-meeting check"), {"command": "check", "args": {"room": room}}),
            ("ack", _("Acknowledge alerts"), {"command": "ack", "args": {"room": room}}),
        ):
            out[f"{ha_prefix}/button/{node}_{key}/config"] = {
                "name": name,
                "unique_id": f"{node}_{key}",
                "object_id": f"{node}_{key}",
                "command_topic": site_cmd,
                "payload_press": json.dumps({**command, "id": f"ha-{key}"}),
                **common,
            }
    for d in devices:
        node = _slug("roomd", site, d.room, d.device)
        state = f"{base}/{d.room}/{d.device}/state"
        device = {
            "identifiers": [node],
            "name": f"{d.room_name or d.room} {d.name or d.device}",
            "manufacturer": d.info.get("manufacturer") or "roomd",
            "model": d.info.get("product") or d.info.get("model") or f"{d.driver} {d.model}",
            "via_device": _slug("roomd", site, d.room),
            "suggested_area": d.room_name or d.room,
        }
        version = d.info.get("firmware") or d.info.get("software") or d.info.get("version")
        if version:
            device["sw_version"] = version
        if d.info.get("serial"):
            device["serial_number"] = d.info["serial"]
        # An offline device's entities are unavailable: both the daemon and the device say so.
        own = {
            "topic": state,
            "value_template": "{{ 'online' if value_json.online else 'offline' }}",
        }
        entity = {"availability": [daemon, own], "availability_mode": "all", "device": device}
        out[f"{ha_prefix}/binary_sensor/{node}/online/config"] = {
            "name": _("Connectivity"),
            "unique_id": f"{node}_online",
            "object_id": f"{node}_online",
            "state_topic": state,
            "value_template": "{{ 'ON' if value_json.online else 'OFF' }}",
            "device_class": "connectivity",
            "entity_category": "diagnostic",
            "availability": [daemon],
            "device": device,
        }
        for metric in d.metrics:
            base_cfg = {
                "name": label(metric),
                "unique_id": f"{node}_{metric}",
                "object_id": f"{node}_{metric}",
                "state_topic": state,
                **entity,
            }
            if metric in PROBLEMS:
                out[f"{ha_prefix}/binary_sensor/{node}/{metric}/config"] = {
                    **base_cfg,
                    "value_template": "{{ 'ON' if value_json.readings.get('"
                    + metric
                    + "') in ['warning', 'error'] else 'OFF' }}",
                    "device_class": "problem",
                }
                continue
            if metric in CONTACTS:
                out[f"{ha_prefix}/binary_sensor/{node}/{metric}/config"] = {
                    **base_cfg,
                    "value_template": "{{ 'ON' if value_json.readings.get('"
                    + metric
                    + "') == 'open' else 'OFF' }}",
                    "device_class": CONTACTS[metric],
                }
                continue
            relay = _relay_command(metric, d.commands)
            if relay is not None:
                out[f"{ha_prefix}/switch/{node}/{metric}/config"] = {
                    **base_cfg,
                    "value_template": "{{ 'ON' if value_json.readings.get('"
                    + metric
                    + "') == 'on' else 'OFF' }}",
                    "command_topic": f"{base}/{d.room}/{d.device}/cmd{by}",
                    "payload_on": relay[0],
                    "payload_off": relay[1],
                    "state_on": "ON",
                    "state_off": "OFF",
                }
                continue
            if metric == "main_mute" and "mute" in d.commands:
                cmd = f"{base}/{d.room}/{d.device}/cmd{by}"

                def mute(state: str) -> str:
                    args = {"channel": "main", "state": state}
                    return json.dumps({"command": "mute", "args": args, "id": "ha"})

                out[f"{ha_prefix}/switch/{node}/main_mute/config"] = {
                    **base_cfg,
                    "value_template": "{{ 'ON' if value_json.readings.get('main_mute') == 'on' "
                    "else 'OFF' }}",
                    "command_topic": cmd,
                    "payload_on": mute("on"),
                    "payload_off": mute("off"),
                    "state_on": "ON",
                    "state_off": "OFF",
                }
                continue
            if metric in METRICS:
                device_class, unit, state_class = METRICS[metric]
            elif metric in TEXT_METRICS:
                device_class, unit, state_class = None, None, None
            else:
                continue
            cfg: dict[str, Any] = {**base_cfg, "value_template": _reading(metric)}
            if device_class:
                cfg["device_class"] = device_class
            if unit:
                cfg["unit_of_measurement"] = unit
            if state_class:
                cfg["state_class"] = state_class
            if metric in DIAGNOSTIC:
                cfg["entity_category"] = "diagnostic"
            out[f"{ha_prefix}/sensor/{node}/{metric}/config"] = cfg
        if "projector_power" in d.metrics and "power" in d.commands:
            cmd = f"{base}/{d.room}/{d.device}/cmd{by}"
            out[f"{ha_prefix}/switch/{node}/power/config"] = {
                "name": _("Power"),
                "unique_id": f"{node}_power",
                "object_id": f"{node}_power",
                "state_topic": state,
                "value_template": "{{ 'ON' if value_json.readings.get('projector_power') in "
                "['on', 'warming'] else 'OFF' }}",
                "command_topic": cmd,
                "payload_on": json.dumps({"command": "power", "args": {"state": "on"}, "id": "ha"}),
                "payload_off": json.dumps(
                    {"command": "power", "args": {"state": "off"}, "id": "ha"}
                ),
                "state_on": "ON",
                "state_off": "OFF",
                **entity,
            }
        if d.commands:
            # A refused command is not only a switch flipping back: its answer is shown.
            out[f"{ha_prefix}/sensor/{node}/last_command/config"] = {
                "name": _("Last command"),
                "unique_id": f"{node}_last_command",
                "object_id": f"{node}_last_command",
                "state_topic": f"{base}/{d.room}/{d.device}/cmd/result",
                "value_template": "{{ 'ok' if value_json.ok else ('refused: ' ~ "
                "value_json.error)[:250] }}",
                "entity_category": "diagnostic",
                "availability": [daemon],
                "device": device,
            }
    return out


class PublishedTopics:
    """The discovery topics roomd has published, kept across restarts for removals."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "homeassistant-topics.json"

    def load(self) -> set[str]:
        try:
            return set(json.loads(self.path.read_text()))
        except (OSError, ValueError):
            return set()

    def save(self, topics: set[str]) -> None:
        write_private(self.path, json.dumps(sorted(topics)))
