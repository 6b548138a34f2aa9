"""A BACnet/IP air terminal (VAV box) for tests and the demo: a real BACnet device served by
bacpypes3 in its own process, with the points the `vav-box` model reads. The test changes a
value by writing `set analog-input,1 300` to its standard input.

    python -m roomd.simulators.bacnet --address 127.0.0.2/8:47808 --flow 540

Objects: analog-input,1 supply air flow (units from --flow-units), analog-input,2 zone
temperature (°C), analog-input,3 CO₂ (ppm), analog-output,1 damper (%). It answers ReadProperty
and ReadPropertyMultiple as the library's device does: errors for unknown objects or properties.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from bacpypes3.app import Application
from bacpypes3.argparse import SimpleArgumentParser
from bacpypes3.local.analog import AnalogInputObject, AnalogOutputObject


def _objects(args: argparse.Namespace) -> dict[str, object]:
    flags = [0, 0, 0, 0]
    return {
        "analog-input,1": AnalogInputObject(
            objectIdentifier=("analog-input", 1), objectName="supply-air-flow",
            presentValue=args.flow, units=args.flow_units, statusFlags=flags,
        ),
        "analog-input,2": AnalogInputObject(
            objectIdentifier=("analog-input", 2), objectName="zone-temperature",
            presentValue=args.temperature, units="degrees-celsius", statusFlags=flags,
        ),
        "analog-input,3": AnalogInputObject(
            objectIdentifier=("analog-input", 3), objectName="zone-co2",
            presentValue=args.co2, units="parts-per-million", statusFlags=flags,
        ),
        "analog-output,1": AnalogOutputObject(
            objectIdentifier=("analog-output", 1), objectName="damper",
            presentValue=args.damper, units="percent", statusFlags=flags,
            relinquishDefault=args.damper,
        ),
    }  # fmt: skip


async def serve(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="roomd-bacnet-sim")
    parser.add_argument("--address", default="127.0.0.2/8:47808")
    parser.add_argument("--instance", type=int, default=3011)
    parser.add_argument("--flow", type=float, default=540.0)
    parser.add_argument("--flow-units", default="cubic-meters-per-hour")
    parser.add_argument("--temperature", type=float, default=22.0)
    parser.add_argument("--co2", type=float, default=600.0)
    parser.add_argument("--damper", type=float, default=40.0)
    args = parser.parse_args(argv)
    device_args = SimpleArgumentParser().parse_args(
        ["--address", args.address, "--instance", str(args.instance), "--name", "vav-sim"]
    )
    app = Application.from_args(device_args)
    objects = _objects(args)
    for obj in objects.values():
        app.add_object(obj)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().split():
        if len(line) == 3 and line[0] == "set" and line[1] in objects:
            objects[line[1]].presentValue = float(line[2])  # type: ignore[attr-defined]
            print("ok", flush=True)
        else:
            print(f"error: {' '.join(line)}", flush=True)
    app.close()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1:]))
