#!/usr/bin/env python3
"""The floor: the least a Python process can spend on the comparison job on this machine.

uvloop, one bare asyncio Protocol per device, every request of a 5 ms tick sent in one pass,
each reply decoded in its `data_received`, an MQTT message (paho, its own thread) when above
the threshold. No timeouts, no reconnects, no rules, state, metrics or store: not a product,
a measure of what the event loop and the kernel's loopback TCP cost per poll, so that roomd's
and the naive poller's figures can be read against it (docs/benchmarks.md).
"""

import asyncio
import json
import struct
import sys
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import uvloop
from paho.mqtt.enums import CallbackAPIVersion

THRESHOLD = 1000
TICK = 0.005
REQUEST = struct.Struct(">HHHBBHH")
REPLY = struct.Struct(">Hh")


class Sensor(asyncio.Protocol):
    def __init__(self, index: int, client: mqtt.Client) -> None:
        self.index, self.client = index, client
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        co2, temp = REPLY.unpack_from(data, 9)
        if co2 > THRESHOLD:
            payload = json.dumps({"device": self.index, "co2_ppm": co2, "temperature_c": temp / 10})
            self.client.publish(f"floor/dev{self.index}/alert", payload, qos=1)


async def main(ports: list[int], mqtt_port: int, interval: float) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="floor-poller")
    client.connect("127.0.0.1", mqtt_port)
    client.loop_start()
    loop = asyncio.get_running_loop()
    sensors = []
    for i, port in enumerate(ports):
        _, sensor = await loop.create_connection(lambda i=i: Sensor(i, client), "127.0.0.1", port)
        sensors.append(sensor)
    per_tick = max(1, round(len(sensors) * TICK / interval))
    next_index, tid = 0, 0

    def tick() -> None:
        nonlocal next_index, tid
        loop.call_later(TICK, tick)
        for _ in range(per_tick):
            tid = (tid + 1) & 0xFFFF
            sensors[next_index].transport.write(REQUEST.pack(tid, 0, 6, 1, 3, 0, 2))
            next_index = (next_index + 1) % len(sensors)

    tick()
    await asyncio.Event().wait()


if __name__ == "__main__":
    ports = json.loads(Path(sys.argv[1]).read_text())
    interval = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
    uvloop.run(main(ports, int(sys.argv[2]), interval))
