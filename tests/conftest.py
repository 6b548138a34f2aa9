"""Shared fixtures: a real Mosquitto on a free port, an MQTT recorder, config writing."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """A real broker, started by the test, restartable on the same port with persistence."""

    def __init__(self, workdir: Path, persistence: bool = True) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            pytest.fail("mosquitto is not installed: run ./scripts/test, which installs it")
        self.binary = binary
        self.port = free_port()
        self.dir = workdir
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            # As root Mosquitto would switch to its own user, which cannot write the test's
            # folder: persistence would silently fail. Ignored when not run as root.
            + "user root\n"
            + (
                f"persistence true\npersistence_location {workdir}/\nautosave_interval 1\n"
                if persistence
                else "persistence false\n"  # Mosquitto's default: a restart forgets everything
            )
            + "max_queued_messages 10000\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "mosquitto.log", "ab"),  # noqa: SIM115
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    d = tmp_path / "broker"
    d.mkdir()
    broker = Mosquitto(d)
    broker.start()
    yield broker
    broker.stop()


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool
    at: float

    def json(self) -> Any:
        return json.loads(self.payload)


class Recorder:
    """Subscribes to everything and keeps what arrives, in order."""

    def __init__(
        self, port: int, topic: str = "#", client_id: str | None = None, clean: bool = True
    ) -> None:
        self.messages: list[Message] = []
        self.lock = threading.Lock()
        self.port = port
        self.topic = topic
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"rec-{id(self):x}",
            clean_session=clean,
        )
        self.client.on_connect = lambda c, *_: c.subscribe(self.topic, 1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(
                Message(msg.topic, bytes(msg.payload), bool(msg.retain), time.time())
            )

    def start(self) -> Recorder:
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        assert self.subscribed.wait(5), "recorder could not subscribe"
        return self

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def on(self, topic: str) -> list[Message]:
        with self.lock:
            return [m for m in self.messages if m.topic == topic]

    def matching(self, pred: Callable[[Message], bool]) -> list[Message]:
        with self.lock:
            return [m for m in self.messages if pred(m)]

    async def wait_for(
        self, pred: Callable[[Message], bool], timeout: float = 10.0, count: int = 1
    ) -> list[Message]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.matching(pred)
            if len(found) >= count:
                return found
            await asyncio.sleep(0.02)
        seen = "\n".join(f"  {m.topic} {m.payload[:120]!r}" for m in self.messages[-30:])
        raise AssertionError(
            f"timed out waiting for {count} matching message(s); last seen:\n{seen}"
        )

    def publish(self, topic: str, payload: Any, retain: bool = False) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.client.publish(topic, data, qos=1, retain=retain)


@pytest.fixture
def recorder_factory() -> Iterator[Callable[..., Recorder]]:
    made: list[Recorder] = []

    def make(port: int, **kw: Any) -> Recorder:
        r = Recorder(port, **kw).start()
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


async def until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# ---- no packet leaves loopback ---------------------------------------------------------------
# Every in-process socket's connect and sendto is checked: an address off this machine fails the
# test at once, before anything is sent (addresses that look harmless, 192.0.2.x or 10.x, are
# real hosts where the suite runs). Spawned processes only ever get 127.0.0.1 targets.

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_sendto = socket.socket.sendto


class OffLoopback(AssertionError):
    pass


def _check_address(sock: socket.socket, address: Any) -> None:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # unix sockets (pcscd, NOTIFY_SOCKET) stay on the machine
    host = address[0] if isinstance(address, tuple) else address
    import ipaddress

    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        if host == "localhost":
            return
        raise OffLoopback(f"test tried to reach {host!r}: only loopback addresses") from None
    if ip.is_loopback or (
        isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped and ip.ipv4_mapped.is_loopback
    ):
        return
    raise OffLoopback(f"test tried to reach {host}: only 127.0.0.0/8 and ::1 are allowed")


def _guarded_connect(self: socket.socket, address: Any) -> None:
    _check_address(self, address)
    _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    _check_address(self, address)
    return _real_connect_ex(self, address)


def _guarded_sendto(self: socket.socket, data: Any, *args: Any) -> int:
    _check_address(self, args[-1])
    return _real_sendto(self, data, *args)  # type: ignore[arg-type]


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
socket.socket.sendto = _guarded_sendto  # type: ignore[method-assign,assignment]
