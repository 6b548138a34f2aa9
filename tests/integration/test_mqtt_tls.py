"""Secure broker connections: Mosquitto with TLS (certificates made here), a password file and
an ACL that limits roomd's user to its prefix."""

from __future__ import annotations

import logging
import os
import shutil
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import free_port, until, write_config
from tests.integration.test_daemon import running


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(d: Path, name: str) -> None:
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.crt",
        cwd=d,
    )


def make_cert(d: Path, ca: str, name: str) -> None:
    (d / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        f"/CN={name}",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        cwd=d,
    )
    openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.crt",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        f"{name}.ext",
        "-out",
        f"{name}.crt",
        cwd=d,
    )


@pytest.fixture
def secure_broker(tmp_path: Path) -> Any:
    d = tmp_path / "tls"
    d.mkdir()
    make_ca(d, "ca")
    make_ca(d, "otherca")
    make_cert(d, "ca", "server")
    passwd = d / "passwd"
    passwd.write_text("")
    for user, pw in (("roomd", "roomd-secret"), ("observer", "observer-secret")):
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, pw], check=True, timeout=30)
    (d / "acl").write_text(
        "user roomd\ntopic readwrite roomd/#\n\n"
        "user observer\ntopic read roomd/#\ntopic readwrite other/#\n"
    )
    port = free_port()
    conf = d / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\ncafile {d}/ca.crt\ncertfile {d}/server.crt\n"
        f"keyfile {d}/server.key\nallow_anonymous false\npassword_file {passwd}\n"
        f"acl_file {d}/acl\n" + ("user root\n" if os.geteuid() == 0 else "")
        # Started as root, mosquitto would switch to its own user, who cannot read these files.
    )
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(0.5)
    yield port, d
    proc.terminate()
    proc.wait(10)


class Observer:
    def __init__(self, port: int, d: Path, user: str, password: str, topics: list[str]) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.ready = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.c.username_pw_set(user, password)
        self.c.tls_set(ca_certs=str(d / "ca.crt"), cert_reqs=ssl.CERT_REQUIRED)
        self.c.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in topics])
        self.c.on_subscribe = lambda *_: self.ready.set()
        self.c.on_message = lambda c, u, m: self.got.append((m.topic, bytes(m.payload)))
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.ready.wait(10)

    def stop(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def site(tmp_path: Path, port: int, mqtt_cfg: dict[str, Any]) -> Path:
    return write_config(
        tmp_path / "roomd.yaml",
        {
            "site": "hq",
            "mqtt": {"url": f"mqtts://127.0.0.1:{port}", **mqtt_cfg},
            "http": {"listen": f"127.0.0.1:{free_port()}"},
            "state_dir": str(tmp_path / "state"),
            "rooms": [{"id": "r1"}],
        },
    )


async def test_tls_password_connects_and_publishes(tmp_path: Path, secure_broker: Any) -> None:
    port, d = secure_broker
    (d / "roomd.pass").write_text("roomd-secret\n")
    cfg = site(
        tmp_path,
        port,
        {"username": "roomd", "password_file": str(d / "roomd.pass"), "ca_file": str(d / "ca.crt")},
    )
    obs = Observer(port, d, "observer", "observer-secret", ["roomd/#", "other/#"])
    try:
        async with running(cfg) as daemon:
            await until(
                lambda: ("roomd/hq/_daemon/availability", b"online") in obs.got,
                10,
                "availability over TLS",
            )
            # The ACL limits roomd's user to its prefix: the broker drops the rest.
            conn = daemon.mqtt._conn
            assert conn is not None
            conn.publish("other/leak", b"x", 1, False, 60001)
            conn.publish("roomd/hq/probe", b"y", 1, False, 60002)
            await until(lambda: ("roomd/hq/probe", b"y") in obs.got, 10, "own prefix delivered")
            assert ("other/leak", b"x") not in obs.got
    finally:
        obs.stop()


async def test_wrong_ca_and_wrong_password_fail_clearly(
    tmp_path: Path, secure_broker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    port, d = secure_broker
    caplog.set_level(logging.ERROR, logger="roomd")
    (d / "roomd.pass").write_text("roomd-secret\n")
    cfg = site(
        tmp_path,
        port,
        {
            "username": "roomd",
            "password_file": str(d / "roomd.pass"),
            "ca_file": str(d / "otherca.crt"),
        },
    )
    from roomd.daemon.config import load_config
    from roomd.daemon.supervisor import Daemon

    daemon = Daemon(load_config(cfg))
    import asyncio

    task = asyncio.create_task(daemon.run())
    try:
        await until(lambda: "certificate verify failed" in caplog.text, 10, "a TLS error")
        assert f"MQTT: cannot connect to 127.0.0.1:{port}" in caplog.text
        assert not daemon.mqtt.connected.is_set()
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 10)
    caplog.clear()
    (d / "roomd.pass").write_text("wrong\n")
    cfg = site(
        tmp_path,
        port,
        {"username": "roomd", "password_file": str(d / "roomd.pass"), "ca_file": str(d / "ca.crt")},
    )
    daemon = Daemon(load_config(cfg))
    task = asyncio.create_task(daemon.run())
    try:
        await until(lambda: "refused" in caplog.text, 10, "a refusal")
        assert "MQTT: broker refused the connection: not authorized" in caplog.text
        assert "wrong" not in caplog.text.replace("wrong password", "")  # the secret never logged
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 10)


def test_password_without_tls_to_a_remote_host_warns(tmp_path: Path) -> None:
    """Checked on the config alone: no test connects to a host off this machine."""
    from roomd.daemon.config import load_config
    from roomd.daemon.supervisor import startup_warnings

    (tmp_path / "p").write_text("pw\n")

    def warnings(url: str) -> list[str]:
        mqtt = {"url": url, "username": "u", "password_file": str(tmp_path / "p")}
        cfg = write_config(
            tmp_path / "roomd.yaml",
            {"site": "hq", "mqtt": mqtt, "state_dir": str(tmp_path / "s"), "rooms": [{"id": "r1"}]},
        )
        return startup_warnings(load_config(cfg))

    remote = "mqtt://broker.example.invalid:1883"
    assert "sending a password without TLS to broker.example.invalid" in " ".join(warnings(remote))
    assert "without TLS" not in " ".join(warnings("mqtt://127.0.0.1:1883"))
    assert "without TLS" not in " ".join(warnings("mqtts://broker.example.invalid:8883"))
