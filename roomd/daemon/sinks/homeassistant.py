"""Home Assistant MQTT discovery: one HA device per roomd device, entities for its readings,
connectivity, the room's readiness and a projector power switch.

Configs are retained and re-sent when Home Assistant announces `online` on `{prefix}/status`;
entities that left the site config get an empty retained config, which removes them. The set of
published config topics is kept in state_dir so removals survive a restart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    "rated_lumens": (None, "lm", None),
}
TEXT_METRICS = {"projector_power", "input", "input_resolution", "av_mute"} | {
    f"projector_error_{f}" for f in ("fan", "lamp", "temperature", "cover", "filter", "other")
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


def _slug(*parts: str) -> str:
    return "_".join(p.replace("-", "_") for p in parts)


def discovery_configs(
    ha_prefix: str,
    base: str,
    site: str,
    rooms: dict[str, str],
    devices: list[DeviceInfo],
    login: str | None = None,
    availability_topic: str | None = None,
) -> dict[str, dict[str, Any]]:
    """topic → config payload, for everything the site config has now. With `login` (Home
    Assistant's broker user), commands go to `.../cmd/by/{login}`, which roomd's authorization
    can tell apart from anyone else's."""
    availability = {
        "topic": availability_topic or f"{base}/_daemon/availability",
        "payload_available": "online",
        "payload_not_available": "offline",
    }
    out: dict[str, dict[str, Any]] = {}
    for room, room_name in rooms.items():
        uid = _slug("roomd", site, room, "ready")
        out[f"{ha_prefix}/binary_sensor/{uid}/config"] = {
            "name": f"{room_name or room} ready",
            "unique_id": uid,
            "object_id": uid,
            "state_topic": f"{base}/{room}/state",
            "value_template": "{{ 'ON' if value_json.ok else 'OFF' }}",
            "availability": [availability],
            "device": {
                "identifiers": [_slug("roomd", site, room)],
                "name": room_name or room,
                "manufacturer": "roomd",
                "model": "meeting room",
            },
        }
    for d in devices:
        node = _slug("roomd", site, d.room, d.device)
        state = f"{base}/{d.room}/{d.device}/state"
        device = {
            "identifiers": [node],
            "name": f"{d.room_name or d.room} {d.name or d.device}",
            "manufacturer": "roomd",
            "model": f"{d.driver} {d.model}",
            "via_device": _slug("roomd", site, d.room),
        }
        out[f"{ha_prefix}/binary_sensor/{node}/online/config"] = {
            "name": "Connectivity",
            "unique_id": f"{node}_online",
            "object_id": f"{node}_online",
            "state_topic": state,
            "value_template": "{{ 'ON' if value_json.online else 'OFF' }}",
            "device_class": "connectivity",
            "entity_category": "diagnostic",
            "availability": [availability],
            "device": device,
        }
        for metric in d.metrics:
            if metric in METRICS:
                device_class, unit, state_class = METRICS[metric]
            elif metric in TEXT_METRICS:
                device_class, unit, state_class = None, None, None
            else:
                continue
            cfg: dict[str, Any] = {
                "name": metric.replace("_", " ").capitalize(),
                "unique_id": f"{node}_{metric}",
                "object_id": f"{node}_{metric}",
                "state_topic": state,
                "value_template": f"{{{{ value_json.readings.{metric} }}}}",
                "availability": [availability],
                "device": device,
            }
            if device_class:
                cfg["device_class"] = device_class
            if unit:
                cfg["unit_of_measurement"] = unit
            if state_class:
                cfg["state_class"] = state_class
            out[f"{ha_prefix}/sensor/{node}/{metric}/config"] = cfg
        if "projector_power" in d.metrics:
            cmd = f"{base}/{d.room}/{d.device}/cmd" + (f"/by/{login}" if login else "")
            out[f"{ha_prefix}/switch/{node}/power/config"] = {
                "name": "Power",
                "unique_id": f"{node}_power",
                "object_id": f"{node}_power",
                "state_topic": state,
                "value_template": "{{ 'ON' if value_json.readings.projector_power in "
                "['on', 'warming'] else 'OFF' }}",
                "command_topic": cmd,
                "payload_on": json.dumps({"command": "power", "args": {"state": "on"}, "id": "ha"}),
                "payload_off": json.dumps(
                    {"command": "power", "args": {"state": "off"}, "id": "ha"}
                ),
                "state_on": "ON",
                "state_off": "OFF",
                "availability": [availability],
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
