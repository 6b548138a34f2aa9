from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from roomd.daemon.config import ConfigError, default_config_path, load_config
from roomd.daemon.units import format_duration, parse_duration

GOOD = """\
site: hq
mqtt:
  url: mqtt://127.0.0.1:1883
  topic_prefix: roomd
http:
  listen: 127.0.0.1:9880
state_dir: {state}
profile: standard
rooms:
  - id: r301
    name: "City Hall 301"
    area_m2: 60
    seats: 40
    thresholds:
      co2_ppm: {{max: 800}}
    devices:
      - {{id: env, driver: modbus, model: generic-iaq, host: 10.1.3.40, unit: 1, poll: 5s}}
      - {{id: climate, driver: modbus, model: xy-md02, port: /dev/ttyUSB0, poll: 500ms}}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "roomd.yaml"
    p.write_text(text)
    return p


def test_good_config_loads_with_overrides(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD.format(state=tmp_path)))
    room = cfg.rooms[0]
    assert [d.id for d in room.devices] == ["env", "climate"]
    assert room.devices[1].poll == 0.5
    # The override changes only `max`; hysteresis and hold come from the profile.
    co2 = room.thresholds["co2_ppm"]
    assert co2.max == 800 and co2.hysteresis == 50 and co2.hold == 30
    assert room.thresholds["temperature_c"].min == 20


def test_three_problems_three_lines(tmp_path: Path) -> None:
    text = """\
site: hq
rooms:
  - id: r301
    devices:
      - {id: env, driver: modbus, model: generic-iaq, host: 10.0.0.1, pol: 5s}
  - name: no id here
    devices:
      - id: env
        driver: modbus
        model: generic-iaq
        host: 10.0.0.2
        poll: 5 parsecs
"""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    lines = [str(i) for i in info.value.issues]
    path = tmp_path / "roomd.yaml"
    assert f"{path}:5: rooms[0].devices[0].pol: unknown key" in lines
    assert any(s.startswith(f"{path}:6: rooms[1].id: required key is missing") for s in lines)
    assert any(
        s.startswith(f"{path}:12: rooms[1].devices[0].poll: invalid duration '5 parsecs'")
        for s in lines
    )
    assert len(lines) == 3


def test_validate_cli_exit_codes(tmp_path: Path) -> None:
    good = write(tmp_path, GOOD.format(state=tmp_path))
    run = subprocess.run(
        [sys.executable, "-m", "roomd", "validate", "-c", str(good)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ok" in run.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("site: hq\nrooms:\n  - id: R 301\n")
    run = subprocess.run(
        [sys.executable, "-m", "roomd", "validate", "-c", str(bad)], capture_output=True, text=True
    )
    assert run.returncode == 2
    assert f"{bad}:3: rooms[0].id: String should match pattern" in run.stdout


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("driver: pjlinkk", "rooms[0].devices[0].driver: unknown driver 'pjlinkk'"),
        ("driver: modbus, model: nosuch, host: a", "rooms[0].devices[0].model: Value error"),
        ("driver: modbus, model: xy-md02", "give `host` (Modbus TCP) or `port`"),
        ("driver: modbus, model: xy-md02, host: 'a:99999'", "port 99999 out of range"),
        ("driver: x32, host: a, channels: [1, 33]", "channel 33 does not exist on an x32 (1..32)"),
        ("driver: xair, host: a, test_source: oscillator", "xair has no oscillator on OSC"),
        ("driver: xair, host: a, test_source: channel", "test_source channel needs test_channel"),
        ("driver: audio-probe", "source rtp needs listen: HOST:PORT"),
        ("driver: audio-probe, source: wav, file: /nonexistent.wav", "file: cannot read"),
        ("driver: audio-probe, listen: 'a:5004', encoding: L32", "rooms[0].devices[0].encoding"),
    ],
)
def test_device_errors_name_the_key(tmp_path: Path, snippet: str, expected: str) -> None:
    text = f"site: hq\nrooms:\n  - id: r1\n    devices:\n      - {{id: d, {snippet}}}\n"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    text_out = str(info.value)
    assert expected.split(": Value error")[0] in text_out, text_out
    assert ":5: " in text_out


def test_duplicates_and_unknown_threshold(tmp_path: Path) -> None:
    text = """\
site: hq
rooms:
  - id: r1
    thresholds:
      co2: {hold: 5s}
    devices:
      - {id: a, driver: modbus, model: xy-md02, host: h}
      - {id: a, driver: modbus, model: xy-md02, host: h}
  - id: r1
"""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    out = str(info.value)
    assert ":5: rooms[0].thresholds.co2: unknown metric 'co2'; did you mean 'co2_ppm'?" in out
    assert ":8: rooms[0].devices[1].id: duplicate device id 'a'" in out
    assert ":9: rooms[1].id: duplicate room id 'r1'" in out


def test_a_misspelled_metric_is_an_error_naming_the_closest(tmp_path: Path) -> None:
    """`co2_pmm: {max: 800}` used to add a threshold nothing produces: the room's stricter
    CO₂ limit silently never applied."""
    text = """site: hq
rooms:
  - id: r1
    thresholds:
      co2_pmm: {max: 800}
    devices:
      - id: env
        driver: modbus
        model: generic-iaq
        host: h
        thresholds:
          temperature: {max: 25}
"""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    out = str(info.value)
    assert (
        ":5: rooms[0].thresholds.co2_pmm: unknown metric 'co2_pmm'; did you mean 'co2_ppm'?" in out
    )
    assert ":12: rooms[0].devices[0].thresholds.temperature: unknown metric" in out
    assert "did you mean 'temperature_c'?" in out


def test_duplicate_ids_are_reported_with_other_errors(tmp_path: Path) -> None:
    text = """site: hq
poll_jitter: lots
rooms:
  - id: r1
    devices:
      - {id: a, driver: modbus, model: xy-md02, host: h}
      - {id: a, driver: modbus, model: xy-md02, host: h}
  - id: r1
"""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    out = str(info.value)
    assert ":2: poll_jitter:" in out
    assert ":7: rooms[0].devices[1].id: duplicate device id 'a'" in out
    assert ":8: rooms[1].id: duplicate room id 'r1'" in out


def test_a_numeric_port_on_a_network_device_is_its_tcp_port(tmp_path: Path) -> None:
    text = """site: hq
rooms:
  - id: r1
    devices:
      - {id: env, driver: modbus, model: xy-md02, host: 127.0.0.1, port: 15021}
      - {id: proj, driver: pjlink, host: 127.0.0.1, port: 14352}
      - {id: v6, driver: pjlink, host: "::1", port: 4353}
"""
    cfg = load_config(write(tmp_path, text))
    hosts = [getattr(d, "host", None) for d in cfg.rooms[0].devices]
    assert hosts == ["127.0.0.1:15021", "127.0.0.1:14352", "[::1]:4353"]
    twice = text.replace("host: 127.0.0.1, port: 15021", "host: 127.0.0.1:502, port: 15021")
    with pytest.raises(ConfigError, match=r":5: rooms\[0\].devices\[0\]: .*give the TCP port once"):
        load_config(write(tmp_path, twice))


@pytest.mark.parametrize(
    ("raw", "line", "message"),
    [
        (b"site: hq\nrooms:\n  - id: r1\x01\n", 3, "control character U+0001"),
        (b"site: hq\nrooms:\n  - id: r\xe91\n", 3, "not UTF-8: byte 0xe9"),
        (b"site: hq\x00\n", 1, "control character U+0000"),
    ],
)
def test_bad_bytes_are_a_config_error_with_a_line(
    tmp_path: Path, raw: bytes, line: int, message: str
) -> None:
    path = tmp_path / "roomd.yaml"
    path.write_bytes(raw)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:{line}: (file): {message}")


def test_an_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    import time
    import tracemalloc

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    text = "\n".join(lines) + "\nsite: hq\nrooms: *a8\n"
    tracemalloc.start()
    started = time.process_time()
    with pytest.raises(ConfigError, match="alias bomb"):
        load_config(write(tmp_path, text))
    spent = time.process_time() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert spent < 2.0 and peak < 64 * 1024 * 1024


def test_no_config_found_says_where_it_looked_and_how_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ROOMD_CONFIG", raising=False)
    with pytest.raises(ConfigError) as info:
        load_config(default_config_path())
    out = str(info.value)
    assert "looked in $ROOMD_CONFIG (not set), ./roomd.yaml, /etc/roomd/roomd.yaml" in out
    assert "roomd simulate --write-config roomd.yaml" in out


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "site: hq\nrooms:\n  - id: r1\n   bad: [\n"))
    assert str(info.value).startswith(f"{tmp_path / 'roomd.yaml'}:4: (yaml):")


def test_env_and_secret_files_never_leak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pass"
    secret.write_text("s3cr3t-file\n")
    monkeypatch.setenv("ROOMD_TEST_PW", "s3cr3t-env")
    text = """\
site: hq
mqtt: {url: "mqtt://${ROOMD_TEST_HOST}:1883", username: u, password: "${ROOMD_TEST_PW}"}
rooms: [{id: r1}]
"""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert ":2: mqtt.url: environment variable ROOMD_TEST_HOST is not set" in str(info.value)
    monkeypatch.setenv("ROOMD_TEST_HOST", "broker.example")
    cfg = load_config(write(tmp_path, text))
    assert cfg.mqtt.secret() == "s3cr3t-env"
    assert "s3cr3t" not in repr(cfg) and "s3cr3t" not in str(cfg.mqtt)
    text2 = f"site: hq\nmqtt: {{username: u, password_file: {secret}}}\nrooms: [{{id: r1}}]\n"
    cfg2 = load_config(write(tmp_path, text2))
    assert cfg2.mqtt.secret() == "s3cr3t-file"
    text3 = "site: hq\nmqtt: {password_file: /nonexistent/pw}\nrooms: [{id: r1}]\n"
    with pytest.raises(ConfigError, match=r":2: mqtt.password_file: cannot read /nonexistent/pw"):
        load_config(write(tmp_path, text3))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("10s", 10), ("5m", 300), ("2h", 7200), ("1.5s", 1.5), (3, 3.0), ("7", 7)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["10 minutes", "-5s", "", "s", True, None, -1])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_format_duration() -> None:
    assert [format_duration(x) for x in (0.5, 10, 300, 7200, 90)] == [
        "500ms",
        "10s",
        "5m",
        "2h",
        "90s",
    ]


def test_backup_must_be_another_device_of_the_room(tmp_path: Path) -> None:
    text = (
        "site: hq\nrooms:\n  - id: r1\n    devices:\n"
        "      - {id: p1, driver: pjlink, host: a, backup: p3}\n"
        "      - {id: p2, driver: pjlink, host: b, backup: p2}\n"
        "      - {id: p4, driver: pjlink, host: c, backup: p1}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    out = str(info.value)
    assert ":5: rooms[0].devices[0].backup: no other device 'p3' in room 'r1'" in out, out
    assert ":6: rooms[0].devices[1].backup: no other device 'p2'" in out
    assert "devices[2].backup" not in out
    levels = "site: hq\nmeetings: {check_levels: [1h, 2h, 30m]}\nrooms: [{id: r1}]\n"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, levels))
    assert ":2: meetings.check_levels: levels 1, 2, 3 must come ever closer" in str(info.value)


def test_one_serial_port_is_one_line_setting(tmp_path: Path) -> None:
    text = """\
site: hq
rooms:
  - id: r1
    devices:
      - {id: th, driver: modbus, model: xy-md02, port: /dev/ttyUSB0, unit: 1}
      - {id: co2, driver: modbus, model: senseair-s8, port: /dev/ttyUSB0, unit: 254}
      - {id: lux, driver: modbus, model: rs485-lux, port: /dev/ttyUSB1, unit: 3}
  - id: r2
    devices:
      - {id: lux, driver: modbus, model: rs485-lux, port: /dev/ttyUSB1, unit: 4, baudrate: 4800}
      - {id: reader, driver: nfc-serial, port: /dev/ttyUSB0}
"""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    out = str(info.value)
    assert (
        ":6: rooms[0].devices[1].port: /dev/ttyUSB0 is one RS-485 line: r1/co2 wants 9600 8N1 "
        "but r1/th wants 9600 8E1" in out
    )
    assert (
        ":10: rooms[1].devices[0].port: /dev/ttyUSB1 is one RS-485 line: r2/lux wants 4800" in out
    )
    assert ":11: rooms[1].devices[1].port: /dev/ttyUSB0 is already used by r1/th" in out
    fixed = text.replace("unit: 1}", "unit: 1, parity: N}").replace(", baudrate: 4800", "")
    fixed = fixed.replace("      - {id: reader, driver: nfc-serial, port: /dev/ttyUSB0}\n", "")
    assert len(load_config(write(tmp_path, fixed)).rooms) == 2


@pytest.mark.parametrize("raw", [b"site: hq\x01\nrooms: []\n", b"site: h\xe9q\nrooms: []\n"])
def test_roomd_validate_and_run_exit_2_on_bad_bytes_without_a_traceback(
    tmp_path: Path, raw: bytes
) -> None:
    """A control byte or invalid UTF-8 printed a traceback and exited 1: systemd restarts on 1."""
    path = tmp_path / "roomd.yaml"
    path.write_bytes(raw)
    for command in ("validate", "run"):
        out = subprocess.run(
            [sys.executable, "-m", "roomd", command, "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 2, (command, out.stdout, out.stderr)
        assert "Traceback" not in out.stdout + out.stderr
        assert f"{path}:1: (file):" in out.stdout + out.stderr


def test_home_assistant_commands_can_carry_its_login() -> None:
    from roomd.daemon.sinks.homeassistant import DeviceInfo, discovery_configs

    dev = DeviceInfo(
        "r301",
        "City Hall 301",
        "proj",
        "",
        "pjlink",
        "generic",
        ("projector_power",),
        {},
        ("power",),
    )
    plain = discovery_configs("homeassistant", "roomd/hq", "hq", {"r301": "City Hall 301"}, [dev])
    named = discovery_configs(
        "homeassistant", "roomd/hq", "hq", {"r301": "City Hall 301"}, [dev], "homeassistant"
    )
    topic = "homeassistant/switch/roomd_hq_r301_proj/power/config"
    assert plain[topic]["command_topic"] == "roomd/hq/r301/proj/cmd"
    assert named[topic]["command_topic"] == "roomd/hq/r301/proj/cmd/by/homeassistant"
    button = "homeassistant/button/roomd_hq_r301_ack/config"
    assert named[button]["command_topic"] == "roomd/hq/_daemon/cmd/by/homeassistant"


def test_authorization_is_checked_before_anything_connects(tmp_path: Path) -> None:
    text = """\
site: hq
authorization:
  principals:
    crestron: {key_file: /nonexistent/crestron.key}
  rules:
    - {principals: [ops], site_commands: [ack, reboot]}
    - {principals: [ha], devices: [projector], commands: [power], colour: red}
rooms:
  - id: r1
"""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    out = str(info.value)
    assert ":7: authorization.rules[1].colour: unknown key" in out
    text = text.replace(", colour: red", "")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    out = str(info.value)
    assert ":4: authorization.principals.crestron.key_file: cannot read" in out
    assert ":6: authorization.rules[0].site_commands: no site command 'reboot'" in out
