"""`roomd discover`: find PJLink Class 2 projectors with a UDP `%2SRCH` and print config."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

from .drivers import pjlink_protocol as pj
from .drivers.base import DeviceAuthError, DeviceError
from .drivers.pjlink import PJLinkSession


@dataclass
class Found:
    ip: str
    mac: str
    info: dict[str, str] = field(default_factory=dict)
    note: str = ""


class _Collector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.found: dict[str, Found] = {}

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        mac = pj.parse_ackn(data)
        if mac and addr[0] not in self.found:
            self.found[addr[0]] = Found(ip=addr[0], mac=mac)


async def discover(
    address: str, port: int, tcp_port: int, timeout: float, password: str | None
) -> list[Found]:
    loop = asyncio.get_running_loop()
    local = "127.0.0.1" if address.startswith("127.") else "0.0.0.0"
    transport, proto = await loop.create_datagram_endpoint(
        _Collector, local_addr=(local, 0), allow_broadcast=True
    )
    try:
        transport.sendto(pj.encode("SRCH", "", 2).replace(b" \r", b"\r"), (address, port))
        await asyncio.sleep(timeout)
    finally:
        transport.close()
    found = sorted(proto.found.values(), key=lambda f: tuple(int(x) for x in f.ip.split(".")))
    await asyncio.gather(*(_identify(f, tcp_port, password) for f in found))
    return found


async def _identify(found: Found, tcp_port: int, password: str | None) -> None:
    try:
        session = await PJLinkSession.open(found.ip, tcp_port, password, 3.0)
    except DeviceAuthError:
        found.note = "needs a password (give --password-file)"
        return
    except DeviceError as exc:
        found.note = f"no PJLink answer on TCP {tcp_port}: {exc}"
        return
    try:
        for key, cmd in (
            ("class", "CLSS"),
            ("name", "NAME"),
            ("manufacturer", "INF1"),
            ("product", "INF2"),
        ):
            reply = await session.query(cmd)
            if reply.error is None:
                found.info[key] = reply.param
    except DeviceAuthError:
        found.note = "wrong password"
    except DeviceError as exc:
        found.note = f"query failed: {exc}"
    finally:
        session.close()


def snippet(found: list[Found], tcp_port: int) -> str:
    lines = []
    used: set[str] = set()
    for i, f in enumerate(found, 1):
        base = (
            re.sub(r"[^a-z0-9]+", "-", f.info.get("name", "").lower()).strip("-") or f"projector{i}"
        )
        dev_id, n = base[:40], 2
        while dev_id in used:
            dev_id, n = f"{base[:36]}-{n}", n + 1
        used.add(dev_id)
        host = f.ip if tcp_port == pj.PORT else f"{f.ip}:{tcp_port}"
        desc = ", ".join(x for x in (f.info.get("manufacturer"), f.info.get("product")) if x)
        cls = f.info.get("class")
        comment = "; ".join(
            x
            for x in (
                f'"{f.info["name"]}"' if "name" in f.info else "",
                desc,
                f"class {pj.parse_class(cls)}" if cls else "",
                f"MAC {f.mac}",
                f.note,
            )
            if x
        )
        lines.append(f'      - {{id: {dev_id}, driver: pjlink, host: "{host}"}}  # {comment}')
    return "\n".join(lines)
