"""The real commands as a technician runs them: `roomd simulate`, `roomd run`, `roomd ack`,
signals, exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import Mosquitto, free_port, write_config

ROOMD = [sys.executable, "-m", "roomd"]


def control_cmd(port: int, line: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(line.encode() + b"\n")
        return s.makefile().readline().strip()


def wait_file(path: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} was not written")


async def test_simulate_run_reload_ack_and_stop(
    tmp_path: Path, mosquitto: Mosquitto, recorder_factory: Any
) -> None:
    cfg = tmp_path / "site.yaml"
    http = f"127.0.0.1:{free_port()}"
    control = free_port()
    sim = subprocess.Popen(
        [
            *ROOMD,
            "simulate",
            "--rooms",
            "2",
            "--write-config",
            str(cfg),
            "--mqtt",
            mosquitto.url,
            "--http",
            http,
            "--state-dir",
            str(tmp_path / "state"),
            "--poll",
            "200ms",
            "--control",
            f"127.0.0.1:{control}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    daemon: subprocess.Popen[str] | None = None
    try:
        wait_file(cfg)
        check = subprocess.run([*ROOMD, "validate", "-c", str(cfg)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout
        assert "2 rooms, 23 devices" in check.stdout
        rec = recorder_factory(mosquitto.port, topic="roomd/#")
        daemon = subprocess.Popen(
            [*ROOMD, "run", "-c", str(cfg)], stderr=subprocess.PIPE, text=True
        )
        # The contract's topics, as `mosquitto_sub -t 'roomd/#' -v` would show them.
        await rec.wait_for(
            lambda m: m.topic == "roomd/hq/_daemon/availability" and m.payload == b"online"
        )
        for room in ("r301", "r302"):
            await rec.wait_for(lambda m, r=room: m.topic == f"roomd/hq/{r}/state")
            for dev in ("env", "climate", "co2", "projector"):
                got = await rec.wait_for(
                    lambda m, r=room, d=dev: m.topic == f"roomd/hq/{r}/{d}/state"
                )
                assert got[0].json()["online"] is True

        # SIGHUP: a room's CO2 limit drops under what it measures → an alert, without a restart.
        data = yaml.safe_load(cfg.read_text())
        data["rooms"][0]["thresholds"] = {"co2_ppm": {"max": 100, "hold": "0s"}}
        cfg.write_text(yaml.safe_dump(data, sort_keys=False))
        daemon.send_signal(signal.SIGHUP)
        alert = await rec.wait_for(
            lambda m: m.topic == "roomd/hq/r301/alerts/r301.env.co2_ppm.max" and m.payload
        )
        assert alert[0].json()["limit"] == 100

        # Faults injected into the running simulator through its control port.
        assert control_cmd(control, "fault r302 climate silent") == "ok r302/climate fault silent"
        offline = "roomd/hq/r302/alerts/r302.climate.online.min"
        await rec.wait_for(lambda m: m.topic == offline and m.payload, timeout=15)
        assert control_cmd(control, "fault r302 climate none").startswith("ok")
        await rec.wait_for(lambda m: m.topic == offline and m.payload == b"", timeout=15)
        assert control_cmd(control, "set r302 env co2_ppm 1500").startswith("ok")
        await rec.wait_for(
            lambda m: m.topic == "roomd/hq/r302/alerts/r302.env.co2_ppm.max" and m.payload,
            timeout=45,  # the standard profile holds CO2 for 30 s
        )
        assert control_cmd(control, "fault r302 lamp silent") == "error: no device 'lamp' in r302"

        ack = subprocess.run(
            [*ROOMD, "ack", "r301.env.co2_ppm.max", "-c", str(cfg)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert ack.returncode == 0, ack.stderr
        assert "acknowledged r301.env.co2_ppm.max" in ack.stdout
        await rec.wait_for(
            lambda m: (
                m.topic == "roomd/hq/r301/alerts/r301.env.co2_ppm.max"
                and m.payload
                and m.json()["state"] == "acknowledged"
            )
        )
        unknown = subprocess.run(
            [*ROOMD, "ack", "r301.nope.x.max", "-c", str(cfg)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert unknown.returncode == 1 and "no active alert" in unknown.stderr

        # A broken config on SIGHUP is rejected with FILE:LINE and the daemon goes on.
        good = cfg.read_text()
        cfg.write_text(good.replace("poll: 200ms", "poll: soon", 1))
        daemon.send_signal(signal.SIGHUP)
        await asyncio.sleep(1.0)
        assert daemon.poll() is None

        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(15) == 0
        stderr = daemon.stderr.read() if daemon.stderr else ""
        assert f"reload rejected: {cfg}:" in stderr and "invalid duration 'soon'" in stderr
        await rec.wait_for(
            lambda m: m.topic == "roomd/hq/_daemon/availability" and m.payload == b"offline"
        )
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
        sim.send_signal(signal.SIGTERM)
        assert sim.wait(15) == 0


def test_run_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("site: hq\nrooms:\n  - {id: r1, devices: [{id: a, driver: modbus}]}\n")
    run = subprocess.run(
        [*ROOMD, "run", "-c", str(bad)], capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 2
    assert f"{bad}:3: rooms[0].devices[0].model: required key is missing" in run.stderr
    missing = subprocess.run(
        [*ROOMD, "run", "-c", str(tmp_path / "none.yaml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode == 2 and "No such file" in missing.stderr
    # The port is taken: a runtime failure, exit 1.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = tmp_path / "ok.yaml"
        cfg.write_text(
            f"site: hq\nhttp: {{listen: '127.0.0.1:{port}'}}\nstate_dir: {tmp_path}/st\n"
            "rooms: [{id: r1}]\n"
        )
        run = subprocess.run(
            [*ROOMD, "run", "-c", str(cfg)], capture_output=True, text=True, timeout=30
        )
        assert run.returncode == 1, run.stderr
        assert "cannot run" in run.stderr
    env = dict(os.environ, ROOMD_CONFIG=str(bad))
    run = subprocess.run([*ROOMD, "validate"], capture_output=True, text=True, env=env, timeout=30)
    assert run.returncode == 2


def console_login(url: str, user: str, password: str) -> str:
    """Log in through the console's form like a browser; the fleet page's HTML."""
    import http.cookiejar
    import urllib.parse
    import urllib.request

    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(url + "login", timeout=10) as r:
        token = re.search(r'name="csrf" value="([\w-]+)"', r.read().decode())
    assert token
    form = urllib.parse.urlencode({"csrf": token.group(1), "user": user, "password": password})
    with opener.open(url + "login", data=form.encode(), timeout=10) as r:
        assert r.geturl() == url, r.geturl()
        return str(r.read().decode())


def test_every_command_has_help() -> None:
    commands = ("run", "validate", "simulate", "demo", "ack", "check", "analyze", "simctl")
    for cmd in (*commands, "console", "report", "report incidents", "console hash-password"):
        out = subprocess.run(
            [*ROOMD, *cmd.split(), "--help"], capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0 and "usage: roomd" in out.stdout


def test_help_and_messages_follow_the_terminals_language(tmp_path: Path) -> None:
    zh = {**os.environ, "LANG": "zh_CN.UTF-8", "ROOMD_LANG": ""}
    zh.pop("ROOMD_LANG")
    out = subprocess.run([*ROOMD, "--help"], capture_output=True, text=True, timeout=30, env=zh)
    assert out.returncode == 0 and out.stdout.startswith("用法：roomd")
    assert "立即对一间会议室执行会前检查" in out.stdout and "显示此帮助信息并退出" in out.stdout
    site = {"site": "hq", "state_dir": str(tmp_path), "rooms": [{"id": "r1"}]}
    cfg = write_config(tmp_path / "v.yaml", site)
    out = subprocess.run(
        [*ROOMD, "validate", "-c", str(cfg)], capture_output=True, text=True, timeout=30, env=zh
    )
    assert out.stdout.strip() == f"{cfg}：正确：站点 hq，1 间会议室，0 台设备"
    out = subprocess.run([*ROOMD, "check"], capture_output=True, text=True, timeout=30, env=zh)
    assert out.returncode == 2 and "缺少以下必需参数：room" in out.stderr
    en = {**os.environ, "ROOMD_LANG": "en"}
    out = subprocess.run([*ROOMD, "--help"], capture_output=True, text=True, timeout=30, env=en)
    assert out.stdout.startswith("usage: roomd")


def test_demo_shows_alerts_and_roomd_check_answers_against_its_rooms(tmp_path: Path) -> None:
    """The demo, as a newcomer runs it: readings and alerts within a minute, and `roomd check
    r301` (in another terminal) exits 0, then 1 once a fault is injected."""
    env = dict(os.environ, COLUMNS="200")
    demo = subprocess.Popen(
        [*ROOMD, "demo", "--duration", "70"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert demo.stdout is not None
    header = ""
    while "Faults:" not in header:
        line = demo.stdout.readline()
        assert line, "demo ended before printing its header"
        header += line
    # Run the commands exactly as printed, from a shell whose PATH has no venv in it.
    check_line = re.search(r"Check:\s+(.+ check r301 -c \S+)", header)
    fault_line = re.search(r"Faults:\s+(.+ fault r301 mixer mute_main)", header)
    assert check_line and fault_line, header
    cfg = re.search(r" -c (\S+)", check_line.group(1))
    assert cfg
    shell_env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

    def sh(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command, shell=True, capture_output=True, text=True, timeout=120, env=shell_env
        )

    ready = sh(check_line.group(1))
    assert ready.returncode == 0, ready.stdout + ready.stderr
    text = ready.stdout
    assert "Pre-meeting check: City Hall 301 (r301)" in text and "Result:  READY" in text
    for item in ("power-on test", "sound check: sound level", "answers", "CO2"):
        assert item in text
    # The console, as printed: its address and the login made for this run.
    console = re.search(
        r"Console:\s+(http://127\.0\.0\.1:\d+/)\s+log in as (\w+), password (\S+)", header
    )
    assert console, header
    fleet = console_login(console.group(1), console.group(2), console.group(3))
    assert "City Hall 301" in fleet and "City Hall 303" in fleet
    incidents = sh(check_line.group(1).replace("check r301", "report incidents"))
    assert incidents.returncode == 0 and " alerts; " in incidents.stdout, incidents.stderr
    assert sh(fault_line.group(1)).returncode == 0
    failed = sh(check_line.group(1) + " --format json")
    assert failed.returncode == 1, failed.stderr
    report = json.loads(failed.stdout)
    assert not report["passed"] and "mic: sound check: sound level" in report["failed"]
    # `(then none)`: the printed undo really undoes the muted main mix.
    undo = sh(fault_line.group(1).replace("mute_main", "none"))
    assert undo.returncode == 0 and "ok r301/mixer none" in undo.stdout
    listed = sh(fault_line.group(1).replace("fault r301 mixer mute_main", "list"))
    assert "r301/mixer:main_open" in listed.stdout, listed.stdout
    out, _err = demo.communicate(timeout=120)
    assert demo.returncode == 0
    assert not Path(cfg.group(1)).parent.exists(), "the demo left its temp directory behind"
    text = header + out
    assert "mosquitto_sub" in text and "/metrics" in text
    # The live view is `roomd top`'s: rooms with their state, grouped alerts, devices.
    assert "City Hall 301 (r301) ready" in text and "CO₂" in text
    assert "climate" in text and "offline" in text and " old" in text  # stale values, aged
    assert "alert r302.env.co2_ppm.max [III]" in text
    assert "alert r303.climate.online.min [II]" in text
    assert "alert r302.projector.projector_error_fan.warning [III]" in text
    assert "microphone idle: no meeting" in text  # not "SNR 0.6 dB" in an empty room
    assert re.search(r"\(r30[123]\) .*signed in: [1-9]", text), "attendees per room"
    assert "Grades:" in text


async def test_discover_command_prints_a_config_snippet() -> None:
    from roomd.simulators.site import SimulatedSite

    site = await SimulatedSite(2, rtu=False).start()
    try:
        proc = await asyncio.create_subprocess_exec(
            *ROOMD,
            "discover",
            "--address",
            "127.0.0.1",
            "--port",
            str(site.search_port),
            "--tcp-port",
            str(site.projector_port),
            "--timeout",
            "0.5",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err
        text = out.decode()
        assert "# 2 PJLink projector(s) answered %2SRCH" in text
        assert (
            f"- {{id: city-hall-301-projector, driver: pjlink, host: "
            f'"127.0.1.1:{site.projector_port}"}}'
        ) in text
        assert "class 2; MAC 00:50:56:01:00:01" in text
        # The snippet is valid config.
        snippet = "site: hq\nrooms:\n  - id: r1\n" + text.split("\n", 1)[1].replace(
            "    devices:", "    devices:", 1
        )
        cfg = yaml.safe_load(snippet)
        assert [d["driver"] for d in cfg["rooms"][0]["devices"]] == ["pjlink", "pjlink"]
    finally:
        await site.stop()
    # Nothing answering is not an error.
    proc = await asyncio.create_subprocess_exec(
        *ROOMD,
        "discover",
        "--address",
        "127.0.0.1",
        "--port",
        str(free_port()),
        "--timeout",
        "0.3",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0 and b"no PJLink Class 2 projector answered" in out


def test_check_without_a_running_daemon_fails_fast(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = tmp_path / "roomd.yaml"
    cfg.write_text(
        f"site: hq\nmqtt: {{url: '{mosquitto.url}'}}\nstate_dir: {tmp_path / 'state'}\n"
        "rooms: [{id: r301}]\n"
    )
    started = time.monotonic()
    out = subprocess.run(
        [*ROOMD, "check", "r301", "-c", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and time.monotonic() - started < 15
    assert "daemon for site hq is unknown on this broker" in out.stderr
    assert "no answer from the daemon" in out.stderr
    wrong = subprocess.run(
        [*ROOMD, "check", "r999", "-c", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert wrong.returncode == 2 and "no room 'r999'" in wrong.stderr
