#!/usr/bin/env python3
"""MQTT clients on roomd's hot path: CPU per QoS 1 retained publish, acknowledged.

The path: one retained state message (≈150 bytes, QoS 1) per device poll, published from the
asyncio event loop, with the broker's PUBACK read back. Each client publishes --messages such
messages to a real Mosquitto (started here on a free port) at --rate per second, as a daemon
would, and waits for every acknowledgement; the figure is this process's CPU time (user +
system) per message, so the client's threads count too.

Clients: paho-mqtt (its own network thread, the usual way), paho-mqtt driven by the asyncio loop
(add_reader/add_writer, as roomd did before), gmqtt and amqtt's client (asyncio-native; not
project dependencies: `pip install gmqtt` to include it), and roomd's own wire
(roomd/daemon/sinks/mqtt_wire.py).

Usage: python bench/mqtt_clients.py [--messages 20000] [--rate 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAYLOAD = (
    b'{"online":true,"readings":{"co2_ppm":612,"temperature_c":22.1},'
    b'"ts":"2026-11-30T14:00:00.123Z"}'
)


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def paced(n: int, rate: float, publish: Callable[[int], None]) -> None:
    """Publish n messages at `rate` a second, in bursts each millisecond, like polls do."""
    start = time.monotonic()
    sent = 0
    while sent < n:
        due = min(n, int((time.monotonic() - start) * rate) + 1)
        while sent < due:
            publish(sent)
            sent += 1
        await asyncio.sleep(0.001)


async def run_paho_thread(port: int, n: int, rate: float) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    acked = threading.Event()
    count = 0

    def on_publish(*_: object) -> None:
        nonlocal count
        count += 1
        if count == n:
            acked.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-paho", protocol=mqtt.MQTTv311)
    c.max_inflight_messages_set(1000)
    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    await paced(n, rate, lambda i: c.publish(f"bench/dev{i % 5000}/state", PAYLOAD, 1, True))
    await asyncio.to_thread(acked.wait, 60)
    c.loop_stop()
    c.disconnect()


async def run_paho_loop(port: int, n: int, rate: float) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    loop = asyncio.get_running_loop()
    done = loop.create_future()
    count = 0

    def on_publish(*_: object) -> None:
        nonlocal count
        count += 1
        if count == n and not done.done():
            done.set_result(None)

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-paho2", protocol=mqtt.MQTTv311)
    c.max_inflight_messages_set(1000)
    c.on_publish = on_publish
    c.on_socket_open = lambda cl, u, s: loop.add_reader(s, cl.loop_read)
    c.on_socket_register_write = lambda cl, u, s: loop.add_writer(s, cl.loop_write)
    c.on_socket_unregister_write = lambda cl, u, s: loop.remove_writer(s)
    c.on_socket_close = lambda cl, u, s: loop.remove_reader(s)
    c.connect("127.0.0.1", port)

    async def misc() -> None:
        while True:
            await asyncio.sleep(1)
            c.loop_misc()

    task = asyncio.create_task(misc())
    await paced(n, rate, lambda i: c.publish(f"bench/dev{i % 5000}/state", PAYLOAD, 1, True))
    await asyncio.wait_for(done, 60)
    task.cancel()
    c.disconnect()


async def run_gmqtt(port: int, n: int, rate: float) -> None:
    from gmqtt import Client
    from gmqtt.mqtt.constants import MQTTv311

    loop = asyncio.get_running_loop()
    done = loop.create_future()
    count = 0
    from gmqtt.mqtt.handler import MqttPackageHandler

    orig = MqttPackageHandler._handle_puback_packet

    def on_publish() -> None:
        nonlocal count
        count += 1
        if count == n and not done.done():
            done.set_result(None)

    def puback(self: object, cmd: int, packet: bytes) -> None:
        orig(self, cmd, packet)  # type: ignore[arg-type]
        on_publish()

    # gmqtt has no public "acknowledged" callback: count PUBACKs where it handles them.
    MqttPackageHandler._handle_puback_packet = puback  # type: ignore[method-assign,assignment]
    c = Client("bench-gmqtt")
    await c.connect("127.0.0.1", port, version=MQTTv311)
    await paced(
        n, rate, lambda i: c.publish(f"bench/dev{i % 5000}/state", PAYLOAD, qos=1, retain=True)
    )
    await asyncio.wait_for(done, 60)
    await c.disconnect()


async def run_amqtt(port: int, n: int, rate: float) -> None:
    from amqtt.client import MQTTClient

    c = MQTTClient(client_id="bench-amqtt")
    await c.connect(f"mqtt://127.0.0.1:{port}/")
    pending: list[asyncio.Task[object]] = []
    await paced(
        n,
        rate,
        lambda i: pending.append(
            asyncio.ensure_future(
                c.publish(f"bench/dev{i % 5000}/state", PAYLOAD, qos=1, retain=True)
            )
        ),
    )
    await asyncio.wait_for(asyncio.gather(*pending), 120)
    await c.disconnect()


async def run_roomd_wire(port: int, n: int, rate: float) -> None:
    from roomd.daemon.sinks.mqtt_wire import Connection, connect_packet

    loop = asyncio.get_running_loop()
    done = loop.create_future()
    count = 0

    def on_puback(mid: int) -> None:
        nonlocal count
        count += 1
        if count == n and not done.done():
            done.set_result(None)

    conn = await Connection.open(
        "127.0.0.1",
        port,
        ssl_context=None,
        connect=connect_packet("bench-roomd", 60),
        keepalive=60,
        timeout=5,
        on_message=lambda t, p, r: None,
        on_puback=on_puback,
    )
    await paced(
        n,
        rate,
        lambda i: conn.publish(f"bench/dev{i % 5000}/state", PAYLOAD, 1, True, i % 65535 + 1),
    )
    await asyncio.wait_for(done, 60)
    conn.close()


CLIENTS: dict[str, Callable[[int, int, float], Awaitable[None]]] = {
    "paho (own thread)": run_paho_thread,
    "paho (on the asyncio loop)": run_paho_loop,
    "gmqtt": run_gmqtt,
    "amqtt": run_amqtt,
    "roomd wire": run_roomd_wire,
}


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--rate", type=float, default=5000)
    ap.add_argument("--only", help="one client by name")
    args = ap.parse_args()
    if args.only is None:  # each client in a fresh process: no warm caches or threads left over
        for name in CLIENTS:
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--messages",
                    str(args.messages),
                    "--rate",
                    str(args.rate),
                    "--only",
                    name,
                ]
            )
        return 0
    work = Path(tempfile.mkdtemp())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (work / "m.conf").write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\n"
        "max_inflight_messages 0\nmax_queued_messages 0\n"
    )
    broker = subprocess.Popen(
        [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(work / "m.conf")],
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            factory = None
        with asyncio.Runner(loop_factory=factory) as runner:
            c0, t0 = cpu(), time.monotonic()
            try:
                runner.run(CLIENTS[args.only](port, args.messages, args.rate))
            except ImportError as exc:
                print(f"{args.only:28s} not installed ({exc.name})")
                return 0
            c1, t1 = cpu(), time.monotonic()
        print(
            f"{args.only:28s} {1e6 * (c1 - c0) / args.messages:7.1f} µs CPU a message "
            f"({args.messages} in {t1 - t0:.1f} s)",
            flush=True,
        )
        return 0
    finally:
        broker.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            broker.wait(5)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
