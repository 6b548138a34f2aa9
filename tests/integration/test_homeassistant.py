"""Home Assistant MQTT discovery against a real Mosquitto."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from roomd.simulators.modbus import ModbusTcpSim, SimSensor
from roomd.simulators.pjlink import PJLinkSim, ProjectorState
from tests.conftest import Mosquitto, free_port, until, write_config
from tests.integration.test_daemon import running

# Keys Home Assistant documents for MQTT discovery of these components (the subset we use).
COMMON = {
    "name",
    "unique_id",
    "object_id",
    "state_topic",
    "value_template",
    "availability",
    "device",
    "entity_category",
}
ALLOWED = {
    "sensor": COMMON | {"device_class", "unit_of_measurement", "state_class"},
    "binary_sensor": COMMON | {"device_class"},
    "switch": COMMON | {"command_topic", "payload_on", "payload_off", "state_on", "state_off"},
}
DEVICE_KEYS = {"identifiers", "name", "manufacturer", "model", "via_device"}


def configs(rec: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in rec.matching(
        lambda m: m.topic.startswith("homeassistant/") and m.topic.endswith("/config")
    ):
        out[m.topic] = m.json() if m.payload else None
    return out


async def test_discovery_configs_switch_rediscovery_and_removal(
    tmp_path: Path, mosquitto: Mosquitto, recorder_factory: Any
) -> None:
    env = await ModbusTcpSim([SimSensor.of("generic-iaq", co2_ppm=700, temperature_c=22)]).start()
    proj = await PJLinkSim(ProjectorState(warmup=0.3)).start()
    data = {
        "site": "hq",
        "mqtt": {"url": mosquitto.url},
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "state_dir": str(tmp_path / "state"),
        "homeassistant": {"enabled": True},
        "rooms": [
            {
                "id": "r301",
                "name": "City Hall 301",
                "devices": [
                    {
                        "id": "env",
                        "driver": "modbus",
                        "model": "generic-iaq",
                        "host": env.address,
                        "poll": "200ms",
                    },
                    {
                        "id": "proj",
                        "driver": "pjlink",
                        "model": "roomd-simulator",
                        "host": proj.address,
                        "poll": "200ms",
                    },
                ],
            }
        ],
    }
    cfg = write_config(tmp_path / "roomd.yaml", data)
    rec = recorder_factory(mosquitto.port, topic="#")
    try:
        async with running(cfg) as daemon:
            co2 = "homeassistant/sensor/roomd_hq_r301_env/co2_ppm/config"
            switch_topic = "homeassistant/switch/roomd_hq_r301_proj/power/config"
            await rec.wait_for(lambda m: m.topic == co2)
            await rec.wait_for(lambda m: m.topic == switch_topic)  # configs arrive one by one
            found = configs(rec)
            sensor = found[co2]
            assert (
                sensor["device_class"] == "carbon_dioxide"
                and sensor["unit_of_measurement"] == "ppm"
            )
            assert sensor["state_class"] == "measurement"
            assert sensor["state_topic"] == "roomd/hq/r301/env/state"
            assert sensor["value_template"] == "{{ value_json.readings.co2_ppm }}"
            assert sensor["availability"][0]["topic"] == "roomd/hq/_daemon/availability"
            assert sensor["device"]["identifiers"] == ["roomd_hq_r301_env"]
            for topic, cfg_ in found.items():
                component = topic.split("/")[1]
                assert set(cfg_) <= ALLOWED[component], (topic, set(cfg_) - ALLOWED[component])
                assert set(cfg_["device"]) <= DEVICE_KEYS
                assert cfg_["unique_id"] and cfg_["name"]
            assert (
                found["homeassistant/binary_sensor/roomd_hq_r301_env/online/config"]["device_class"]
                == "connectivity"
            )
            assert "homeassistant/binary_sensor/roomd_hq_r301_ready/config" in found
            # The retained state the templates read carries what they name.
            state = (await rec.wait_for(lambda m: m.topic == "roomd/hq/r301/env/state"))[0].json()
            assert "co2_ppm" in state["readings"]

            # The projector switch sends the contract's command: it powers the projector on.
            switch = found[switch_topic]
            rec.publish(switch["command_topic"], switch["payload_on"].encode())
            result = (await rec.wait_for(lambda m: m.topic == "roomd/hq/r301/proj/cmd/result"))[0]
            assert result.json()["ok"] is True
            assert proj.state.power in ("warming", "on")

            # Home Assistant restarts: configs are sent again.
            before = len(rec.on(co2))
            rec.publish("homeassistant/status", b"online")
            await until(lambda: len(rec.on(co2)) > before, 5, "re-sent configs")

            # The projector leaves the config: its entities are removed (empty retained config).
            data["rooms"][0]["devices"] = data["rooms"][0]["devices"][:1]
            data["http"] = {"listen": f"127.0.0.1:{daemon.http.port}"}
            write_config(cfg, data)
            assert daemon.reload()
            await rec.wait_for(
                lambda m: (
                    m.topic == "homeassistant/switch/roomd_hq_r301_proj/power/config"
                    and m.payload == b""
                )
            )
        saved = json.loads((tmp_path / "state" / "homeassistant-topics.json").read_text())
        assert co2 in saved and not any("r301_proj" in t for t in saved)
    finally:
        await env.stop()
        await proj.stop()
