"""An SNMP v1/v2c agent on UDP serving a table of values the caller controls: a switch port
(IF-MIB, POWER-ETHERNET-MIB) or a wireless access point's client table.

Strict as agents are: a request with the wrong community gets no answer at all (the manager
sees a timeout), an unknown OID gets noSuchObject (GET) or the next one (GETNEXT/GETBULK),
garbage is dropped. BER coding is pysnmp's; this file only answers.
"""

from __future__ import annotations

import bisect
import logging
from typing import Any

from pyasn1.codec.ber import decoder, encoder
from pyasn1.type.univ import Null
from pysnmp.proto import api
from pysnmp.proto.rfc1902 import Counter32, Counter64, Gauge32, Integer32, OctetString

from .udp import UdpServerSim

log = logging.getLogger("roomd.sim.snmp")

IF_TABLE = "1.3.6.1.2.1.2.2.1"
IF_X_TABLE = "1.3.6.1.2.1.31.1.1.1"
PETH_PORT_TABLE = "1.3.6.1.2.1.105.1.1.1"
MIKROTIK_RTAB_STRENGTH = "1.3.6.1.4.1.14988.1.1.1.2.1.3"

_TYPES: dict[str, Any] = {
    "integer": Integer32,
    "gauge": Gauge32,
    "counter": Counter32,
    "counter64": Counter64,
    "string": OctetString,
}


def _key(oid: str) -> tuple[int, ...]:
    return tuple(int(part) for part in oid.strip(".").split("."))


class SnmpAgentSim(UdpServerSim):
    def __init__(self, values: dict[str, tuple[str, Any]] | None = None, community: str = "public"):
        self.community = community.encode()
        self.values: dict[tuple[int, ...], tuple[str, Any]] = {}
        self._order: list[tuple[int, ...]] = []
        self.silent = False  # a switch that stopped answering (rebooting, ACL changed)
        for oid, value in (values or {}).items():
            self.set(oid, *value)

    # ---- what the test or demo controls -----------------------------------------------------

    def set(self, oid: str, kind: str, value: Any) -> None:
        if kind not in _TYPES:
            raise ValueError(f"SNMP type {kind!r}: one of {', '.join(_TYPES)}")
        key = _key(oid)
        if key not in self.values:
            bisect.insort(self._order, key)
        self.values[key] = (kind, value)

    def delete(self, oid: str) -> None:
        key = _key(oid)
        if self.values.pop(key, None) is not None:
            self._order.remove(key)

    @classmethod
    def switch_port(
        cls, index: int = 5, mbps: int = 1000, up: bool = True, poe: bool = True, **kw: Any
    ) -> SnmpAgentSim:
        sim = cls(**kw)
        sim.add_port(index, mbps, up, poe)
        return sim

    def add_port(self, index: int, mbps: int = 1000, up: bool = True, poe: bool = True) -> None:
        """One port of a switch: IF-MIB rows, and PoE delivering power."""
        self.set(f"{IF_TABLE}.2.{index}", "string", f"GigabitEthernet1/0/{index}")
        self.set(f"{IF_TABLE}.8.{index}", "integer", 1 if up else 2)
        for column in (13, 14, 19, 20):  # in discards, in errors, out discards, out errors
            self.set(f"{IF_TABLE}.{column}.{index}", "counter", 0)
        self.set(f"{IF_X_TABLE}.1.{index}", "string", f"Gi1/0/{index}")
        self.set(f"{IF_X_TABLE}.15.{index}", "gauge", mbps)
        if poe:
            self.set(f"{PETH_PORT_TABLE}.6.1.{index}", "integer", 3)  # deliveringPower

    @classmethod
    def access_point(cls, rssi: list[int], **kw: Any) -> SnmpAgentSim:
        sim = cls(**kw)
        sim.clients(rssi)
        return sim

    def clients(self, rssi: list[int]) -> None:
        """The registration table of a MikroTik AP: one signal strength per client."""
        for key in [
            k
            for k in self._order
            if k[: len(_key(MIKROTIK_RTAB_STRENGTH))] == _key(MIKROTIK_RTAB_STRENGTH)
        ]:
            self.delete(".".join(map(str, key)))
        for n, dbm in enumerate(rssi):
            mac = ".".join(str(b) for b in (0x4C, 0x5E, 0x0C, 0, 0, n + 1))
            self.set(f"{MIKROTIK_RTAB_STRENGTH}.{mac}.2", "integer", dbm)

    # ---- the agent ----------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.silent:
            return
        try:
            reply = self.answer(data)
        except Exception as exc:  # garbage: real agents drop it (and count snmpInASNParseErrs)
            log.debug("dropped a datagram from %s: %s", addr, exc)
            return
        if reply is not None:
            self.reply(reply, addr)

    def answer(self, data: bytes) -> bytes | None:
        version = int(api.decodeMessageVersion(data))
        pmod = api.PROTOCOL_MODULES[version]
        msg, _ = decoder.decode(data, asn1Spec=pmod.Message())
        if bytes(pmod.apiMessage.get_community(msg)) != self.community:
            return None  # wrong community: silence, as snmpd does
        req = pmod.apiMessage.get_pdu(msg)
        rsp = pmod.apiMessage.get_response(msg)
        rsp_pdu = pmod.apiMessage.get_pdu(rsp)
        varbinds = pmod.apiPDU.get_varbinds(req)
        if req.isSameTypeWith(pmod.GetRequestPDU()):
            out = [self._get(pmod, oid) for oid, _ in varbinds]
        elif req.isSameTypeWith(pmod.GetNextRequestPDU()):
            out = [self._next(pmod, oid) for oid, _ in varbinds]
        elif version != api.SNMP_VERSION_1 and req.isSameTypeWith(pmod.GetBulkRequestPDU()):
            out = self._bulk(pmod, req, varbinds)
        else:
            pmod.apiPDU.set_error_status(rsp_pdu, 17 if version else 2)  # notWritable / noSuchName
            out = list(varbinds)
        pmod.apiPDU.set_varbinds(rsp_pdu, out)
        return bytes(encoder.encode(rsp))

    def _value(self, key: tuple[int, ...]) -> Any:
        kind, value = self.values[key]
        return _TYPES[kind](value.encode() if isinstance(value, str) else value)

    def _get(self, pmod: Any, oid: Any) -> tuple[Any, Any]:
        key = tuple(oid)
        if key in self.values:
            return oid, self._value(key)
        return oid, api.v2c.NoSuchObject() if pmod is api.v2c else Null()

    def _next(self, pmod: Any, oid: Any) -> tuple[Any, Any]:
        i = bisect.bisect_right(self._order, tuple(oid))
        if i < len(self._order):
            key = self._order[i]
            return pmod.ObjectIdentifier(key), self._value(key)
        return oid, api.v2c.EndOfMibView()

    def _bulk(self, pmod: Any, req: Any, varbinds: list[Any]) -> list[Any]:
        non_rep = int(pmod.apiBulkPDU.get_non_repeaters(req))
        reps = min(int(pmod.apiBulkPDU.get_max_repetitions(req)), 50)
        out = [self._next(pmod, oid) for oid, _ in varbinds[:non_rep]]
        cursors = [oid for oid, _ in varbinds[non_rep:]]
        for _ in range(reps):
            step = [self._next(pmod, oid) for oid in cursors]
            out += step
            cursors = [oid for oid, _ in step]
        return out
