"""Home Assistant MQTT discovery against a real Mosquitto."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox

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
COMMON |= {"availability_mode"}
ALLOWED = {
    "sensor": COMMON | {"device_class", "unit_of_measurement", "state_class"},
    "binary_sensor": COMMON | {"device_class"},
    "switch": COMMON | {"command_topic", "payload_on", "payload_off", "state_on", "state_off"},
    "button": (COMMON - {"state_topic", "value_template"}) | {"command_topic", "payload_press"},
}
DEVICE_KEYS = {
    "identifiers",
    "name",
    "manufacturer",
    "model",
    "via_device",
    "suggested_area",
    "sw_version",
    "serial_number",
}


def render(template: str, payload: bytes) -> str:
    """A value template as Home Assistant renders it (Jinja2, sandboxed, `value_json`); any
    error or undefined access fails the test, as it would log a warning in HA."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)
    return env.from_string(template).render(value_json=json.loads(payload))


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
            assert sensor["state_class"] == "measurement" and sensor["name"] == "CO₂"
            assert sensor["state_topic"] == "roomd/hq/r301/env/state"
            assert sensor["value_template"] == "{{ value_json.readings.get('co2_ppm') }}"
            # Unavailable when the daemon is gone or the device is offline.
            daemon_av, device_av = sensor["availability"]
            assert daemon_av["topic"] == "roomd/hq/_daemon/availability"
            assert device_av["topic"] == "roomd/hq/r301/env/state"
            assert sensor["availability_mode"] == "all"
            assert sensor["device"]["identifiers"] == ["roomd_hq_r301_env"]
            assert sensor["device"]["suggested_area"] == "City Hall 301"
            for topic, cfg_ in found.items():
                component = topic.split("/")[1]
                assert set(cfg_) <= ALLOWED[component], (topic, set(cfg_) - ALLOWED[component])
                assert set(cfg_["device"]) <= DEVICE_KEYS
                assert cfg_["unique_id"] and cfg_["name"]
            assert (
                found["homeassistant/binary_sensor/roomd_hq_r301_env/online/config"]["device_class"]
                == "connectivity"
            )
            ready = found["homeassistant/binary_sensor/roomd_hq_r301_ready/config"]
            assert ready["name"] == "Ready" and ready["device"]["name"] == "City Hall 301"
            problem = found["homeassistant/binary_sensor/roomd_hq_r301_problem/config"]
            assert problem["device_class"] == "problem"
            lamp = found[
                "homeassistant/binary_sensor/roomd_hq_r301_proj/projector_error_lamp/config"
            ]
            assert lamp["device_class"] == "problem" and lamp["name"] == "Projector lamp"
            lamp_hours = found["homeassistant/sensor/roomd_hq_r301_proj/lamp_hours/config"]
            assert lamp_hours["entity_category"] == "diagnostic"

            # Every template renders without a warning, on the device's real state and on a
            # state with no readings yet (a numeric sensor then shows "None": unknown).
            state_msg = (await rec.wait_for(lambda m: m.topic == "roomd/hq/r301/env/state"))[0]
            empty = json.dumps({"online": True, "readings": {}, "ts": "x"}).encode()
            for topic, cfg_ in found.items():
                if "/env/" not in topic or "value_template" not in cfg_:
                    continue
                render(cfg_["value_template"], state_msg.payload)
                render(cfg_["value_template"], empty)
            assert render(sensor["value_template"], empty) == "None"
            assert float(render(sensor["value_template"], state_msg.payload)) == 700
            assert render(device_av["value_template"], state_msg.payload) == "online"

            # The projector said what it is: its HA device is re-announced with it.
            await until(
                lambda: (
                    (configs(rec).get(switch_topic) or {}).get("device", {}).get("model")
                    == "SIM-PJ 2000"
                ),
                10,
                "the projector's make and model",
            )
            found = configs(rec)

            # A room's buttons: a lamp fault, acknowledged from Home Assistant.
            proj.state.faults.add("lamp")
            alert_topic = "roomd/hq/r301/alerts/r301.proj.projector_error_lamp.error"
            await rec.wait_for(lambda m: m.topic == alert_topic and m.payload)
            ack = found["homeassistant/button/roomd_hq_r301_ack/config"]
            rec.publish(ack["command_topic"], ack["payload_press"].encode())
            acked = await rec.wait_for(
                lambda m: (
                    m.topic == alert_topic and m.payload and m.json()["state"] == "acknowledged"
                )
            )
            assert acked[-1].json()["acknowledged_by"].startswith("anonymous")
            proj.state.faults.clear()
            check = found["homeassistant/button/roomd_hq_r301_check/config"]
            rec.publish(check["command_topic"], check["payload_press"].encode())
            await rec.wait_for(lambda m: m.topic == "roomd/hq/r301/checks/latest", 60)

            # A refused command is shown to the HA user, not only a switch flipping back.
            last = found["homeassistant/sensor/roomd_hq_r301_proj/last_command/config"]
            rec.publish(
                "roomd/hq/r301/proj/cmd", {"id": "bad", "command": "input", "args": {"input": "x9"}}
            )
            refused = await rec.wait_for(
                lambda m: m.topic == last["state_topic"] and not m.json()["ok"]
            )
            assert render(last["value_template"], refused[-1].payload).startswith(
                "refused: args.input: 'x9' is not an input"
            )

            # (The check powered the projector on and back to standby: wait for it to cool.)
            await until(lambda: proj.state.power == "off", 60, "the projector back in standby")
            # The projector switch sends the contract's command: it powers the projector on.
            switch = found[switch_topic]
            rec.publish(switch["command_topic"], switch["payload_on"].encode())
            result = (
                await rec.wait_for(
                    lambda m: m.topic == "roomd/hq/r301/proj/cmd/result" and m.json()["id"] == "ha"
                )
            )[0]
            assert result.json()["ok"] is True, result.json()
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


def test_discovery_names_follow_the_sites_language() -> None:
    from roomd.daemon.sinks.homeassistant import DeviceInfo, discovery_configs

    device = DeviceInfo(
        "r301",
        "市政厅 301",
        "env",
        "",
        "modbus",
        "generic-iaq",
        ("co2_ppm", "lamp_hours"),
        {"manufacturer": "Acme", "firmware": "2.1"},
        ("write",),
    )
    found = discovery_configs(
        "homeassistant", "roomd/hq", "hq", {"r301": "市政厅 301"}, [device], language="zh-CN"
    )
    co2 = found["homeassistant/sensor/roomd_hq_r301_env/co2_ppm/config"]
    assert co2["name"] == "二氧化碳"
    assert co2["device"]["manufacturer"] == "Acme" and co2["device"]["sw_version"] == "2.1"
    assert co2["device"]["suggested_area"] == "市政厅 301"
    assert found["homeassistant/binary_sensor/roomd_hq_r301_ready/config"]["name"] == "就绪"
    assert found["homeassistant/button/roomd_hq_r301_check/config"]["name"] == "执行会前检查"
    assert found["homeassistant/sensor/roomd_hq_r301_env/last_command/config"]["name"] == "最近命令"
