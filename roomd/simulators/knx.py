"""A KNXnet/IP tunnelling server on UDP with a room's KNX devices behind it: a switch actuator
for the lights (with its status object), blinds, door and window contacts, and a lux sensor that
sees the lights. Strict as an IP interface is: one tunnel at a time (a second client gets
E_NO_MORE_CONNECTIONS), every tunnelling request acknowledged and confirmed (L_Data.con), reads
of unknown group addresses unanswered (nothing on a real bus answers them either).

The frames are xknx's (KNXIPFrame, CEMIFrame), the same bytes as on a real installation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from xknx.cemi import CEMIFrame, CEMILData, CEMIMessageCode
from xknx.dpt import DPTArray, DPTBinary, DPTLux, DPTScaling, DPTTemperature
from xknx.knxip import (
    HPAI,
    ConnectionStateRequest,
    ConnectionStateResponse,
    ConnectRequest,
    ConnectResponse,
    ConnectResponseData,
    DisconnectRequest,
    DisconnectResponse,
    ErrorCode,
    KNXIPFrame,
    TunnellingAck,
    TunnellingRequest,
)
from xknx.telegram import GroupAddress, IndividualAddress, Telegram
from xknx.telegram.apci import GroupValueRead, GroupValueResponse, GroupValueWrite

from .udp import UdpServerSim

log = logging.getLogger("roomd.sim.knx")

# The simulated room's group addresses (as an ETS project would give them).
ROOM_ADDRESSES: dict[str, Any] = {
    "lights": {"write": "1/0/1", "state": "1/0/2"},
    "blinds": "1/1/1",
    "blinds_position_pct": "1/1/2",
    "door": "1/2/1",
    "window": "1/2/2",
    "illuminance_lux": "1/3/1",
    "temperature_c": "1/3/2",
}
CLIENT_ADDRESS = IndividualAddress("1.1.250")  # given to the tunnel's client
BUS_DEVICE = IndividualAddress("1.1.10")  # the sender of the room's telegrams


@dataclass
class _Tunnel:
    channel: int
    control: tuple[str, int]
    data: tuple[str, int]
    sequence: int = 0  # of our requests to the client


@dataclass
class KnxRoomState:
    """What the room's KNX devices hold, by group address."""

    objects: dict[str, DPTBinary | DPTArray] = field(default_factory=dict)
    # a write to the key also sets the value (a switch actuator's status object)
    status_of: dict[str, str] = field(default_factory=dict)
    daylight_lux: float = 80.0
    lit_lux: float = 650.0


class KnxGatewaySim(UdpServerSim):
    def __init__(self) -> None:
        self.tunnel: _Tunnel | None = None
        self.room = KnxRoomState()
        self.writes: list[tuple[str, Any]] = []  # (group address, value) the client wrote
        self.silent = False  # the interface lost its bus or hangs: answers nothing
        room = self.room
        room.status_of["1/0/1"] = "1/0/2"
        for address in ("1/0/1", "1/0/2", "1/1/1", "1/2/1", "1/2/2"):
            room.objects[address] = DPTBinary(0)
        room.objects["1/1/2"] = DPTScaling.to_knx(0)
        room.objects["1/3/2"] = DPTTemperature.to_knx(22.0)
        self._update_lux()

    # ---- the room, as a test or the demo changes it --------------------------------------------

    def set_contact(self, address: str, is_open: bool) -> None:
        """A door or window contact changes: its state telegram goes on the bus."""
        self._set(address, DPTBinary(1 if is_open else 0), announce=True)

    @property
    def lights_on(self) -> bool:
        value = self.room.objects["1/0/2"]
        return isinstance(value, DPTBinary) and bool(value.value)

    def _update_lux(self) -> None:
        on = self.lights_on if "1/0/2" in self.room.objects else False
        lux = self.room.lit_lux if on else self.room.daylight_lux
        self.room.objects["1/3/1"] = DPTLux.to_knx(lux)

    def _set(self, address: str, value: DPTBinary | DPTArray, announce: bool) -> None:
        self.room.objects[address] = value
        status = self.room.status_of.get(address)
        if status is not None:
            self.room.objects[status] = value
            if announce or status != address:
                self._indicate(status, GroupValueWrite(value))
        elif announce:
            self._indicate(address, GroupValueWrite(value))
        before = self.room.objects.get("1/3/1")
        self._update_lux()
        if self.room.objects["1/3/1"] != before:
            self._indicate("1/3/1", GroupValueWrite(self.room.objects["1/3/1"]))

    # ---- KNXnet/IP ------------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.silent:
            return
        try:
            frame, _ = KNXIPFrame.from_knx(data)
        except Exception as exc:  # garbage: an interface drops it
            log.debug("dropped a datagram from %s: %s", addr, exc)
            return
        body = frame.body
        if isinstance(body, ConnectRequest):
            self._connect(body, addr)
        elif isinstance(body, ConnectionStateRequest):
            ok = self.tunnel is not None and body.communication_channel_id == self.tunnel.channel
            status = ErrorCode.E_NO_ERROR if ok else ErrorCode.E_CONNECTION_ID
            reply = ConnectionStateResponse(body.communication_channel_id, status)
            self._send(reply, _endpoint(body.control_endpoint, addr))
        elif isinstance(body, DisconnectRequest):
            if self.tunnel is not None and body.communication_channel_id == self.tunnel.channel:
                self.tunnel = None
            reply_d = DisconnectResponse(body.communication_channel_id)
            self._send(reply_d, _endpoint(body.control_endpoint, addr))
        elif isinstance(body, TunnellingRequest):
            self._tunnelling(body, addr)
        # TunnellingAck from the client to our requests: nothing to do

    def _connect(self, body: ConnectRequest, addr: tuple[str, int]) -> None:
        control = _endpoint(body.control_endpoint, addr)
        if self.tunnel is not None:
            self._send(ConnectResponse(status_code=ErrorCode.E_NO_MORE_CONNECTIONS), control)
            return
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        self.tunnel = _Tunnel(1, control, _endpoint(body.data_endpoint, addr))
        reply = ConnectResponse(
            communication_channel=1,
            data_endpoint=HPAI(host, port),
            crd=ConnectResponseData(individual_address=CLIENT_ADDRESS),
        )
        self._send(reply, control)

    def _tunnelling(self, body: TunnellingRequest, addr: tuple[str, int]) -> None:
        tunnel = self.tunnel
        if tunnel is None or body.communication_channel_id != tunnel.channel:
            return
        self._send(TunnellingAck(tunnel.channel, body.sequence_counter), tunnel.data)
        try:
            cemi = CEMIFrame.from_knx(body.raw_cemi)
        except Exception as exc:
            log.debug("undecodable cEMI %s: %s", body.raw_cemi.hex(), exc)
            return
        if cemi.code != CEMIMessageCode.L_DATA_REQ or not isinstance(cemi.data, CEMILData):
            return
        # Confirm the frame went on the bus, as an interface does (L_Data.con).
        self._request(CEMIFrame(code=CEMIMessageCode.L_DATA_CON, info=cemi.info, data=cemi.data))
        address = str(cemi.data.dst_addr)
        payload = cemi.data.payload
        if isinstance(payload, GroupValueWrite):
            self.writes.append((address, payload.value))
            if address in self.room.objects:
                self._set(address, payload.value, announce=False)
        elif isinstance(payload, GroupValueRead) and address in self.room.objects:
            self._indicate(address, GroupValueResponse(self.room.objects[address]))

    def _indicate(self, address: str, payload: Any) -> None:
        telegram = Telegram(destination_address=GroupAddress(address), payload=payload)
        data = CEMILData.init_from_telegram(telegram, src_addr=BUS_DEVICE)
        self._request(CEMIFrame(code=CEMIMessageCode.L_DATA_IND, data=data))

    def _request(self, cemi: CEMIFrame) -> None:
        tunnel = self.tunnel
        if tunnel is None:
            return
        request = TunnellingRequest(tunnel.channel, tunnel.sequence, cemi.to_knx())
        tunnel.sequence = (tunnel.sequence + 1) % 256
        self._send(request, tunnel.data)

    def _send(self, body: Any, to: tuple[str, int]) -> None:
        self.reply(KNXIPFrame.init_from_body(body).to_knx(), to)


def _endpoint(hpai: HPAI, addr: tuple[str, int]) -> tuple[str, int]:
    """Where to answer: the HPAI's address, or the sender's when it says 0.0.0.0:0 (NAT)."""
    if hpai.ip_addr == "0.0.0.0" or hpai.port == 0:
        return addr
    return hpai.ip_addr, hpai.port
