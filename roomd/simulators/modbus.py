"""Simulated Modbus sensors: Modbus TCP servers on 127.0.0.1 and RTU buses on pseudo-terminals.

They speak the real frames (pymodbus's framers and PDU classes, server side), take their register
layout from the same device model the driver reads, and can be told to misbehave.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, cast

from pymodbus.framer import FramerRTU, FramerSocket
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.bit_message import (
    ReadCoilsRequest,
    ReadCoilsResponse,
    ReadDiscreteInputsRequest,
    ReadDiscreteInputsResponse,
    WriteSingleCoilRequest,
    WriteSingleCoilResponse,
)
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
    WriteSingleRegisterRequest,
    WriteSingleRegisterResponse,
)

from ..daemon.profiles import DeviceModel, load_model
from ..drivers.modbus import split_rtu_frame
from .pty import Pty

Fault = Literal["none", "silent", "exception", "corrupt", "slow", "disconnect", "wrong_unit"]
FAULTS: tuple[Fault, ...] = (
    "none", "silent", "exception", "corrupt", "slow", "disconnect", "wrong_unit",
)  # fmt: skip

ValueSource = Callable[[str], float | None]


@dataclass
class SimSensor:
    """One sensor's registers. Values come from `source(metric)` unless pinned with `set`."""

    model: DeviceModel
    unit: int
    source: ValueSource | None = None
    fault: Fault = "none"
    planned: Fault = "none"  # the scenario's last fault, so manual faults are not undone
    slow_delay: float = 3.0
    pinned: dict[str, float] = field(default_factory=dict)
    written: dict[int, int] = field(default_factory=dict)
    coils: dict[int, bool] = field(default_factory=dict)  # relays as last switched
    contacts: dict[str, str | int] = field(default_factory=dict)  # bit metric → state or 0/1
    requests: int = 0

    @classmethod
    def of(cls, model: str, unit: int | None = None, **values: float) -> SimSensor:
        m = load_model(model)
        return cls(model=m, unit=m.default_unit if unit is None else unit, pinned=dict(values))

    def set(self, **values: float) -> None:
        self.pinned.update(values)

    def set_bits(self, **values: str | int) -> None:
        """A contact or relay by its metric: set_bits(door="open", lights="on")."""
        for metric, value in values.items():
            spec = next((b for b in self.model.bits if b.metric == metric), None)
            if spec is None:
                raise KeyError(f"model {self.model.model} has no bit {metric!r}")
            if spec.function == 1:
                self.coils[spec.address] = self._bit_of(spec.states, value) == 1
            else:
                self.contacts[metric] = value

    @staticmethod
    def _bit_of(states: tuple[str, str] | None, value: str | int) -> int:
        if isinstance(value, str):
            return states.index(value) if states and value in states else 0
        return 1 if value else 0

    def bits(self, function: int, address: int, count: int) -> list[bool] | None:
        """Coils (function 1) or discrete inputs (2) at [address, address+count)."""
        known: dict[int, bool] = {}
        for spec in self.model.bits:
            if spec.function == function:
                value = self.contacts.get(spec.metric, 0)
                known[spec.address] = self._bit_of(spec.states, value) == 1
        if function == 1:
            known.update(self.coils)
        if not known or address < min(known) or address + count - 1 > max(known):
            return None
        return [known.get(a, False) for a in range(address, address + count)]

    def value(self, metric: str) -> float:
        if metric in self.pinned:
            return self.pinned[metric]
        if self.source is not None:
            v = self.source(metric)
            if v is not None:
                return v
        return 0.0

    def registers(self, function: int, address: int, count: int) -> list[int] | None:
        """The words at [address, address+count), or None for an illegal address."""
        words: dict[int, int] = {}
        for spec in self.model.registers:
            if spec.function != function:
                continue
            for i, w in enumerate(spec.encode(self.value(spec.metric))):
                words[spec.address + i] = w
        if function == 3:
            words.update(self.written)
        if not words or address < min(words) or address + count - 1 > max(words):
            return None
        return [words.get(a, 0) for a in range(address, address + count)]

    def handle(self, request: ModbusPDU) -> ModbusPDU:
        self.requests += 1
        fc = request.function_code
        if self.fault == "exception":
            return ExceptionResponse(fc, 4)  # device failure
        if fc in (3, 4):
            regs = self.registers(fc, request.address, request.count)
            if regs is None:
                return ExceptionResponse(fc, 2)
            cls = ReadHoldingRegistersResponse if fc == 3 else ReadInputRegistersResponse
            return cls(registers=regs)
        if fc in (1, 2):
            bits = self.bits(fc, request.address, request.count)
            if bits is None:
                return ExceptionResponse(fc, 2)
            return (ReadCoilsResponse if fc == 1 else ReadDiscreteInputsResponse)(bits=bits)
        if fc == 5:
            if not any(b.function == 1 and b.address == request.address for b in self.model.bits):
                return ExceptionResponse(fc, 2)
            self.coils[request.address] = bool(request.bits[0])
            return WriteSingleCoilResponse(address=request.address, bits=list(request.bits))
        if fc == 6:
            self.written[request.address] = request.registers[0]
            return WriteSingleRegisterResponse(
                address=request.address, registers=list(request.registers)
            )
        return ExceptionResponse(fc, 1)


REQUESTS = (  # the request decoders the server side registers
    ReadHoldingRegistersRequest,
    WriteSingleRegisterRequest,
    ReadCoilsRequest,
    ReadDiscreteInputsRequest,
    WriteSingleCoilRequest,
)


def _reply_bytes(framer: FramerSocket | FramerRTU, request: ModbusPDU, reply: ModbusPDU) -> bytes:
    reply.dev_id = request.dev_id
    reply.transaction_id = request.transaction_id
    return bytes(framer.buildFrame(reply))


class _TcpSession(asyncio.Protocol):
    def __init__(self, server: ModbusTcpSim) -> None:
        self.server = server
        self.framer = FramerSocket(DecodePDU(is_server=True))
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are only alike
        limit = self.server.max_clients
        self.server.connections += 1
        if limit is not None and len(self.server.sessions) >= limit:
            # A single-client RS-485 gateway: the second controller is closed at once.
            self.server.refused += 1
            transport.close()
            return
        self.transport = transport
        self.server.sessions.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.sessions.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None:
            used, dev_id, tid, pdu_bytes = self.framer.decode(self.buffer)
            if not used:
                return
            self.buffer = self.buffer[used:]
            try:
                request = self.framer.decoder.decode(pdu_bytes)
            except Exception:
                request = None
            if request is None:
                continue
            request.dev_id, request.transaction_id = dev_id, tid
            self._answer(request)

    def _answer(self, request: ModbusPDU) -> None:
        if self.server.record_requests:
            self.server.request_times.append(time.monotonic())
        sensor = self.server.sensors.get(request.dev_id) or self.server.sensors.get(0)
        if sensor is None:
            # A gateway with no such unit answers "gateway target failed to respond".
            reply: ModbusPDU = ExceptionResponse(request.function_code, 11)
            self._send(_reply_bytes(self.framer, request, reply))
            return
        if sensor.fault == "silent":
            return
        if sensor.fault == "disconnect":
            assert self.transport is not None
            self.transport.abort()
            return
        if sensor.fault == "corrupt":
            self._send(b"\x13\x37\xde\xad\xbe\xef\x00\x01\x02\x03\x04")
            return
        frame = _reply_bytes(self.framer, request, sensor.handle(request))
        if sensor.fault == "wrong_unit":  # a confused gateway: the reply names another unit
            frame = frame[:6] + bytes([(frame[6] + 1) & 0xFF]) + frame[7:]
        if sensor.fault == "slow":
            asyncio.get_running_loop().call_later(sensor.slow_delay, self._send, frame)
        else:
            self._send(frame)

    def _send(self, frame: bytes) -> None:
        if self.transport is not None:
            self.transport.write(frame)


class ModbusTcpSim:
    """A Modbus TCP server on 127.0.0.1 hosting one or more units (a sensor or a gateway)."""

    def __init__(
        self,
        sensors: list[SimSensor],
        host: str = "127.0.0.1",
        port: int = 0,
        max_clients: int | None = None,
        record_requests: bool = False,
    ) -> None:
        self.sensors = {s.unit: s for s in sensors}
        self.host = host
        self.port = port
        self.max_clients = max_clients  # gateways often serve one client; None: any number
        self.server: asyncio.Server | None = None
        self.sessions: set[_TcpSession] = set()
        self.connections = 0
        self.refused = 0
        self.record_requests = record_requests  # benchmarks: when each request arrived
        self.request_times: list[float] = []

    @property
    def sensor(self) -> SimSensor:
        return next(iter(self.sensors.values()))

    async def start(self) -> ModbusTcpSim:
        self.server = await asyncio.get_running_loop().create_server(
            lambda: _TcpSession(self), self.host, self.port, reuse_address=True
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def drop_connections(self) -> None:
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.abort()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.drop_connections()
            await self.server.wait_closed()
            self.server = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class ModbusRtuSim:
    """An RS-485 bus on a pseudo-terminal. The driver opens `path`; units share the line."""

    def __init__(self, sensors: list[SimSensor]) -> None:
        self.sensors = {s.unit: s for s in sensors}
        self.framer = FramerRTU(DecodePDU(is_server=True))
        self.pty = Pty(self._data)
        self.buffer = b""
        self.frames_seen = 0
        self.frame_times: list[tuple[float, int]] = []  # (arrival, unit): bus timing in tests

    @property
    def path(self) -> str:
        return self.pty.path

    def start(self) -> ModbusRtuSim:
        self.pty.start()
        return self

    def _data(self, data: bytes) -> None:
        self.buffer += data
        self._process()

    def _process(self) -> None:
        while len(self.buffer) >= 4:
            used, dev_id, pdu_bytes = split_rtu_frame(self.framer, self.buffer)
            if not used:
                return
            self.buffer = self.buffer[used:]
            if pdu_bytes is None:
                continue  # bad CRC: a real slave stays silent
            self.frames_seen += 1
            self.frame_times.append((time.monotonic(), dev_id))
            try:
                request = self.framer.decoder.decode(pdu_bytes)
            except Exception:
                continue
            if request is None:
                continue
            request.dev_id = dev_id
            sensor = self.sensors.get(dev_id)
            if sensor is None or sensor.fault in ("silent", "disconnect"):
                continue  # not ours: another unit on the bus would answer
            if sensor.fault == "corrupt":
                broken = bytearray(_reply_bytes(self.framer, request, sensor.handle(request)))
                broken[-1] ^= 0xFF  # break the CRC
                self._write(bytes(broken))
                continue
            frame = _reply_bytes(self.framer, request, sensor.handle(request))
            if sensor.fault == "slow":
                asyncio.get_running_loop().call_later(sensor.slow_delay, self._write, frame)
            else:
                self._write(frame)

    def _write(self, frame: bytes) -> None:
        self.pty.write(frame)

    def stop(self) -> None:
        self.pty.close()
