"""systemd integration: the sd_notify protocol against a fake NOTIFY_SOCKET, and the unit file."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Mosquitto, free_port

ROOT = Path(__file__).resolve().parents[2]


def messages(sock: socket.socket, until: float) -> list[str]:
    out: list[str] = []
    while time.monotonic() < until:
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
    return out


def test_ready_watchdog_status_reload_stopping(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = tmp_path / "roomd.yaml"
    cfg.write_text(
        f"site: hq\nmqtt: {{url: '{mosquitto.url}'}}\nhttp: {{listen: '127.0.0.1:{free_port()}'}}\n"
        f"state_dir: {tmp_path}/state\nrooms: [{{id: r1}}]\n"
    )
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.1)
    env = dict(os.environ, NOTIFY_SOCKET=str(path), WATCHDOG_USEC="400000")
    proc = subprocess.Popen(
        [sys.executable, "-m", "roomd", "run", "-c", str(cfg)], env=env, stderr=subprocess.DEVNULL
    )
    try:
        got = messages(sock, time.monotonic() + 3.0)
        assert got[0].startswith("READY=1\nSTATUS=0/0 devices up, 0 alerts")
        pings = [m for m in got if m.startswith("WATCHDOG=1")]
        assert 8 <= len(pings) <= 16, got  # every 0.2 s: half of WatchdogSec
        proc.send_signal(signal.SIGHUP)
        got = messages(sock, time.monotonic() + 1.0)
        assert "RELOADING=1" in got
        assert any(m.startswith("READY=1") for m in got[got.index("RELOADING=1") :])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        got = messages(sock, time.monotonic() + 0.5)
        assert any(m.startswith("STOPPING=1") for m in got)
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()


def test_abstract_socket_address() -> None:
    from roomd.daemon.systemd import SdNotifier

    n = SdNotifier({"NOTIFY_SOCKET": "@roomd-test", "WATCHDOG_USEC": "30000000"})
    assert n.address == "\0roomd-test" and n.watchdog == 15.0
    assert not SdNotifier({}).enabled
    assert SdNotifier({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog is None


def test_unit_file_is_hardened_and_verifies() -> None:
    unit = (ROOT / "systemd" / "roomd.service").read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "DynamicUser=yes",
        "StateDirectory=roomd",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=",
        "SupplementaryGroups=dialout",
        "LimitNOFILE=65536",
        "SystemCallErrorNumber=EPERM",
    ):
        assert line in unit, line
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: ./scripts/test installs systemd")
    out = subprocess.run(
        [analyze, "verify", "--man=no", str(ROOT / "systemd" / "roomd.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # The unit names an ExecStart that does not exist on a build machine; anything else is an error.
    problems = [
        line
        for line in (out.stdout + out.stderr).splitlines()
        if line.strip()
        and "/opt/roomd/.venv/bin/roomd" not in line
        and "Failed to prepare filename" not in line
    ]
    assert not problems, problems
