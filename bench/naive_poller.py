#!/usr/bin/env python3
"""The naive peer: what a competent engineer writes in an afternoon (asyncio + paho).

One task per device: connect, send FC03 (2 registers), read the reply, publish an MQTT message
when CO2 is above the threshold, sleep the rest of the second. No rules engine, no state, no
metrics, no store: the floor a daemon with all of those is compared against.
"""

import asyncio
import json
import random
import struct
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

THRESHOLD = 1000


async def poll(client: mqtt.Client, index: int, port: int, interval: float) -> None:
    await asyncio.sleep(random.uniform(0, interval))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    tid = 0
    while True:
        started = time.monotonic()
        tid = (tid + 1) & 0xFFFF
        writer.write(struct.pack(">HHHBBHH", tid, 0, 6, 1, 3, 0, 2))
        reply = await asyncio.wait_for(reader.readexactly(13), 1.0)
        co2, temp = struct.unpack_from(">Hh", reply, 9)
        if co2 > THRESHOLD:
            payload = json.dumps({"device": index, "co2_ppm": co2, "temperature_c": temp / 10})
            client.publish(f"naive/dev{index}/alert", payload, qos=1)
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))


async def main(ports: list[int], mqtt_port: int, interval: float) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="naive-poller")
    client.connect("127.0.0.1", mqtt_port)
    client.loop_start()
    await asyncio.gather(*(poll(client, i, p, interval) for i, p in enumerate(ports)))


if __name__ == "__main__":
    ports = json.loads(Path(sys.argv[1]).read_text())
    asyncio.run(main(ports, int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 1.0))
