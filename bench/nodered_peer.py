#!/usr/bin/env python3
"""The Node-RED peer: Node-RED 4 with node-red-contrib-modbus doing the comparison job.

Per device: a `modbus-client` (TCP) and a `modbus-read` node (FC03, 2 holding registers, every
second); one `function` node passes readings above 1000 ppm to one `mqtt out` node (QoS 1).
That is how the job is built in Node-RED's editor; this script writes it as flows.json and
runs Node-RED on it, with its editor and admin API on a loopback port.

Set up once (npm, beside the project; nothing is committed):
    mkdir -p /work/peers/nodered && cd /work/peers/nodered && npm init -y &&
    npm install node-red@4 node-red-contrib-modbus@5.23.3
(later releases of node-red-contrib-modbus fetch a dependency from outside the npm registry.)

Usage: python bench/nodered_peer.py --ports-file ports.json --mqtt-port 1883 --work DIR \
       --node-red-dir /work/peers/nodered [--exec]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any


def flows(ports: list[int], mqtt_port: int, poll_s: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"id": "tab", "type": "tab", "label": "bench"},
        {
            "id": "broker",
            "type": "mqtt-broker",
            "name": "mosquitto",
            "broker": "127.0.0.1",
            "port": str(mqtt_port),
            "clientid": "node-red-bench",
            "autoConnect": True,
            "usetls": False,
            "protocolVersion": "4",
            "keepalive": "60",
            "cleansession": True,
        },
        {
            "id": "above",
            "type": "function",
            "z": "tab",
            "name": "CO2 above 1000",
            "func": "if (msg.payload[0] > 1000) {\n"
            "  msg.payload = {device: msg.topic, co2_ppm: msg.payload[0],"
            " temperature_c: msg.payload[1] / 10};\n  return msg;\n}\nreturn null;",
            "outputs": 1,
            "wires": [["out"]],
        },
        {
            "id": "out",
            "type": "mqtt out",
            "z": "tab",
            "name": "alert",
            "topic": "nodered/alert",
            "qos": "1",
            "retain": "false",
            "broker": "broker",
            "wires": [],
        },
    ]
    for i, port in enumerate(ports):
        out.append(
            {
                "id": f"client{i}",
                "type": "modbus-client",
                "name": f"dev{i}",
                "clienttype": "tcp",
                "bufferCommands": True,
                "stateLogEnabled": False,
                "queueLogEnabled": False,
                "failureLogEnabled": False,
                "tcpHost": "127.0.0.1",
                "tcpPort": str(port),
                "tcpType": "DEFAULT",
                "serialPort": "/dev/null",
                "serialType": "RTU-BUFFERD",
                "serialBaudrate": "9600",
                "serialDatabits": "8",
                "serialStopbits": "1",
                "serialParity": "none",
                "serialConnectionDelay": "100",
                "unit_id": "1",
                "commandDelay": "1",
                "clientTimeout": "1000",
                "reconnectOnTimeout": True,
                "reconnectTimeout": "2000",
                "parallelUnitIdsAllowed": True,
            }
        )
        out.append(
            {
                "id": f"read{i}",
                "type": "modbus-read",
                "z": "tab",
                "name": f"dev{i}",
                "topic": f"dev{i}",
                "showStatusActivities": False,
                "logIOActivities": False,
                "showErrors": False,
                "unitid": "1",
                "dataType": "HoldingRegister",
                "adr": "0",
                "quantity": "2",
                "rate": str(int(poll_s * 1000)),
                "rateUnit": "ms",
                "delayOnStart": False,
                "startDelayTime": "",
                "server": f"client{i}",
                "useIOFile": False,
                "ioFile": "",
                "useIOForPayload": False,
                "emptyMsgOnFail": False,
                "wires": [["above"], []],
            }
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ports-file", type=Path, required=True)
    ap.add_argument("--mqtt-port", type=int, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--node-red-dir", type=Path, required=True)
    ap.add_argument("--poll", type=float, default=1.0)
    ap.add_argument("--exec", action="store_true", help="replace this process with Node-RED")
    args = ap.parse_args()
    ports = json.loads(args.ports_file.read_text())
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "flows.json").write_text(json.dumps(flows(ports, args.mqtt_port, args.poll)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        ui_port = s.getsockname()[1]
    (args.work / "settings.js").write_text(
        "module.exports = {\n"
        f"  uiPort: {ui_port}, uiHost: '127.0.0.1', flowFile: 'flows.json',\n"
        "  logging: {console: {level: 'warn'}},\n"
        "  editorTheme: {tours: false}, telemetry: {enabled: false},\n"
        "  diagnostics: {enabled: false}, externalModules: {autoInstall: false},\n"
        "};\n"
    )
    red = args.node_red_dir / "node_modules" / "node-red" / "red.js"
    cmd = ["node", "--max-old-space-size=4096", str(red), "-u", str(args.work)]
    cmd += ["-s", str(args.work / "settings.js")]
    env = {**os.environ, "NODE_PATH": str(args.node_red_dir / "node_modules")}
    # Node-RED looks for nodes in its user dir's node_modules: point it at the installed ones.
    link = args.work / "node_modules"
    if not link.exists():
        link.symlink_to(args.node_red_dir / "node_modules")
    if args.exec:
        os.chdir(args.work)
        os.execvpe("node", cmd, env)
    return subprocess.call(cmd, cwd=args.work, env=env)


if __name__ == "__main__":
    sys.exit(main())
