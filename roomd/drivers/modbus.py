"""Modbus TCP and RTU sensors, driven by a register map (a device model in YAML).

pymodbus supplies the codec (PDU classes, socket and RTU framers); the transport is a bare
asyncio Protocol because pymodbus's own async client costs 70-115 µs per request, most of
our 100 µs poll budget. One TCP connection per host:port (a gateway's units share it, matched
by transaction id); one serialized bus per serial port (a silent unit costs one timeout).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from types import MethodType
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pymodbus.framer import FramerRTU, FramerSocket
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.bit_message import (
    ReadCoilsRequest,
    ReadDiscreteInputsRequest,
    WriteSingleCoilRequest,
)
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadInputRegistersRequest,
    WriteMultipleRegistersRequest,
    WriteSingleRegisterRequest,
)

from ..daemon.checktypes import CheckContext, CheckItem
from ..daemon.profiles import BitBlock, DeviceModel, ReadBlock, load_model, plan_reads
from ..daemon.units import Duration
from ..tcp import stream_transport
from . import register
from .base import (
    ArgSpec,
    CommandError,
    CommandSpec,
    DeviceConfig,
    DeviceError,
    DeviceProtocolError,
    DeviceRefused,
    DeviceTimeout,
    DeviceUnreachable,
    Driver,
    DriverContext,
    Readings,
    restore_after_check,
    split_host,
)
from .serial_port import open_serial

UNOCCUPIED = "unoccupied_setpoint_c"  # the write a device model names for an empty room

log = logging.getLogger("roomd.modbus")

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


class ModbusConfig(DeviceConfig):
    driver: Literal["modbus"]
    model: str
    host: str | None = None
    port: str | None = Field(None, description="serial device for Modbus RTU, e.g. /dev/ttyUSB0")
    unit: int | None = Field(None, ge=0, le=255)
    baudrate: int | None = Field(None, gt=0)
    parity: Literal["N", "E", "O"] | None = None
    stopbits: Literal[1, 2] | None = None
    bytesize: Literal[7, 8] | None = None
    poll: Duration = 5.0
    timeout: Duration = 1.0
    delay_after_connect: Duration = 0.0
    # TCP: connections this device's host:port may have at once (gateways often take one).
    max_connections: int = Field(1, ge=1, le=16)
    # RTU: silence on the bus after a unit did not answer, before the next request. A slave
    # still busy with the unanswered frame drops what comes next: a libmodbus slave lost the
    # request sent 100 ms after a timeout and took the one sent 300 ms after (its own response
    # timeout is 500 ms). Modbus's 3.5 character times is the floor, not the default.
    quiet_after_timeout: Duration = 0.5

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        load_model(value)  # ProfileError is a ValueError: reported against `model`
        return value

    @model_validator(mode="after")
    def _one_link(self) -> ModbusConfig:
        if (self.host is None) == (self.port is None):
            raise ValueError("give `host` (Modbus TCP) or `port` (Modbus RTU serial), exactly one")
        if self.host is not None:
            _split_host(self.host)
        return self

    @property
    def device_model(self) -> DeviceModel:
        return load_model(self.model)

    def serial_line(self) -> tuple[str, tuple[Any, ...] | None] | None:
        if self.port is None:
            return None
        s = self.device_model.serial
        return self.port, (
            self.baudrate or s.baudrate,
            self.parity or s.parity,
            self.stopbits or s.stopbits,
            self.bytesize or s.bytesize,
        )


def _split_host(value: str) -> tuple[str, int]:
    return split_host(value, 502)


_RESPONSES = DecodePDU(is_server=False)


def decode_response(pdu_bytes: bytes) -> ModbusPDU:
    """pymodbus's response classes, without DecodePDU.decode's eager debug formatting (~8 µs)."""
    try:
        fc = pdu_bytes[0]
        if fc & 0x80:
            exc = ExceptionResponse(fc & 0x7F)
            exc.decode(pdu_bytes[1:])
            return exc
        pair = _RESPONSES.pdu_table.get(fc)
        if pair is None:
            raise DeviceProtocolError(f"reply with unknown function code {fc}")
        pdu = pair[1]()
        pdu.decode(pdu_bytes[1:])
        return pdu
    except DeviceProtocolError:
        raise
    except Exception as exc:  # pymodbus raises several types for malformed PDUs
        raise DeviceProtocolError(f"undecodable reply {pdu_bytes[:16].hex()}: {exc}") from None


_READ_REQUESTS: dict[int, type[ModbusPDU]] = {
    1: ReadCoilsRequest,
    2: ReadDiscreteInputsRequest,
    3: ReadHoldingRegistersRequest,
    4: ReadInputRegistersRequest,
}
_Callback = Callable[[bytes | BaseException], None]
_TID = struct.Struct(">H")  # MBAP transaction id
_READ_TAIL = struct.Struct(">HHBBHH")  # the rest of MBAP (0, 6, unit) + function, address, count


def read_request_tail(unit: int, block: ReadBlock) -> bytes:
    """A read request's frame after its transaction id: the same for every poll."""
    return _READ_TAIL.pack(0, 6, unit, block.function, block.address, block.count)


_MBAP = struct.Struct(">HHHB")
# Stateless for building frames: one for every link.
_SOCKET_FRAMER = FramerSocket(DecodePDU(is_server=False))


def _resolve(waiter: asyncio.Future[ModbusPDU] | _Callback, exc: BaseException) -> None:
    if isinstance(waiter, asyncio.Future):
        if not waiter.done():
            waiter.set_exception(exc)
    else:
        waiter(exc)


def _registers(pdu: bytes, block: ReadBlock) -> bytes:
    """The register bytes of an FC03/FC04 reply to `block`'s request, checked as `_request`
    checks a decoded reply (exception replies, function, byte count)."""
    fc = pdu[0] if pdu else 0
    if fc & 0x80 and len(pdu) >= 2:
        code = pdu[1]
        raise DeviceRefused(
            f"Modbus exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')}) "
            f"for function {fc & 0x7F} at {block.address}"
        )
    if fc != block.function:
        raise DeviceProtocolError(f"reply function {fc} to request function {block.function}")
    want = block.reply_bytes
    if len(pdu) < 2 or pdu[1] != len(pdu) - 2:
        raise DeviceProtocolError(f"undecodable reply {pdu[:16].hex()}")
    if pdu[1] != want:
        raise DeviceProtocolError(f"asked {want} bytes of data, got {pdu[1]}")
    return pdu[2:]


class _DeadlineSweep:
    """Timeouts of fast-path requests: a wheel of SWEEP-wide buckets served by one timer,
    instead of a timer per request (replies on a LAN take a millisecond; a timeout may fire
    up to SWEEP late). A request costs one append; a bucket falls due once."""

    SWEEP = 0.05

    def __init__(self) -> None:
        self.buckets: dict[int, list[tuple[_TcpLink, int]]] = {}
        self.timer: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def watch(self, link: _TcpLink, tid: int, deadline: float) -> None:
        # The link's own loop: asyncio.get_running_loop() costs a getpid() system call a
        # call on Python 3.11.
        if self.loop is not link.loop:  # a new event loop (tests): the old one's are gone
            self.buckets.clear()
            self.timer, self.loop = None, link.loop
        point = int(deadline / self.SWEEP) + 1
        bucket = self.buckets.get(point)
        if bucket is not None:
            bucket.append((link, tid))
            return
        self.buckets[point] = [(link, tid)]
        if self.timer is None:
            self.timer = link.loop.call_later(self.SWEEP, self._tick)

    def _tick(self) -> None:
        assert self.loop is not None
        now = self.loop.time()
        due = now / self.SWEEP
        for point in [p for p in self.buckets if p <= due]:
            for link, tid in self.buckets.pop(point):
                entry = link.pending.get(tid)
                if entry is not None and entry[2] <= now:  # not answered, not a reused id
                    link._expire(tid)
        self.timer = self.loop.call_later(self.SWEEP, self._tick) if self.buckets else None


_SWEEP = _DeadlineSweep()
_NO_DEADLINE = float("inf")  # a `request`'s own timer keeps its time


class _TcpLink(asyncio.Protocol):
    """One Modbus TCP connection; requests matched to replies by transaction id."""

    # 5,000 of them, one touched a poll: slots keep each to a few cache lines.
    __slots__ = ("buffer", "framer", "last_reply", "loop", "next_tid", "pending", "transport")
    loop: asyncio.AbstractEventLoop

    def __init__(self) -> None:
        self.framer = _SOCKET_FRAMER
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        # transaction id → (the future of a `request` or the callback of a `send_fast`, the
        # unit it was sent to, its deadline for the sweep, its timeout): one entry a request.
        self.pending: dict[int, tuple[asyncio.Future[ModbusPDU] | _Callback, int, float, float]]
        self.pending = {}
        self.next_tid = 0
        self.last_reply = 0.0  # loop time of the last frame received

    @classmethod
    async def open(cls, host: str, port: int, timeout: float) -> _TcpLink:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, link = await loop.create_connection(cls, host, port)
        except TimeoutError:
            raise DeviceTimeout(f"no TCP connection to {host}:{port} within {timeout:g}s") from None
        except OSError as exc:
            raise DeviceUnreachable(
                f"cannot connect to {host}:{port}: {exc.strerror or exc}"
            ) from None
        return link

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = stream_transport(transport)
        self.loop = asyncio.get_running_loop()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail_all(DeviceUnreachable("connection closed by the device"))

    def _fail_all(self, exc: DeviceError) -> None:
        pending = list(self.pending.values())
        self.pending.clear()
        for waiter, _unit, _deadline, _timeout in pending:
            _resolve(waiter, exc)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        while len(buf) >= 8:
            # MBAP: transaction id, protocol id (0), length (unit + PDU), unit.
            tid, protocol, length, unit = _MBAP.unpack_from(buf)
            if protocol != 0 or not 2 <= length <= 254:
                # Not an MBAP header: the stream is garbage from here on. Resync by reconnecting.
                self._fail_all(DeviceProtocolError(f"corrupt Modbus TCP frame: {buf[:16].hex()}"))
                self.close()
                return
            used = 6 + length
            if len(buf) < used:
                break
            pdu_bytes = buf[7:used]
            buf = buf[used:] if len(buf) > used else b""  # one frame a read, as a rule
            self.last_reply = self.loop.time()
            entry = self.pending.pop(tid, None)
            if entry is None:
                continue  # a late reply to a request that already timed out
            waiter, expected = entry[0], entry[1]
            if unit != expected:
                # Behind a gateway, a reply from the wrong unit is someone else's reading.
                _resolve(
                    waiter,
                    DeviceProtocolError(f"reply from unit {unit} to a request for unit {expected}"),
                )
                continue
            # The fast path's callback decodes its own reply. A type test first: isinstance()
            # that finds no match looks up __class__ too, on every reply.
            if type(waiter) is MethodType or not isinstance(waiter, asyncio.Future):
                waiter(pdu_bytes)
                continue
            if waiter.done():
                continue
            try:
                waiter.set_result(decode_response(pdu_bytes))
            except DeviceProtocolError as exc:
                waiter.set_exception(exc)
        self.buffer = buf

    async def request(self, pdu: ModbusPDU, timeout: float) -> ModbusPDU:
        if self.transport is None:
            raise DeviceUnreachable("not connected")
        self.next_tid = (self.next_tid + 1) & 0xFFFF or 1
        pdu.transaction_id = self.next_tid
        loop = self.loop
        fut: asyncio.Future[ModbusPDU] = loop.create_future()
        tid = pdu.transaction_id
        self.pending[tid] = (fut, pdu.dev_id, _NO_DEADLINE, timeout)
        self.transport.write(self.framer.buildFrame(pdu))
        # A bare timer is much cheaper than asyncio.timeout() on this hot path.
        timer = loop.call_later(timeout, self._expire, tid)
        try:
            return await fut
        finally:
            timer.cancel()

    def send_fast(self, request: bytes, unit: int, timeout: float, on_reply: _Callback) -> None:
        """A request without a future or timer of its own: `request` is its frame after the
        transaction id (read_request_tail); `on_reply` gets the reply's PDU bytes or an error,
        exactly once, on the loop. Its deadline is kept by the sweep."""
        assert self.transport is not None
        self.next_tid = tid = (self.next_tid + 1) & 0xFFFF or 1
        deadline = self.loop.time() + timeout
        self.pending[tid] = (on_reply, unit, deadline, timeout)
        _SWEEP.watch(self, tid, deadline)
        self.transport.write(_TID.pack(tid) + request)  # cheaper than packing all seven

    def _expire(self, tid: int) -> None:
        entry = self.pending.pop(tid, None)
        if entry is not None:
            _resolve(entry[0], DeviceTimeout(f"no reply within {entry[3]:g}s"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class TcpGateway:
    """Every device at one host:port shares its connections (RS-485-to-TCP gateways often take
    a single client; a second connection is refused or drops the first). Units are told apart
    by unit id and multiplexed by transaction id; up to `max_connections` links are opened,
    the least busy one carries the next request."""

    __slots__ = ("_opening", "host", "links", "max_connections", "port", "users")

    def __init__(self, host: str, port: int, max_connections: int) -> None:
        self.host, self.port = host, port
        self.max_connections = max_connections
        self.links: list[_TcpLink] = []
        self.users = 0
        self._opening: asyncio.Lock | None = None  # made on first use: 5,000 cost memory

    def _pick(self) -> _TcpLink | None:
        """The least busy open link, unless every one is busy and another may be opened."""
        links = self.links
        if len(links) == 1:  # the common case, on every poll: no list or key function
            link = links[0]
            if link.transport is not None and (not link.pending or self.max_connections == 1):
                return link
        self.links = [link for link in self.links if link.transport is not None]
        if not self.links:
            return None
        best = min(self.links, key=lambda link: len(link.pending))
        if best.pending and len(self.links) < self.max_connections:
            return None
        return best

    async def link(self, timeout: float, delay_after_connect: float) -> _TcpLink:
        link = self._pick()
        if link is not None:
            return link
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:  # devices polled at once open one connection, not N
            link = self._pick()  # another device may have opened one meanwhile
            if link is not None:
                return link
            link = await _TcpLink.open(self.host, self.port, timeout)
            if delay_after_connect:
                await asyncio.sleep(delay_after_connect)
            self.links.append(link)
            return link

    def release(self) -> None:
        self.users -= 1
        if self.users <= 0:
            self.close()

    def close(self) -> None:
        for link in self.links:
            link.close()
        self.links = []


def split_rtu_frame(framer: FramerRTU, data: bytes) -> tuple[int, int, bytes | None]:
    """Find the first whole RTU frame in `data` using pymodbus's PDU size rules and CRC.

    Returns (bytes consumed, unit, pdu bytes); pdu is None for a bad CRC; consumed is 0 when
    more bytes are needed. Unlike FramerRTU.decode, bytes after the frame are left alone, so
    two frames read at once are both seen.
    """
    for start in range(len(data)):
        if len(data) - start < framer.MIN_SIZE:
            return 0, 0, b""
        pdu_class = framer.decoder.lookupPduClass(data[start:])
        if pdu_class is None:
            continue
        size = pdu_class.calculateRtuFrameSize(data[start:])
        if not size:
            return 0, 0, b""
        if len(data) < start + size:
            return 0, 0, b""
        end = start + size
        crc = int.from_bytes(data[end - 2 : end], "big")
        if not FramerRTU.check_CRC(data[start : end - 2], crc):
            return end, data[start], None
        return end, data[start], data[start + 1 : end - 2]
    return 0, 0, b""


class RtuBus:
    """One RS-485 line. Requests are serialized; each waits for one reply frame or its timeout."""

    def __init__(self, port: str, baudrate: int, parity: str, stopbits: int, bytesize: int) -> None:
        self.port = port
        self.settings = {
            "baudrate": baudrate,
            "parity": parity,
            "stopbits": stopbits,
            "bytesize": bytesize,
        }
        self.framer = FramerRTU(DecodePDU(is_server=False))
        self.lock = asyncio.Lock()
        self.transport: asyncio.BaseTransport | None = None
        self.buffer = b""
        self.waiter: asyncio.Future[None] | None = None
        # Modbus RTU wants ≥ 3.5 character times of silence between frames.
        self.gap = max(0.00175, 3.5 * 11 / baudrate)
        self.quiet_after_timeout = self.gap  # raised by the devices' config

    async def _ensure_open(self) -> None:
        if self.transport is None:
            self.transport = await open_serial(
                self.port, self.on_data, self.on_lost, **self.settings
            )

    def on_data(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def on_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(DeviceUnreachable(f"{self.port} closed: {exc or 'EOF'}"))

    async def request(self, pdu: ModbusPDU, timeout: float) -> ModbusPDU:
        async with self.lock:
            await self._ensure_open()
            assert self.transport is not None
            self.buffer = b""  # drop late bytes from a unit that answered after its timeout
            self.transport.write(self.framer.buildFrame(pdu))  # type: ignore[attr-defined]
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            gap = self.gap
            try:
                while True:
                    reply = self._take_frame(pdu.dev_id)
                    if reply is not None:
                        return reply
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        gap = max(gap, self.quiet_after_timeout)
                        raise DeviceTimeout(
                            f"unit {pdu.dev_id} on {self.port}: no reply within {timeout:g}s"
                        )
                    self.waiter = loop.create_future()
                    try:
                        async with asyncio.timeout(remaining):
                            await self.waiter
                    except TimeoutError:
                        gap = max(gap, self.quiet_after_timeout)
                        raise DeviceTimeout(
                            f"unit {pdu.dev_id} on {self.port}: no reply within {timeout:g}s"
                        ) from None
                    finally:
                        self.waiter = None
            finally:
                await asyncio.sleep(gap)

    def _take_frame(self, dev_id: int) -> ModbusPDU | None:
        if len(self.buffer) < 4:
            return None
        used, got_dev, pdu_bytes = split_rtu_frame(self.framer, self.buffer)
        if not used:
            return None
        self.buffer = self.buffer[used:]
        if pdu_bytes is None:
            raise DeviceProtocolError(
                f"unit {dev_id} on {self.port}: bad CRC or garbage on the bus"
            )
        if got_dev != dev_id:
            return None  # another unit's (late) frame: keep waiting for ours
        return decode_response(pdu_bytes)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


def _done(names: list[str]) -> str | None:
    """Named writes as a person reads them: "lights off, blinds up"."""
    return ", ".join(name.replace("_", " ") for name in names) or None


_PLANS: dict[int, tuple[DeviceModel, list[ReadBlock]]] = {}


def _planned(model: DeviceModel) -> list[ReadBlock]:
    """The model's read plan, one for every device of that model (models are loaded once): the
    blocks and their decoders stay warm in the cache across 5,000 devices."""
    entry = _PLANS.get(id(model))
    if entry is None or entry[0] is not model:
        entry = _PLANS[id(model)] = (model, plan_reads(model))
    return entry[1]


@register
class ModbusDriver(Driver):
    kind = "modbus"
    config_model = ModbusConfig
    self_timed = True  # connect, every request and the bus lock wait are bounded

    def __init__(self, config: DeviceConfig, context: DriverContext) -> None:
        super().__init__(config, context)
        assert isinstance(config, ModbusConfig)
        self.cfg: ModbusConfig = config
        self.model = config.device_model
        self.unit = config.unit if config.unit is not None else self.model.default_unit
        self.blocks: list[ReadBlock] = _planned(self.model)
        # The fast path's plan: each block, its good reply's PDU length (function, byte count,
        # data) and its request frame.
        self._fast_plan = [
            (b, 2 + b.reply_bytes, read_request_tail(self.unit, b)) for b in self.blocks
        ]
        self._gateway: TcpGateway | None = None
        self._bus: RtuBus | None = None
        self._switched_for_check: list[str] = []  # coils prepare_check turned, to turn back
        # The fast path's poll in flight (start_poll)
        self._fast_done: Callable[[Readings | BaseException], None] | None = None
        self._fast_link: _TcpLink | None = None
        self._fast_readings: Readings = {}
        self._fast_index = 0
        self._on_reply = self._fast_reply
        self._timeout = config.timeout
        if config.port is not None:
            self._bus = self._shared_bus(config)

    def _shared_bus(self, cfg: ModbusConfig) -> RtuBus:
        key = f"modbus-rtu:{cfg.port}"
        bus = self.context.shared.get(key)
        if bus is None:
            s = self.model.serial
            bus = RtuBus(
                str(cfg.port),
                cfg.baudrate or s.baudrate,
                cfg.parity or s.parity,
                cfg.stopbits or s.stopbits,
                cfg.bytesize or s.bytesize,
            )
            self.context.shared[key] = bus
        bus.quiet_after_timeout = max(bus.quiet_after_timeout, cfg.quiet_after_timeout, bus.gap)
        return bus

    @property
    def metrics(self) -> list[str]:
        return self.model.metrics

    def _shared_gateway(self) -> TcpGateway:
        assert self.cfg.host is not None
        host, port = _split_host(self.cfg.host)
        key = f"modbus-tcp:{host}:{port}"
        gateway = self.context.shared.get(key)
        if gateway is None:
            gateway = self.context.shared[key] = TcpGateway(host, port, self.cfg.max_connections)
        # The strictest limit any of its devices names wins (a single-client gateway).
        gateway.max_connections = min(gateway.max_connections, self.cfg.max_connections)
        return gateway

    async def _link(self) -> _TcpLink:
        if self._gateway is None:
            self._gateway = self._shared_gateway()
            self._gateway.users += 1
        return await self._gateway.link(self.cfg.timeout, self.cfg.delay_after_connect)

    async def _request(self, pdu: ModbusPDU) -> ModbusPDU:
        pdu.dev_id = self.unit
        if self._bus is not None:
            reply = await self._bus.request(pdu, self.cfg.timeout)
        else:
            link = await self._link()
            try:
                reply = await link.request(pdu, self.cfg.timeout)
            except DeviceTimeout:
                # One silent unit behind a gateway says nothing about the connection; a link
                # that has heard nothing for several timeouts is dead: reconnect.
                quiet = link.loop.time() - link.last_reply
                if quiet > 3 * self.cfg.timeout:
                    link.close()
                raise
        if isinstance(reply, ExceptionResponse) or reply.function_code & 0x80:
            code = reply.exception_code
            raise DeviceRefused(
                f"Modbus exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')}) "
                f"for function {pdu.function_code} at {pdu.address}"
            )
        if reply.function_code != pdu.function_code:
            raise DeviceProtocolError(
                f"reply function {reply.function_code} to request function {pdu.function_code}"
            )
        return reply

    async def poll(self) -> Readings:
        readings: Readings = {}
        for block in self.blocks:
            cls = _READ_REQUESTS[block.function]
            reply = await self._request(cls(address=block.address, count=block.count))
            if isinstance(block, BitBlock):
                if len(reply.bits) < block.count:
                    raise DeviceProtocolError(f"asked {block.count} bits, got {len(reply.bits)}")
                block.decode_bits(reply.bits, readings)
                continue
            regs = reply.registers
            if len(regs) != block.count:
                raise DeviceProtocolError(f"asked {block.count} registers, got {len(regs)}")
            block.decode(regs, readings)
        return readings

    def start_poll(self, done: Callable[[Readings | BaseException], None]) -> bool:
        """Modbus TCP on an open link: each block's request and reply by callbacks, no task.
        The first poll, RTU buses and reconnects go through `poll()`."""
        gateway = self._gateway
        if gateway is None or self._bus is not None:
            return False
        link = gateway._pick()
        if link is None or link.transport is None:
            return False
        # One poll in flight a device (the engine's rule): its state lives on the driver and
        # the reply callback is one bound method made once, not a closure a poll.
        self._fast_done, self._fast_link = done, link
        self._fast_readings, self._fast_index = {}, 0
        link.send_fast(self._fast_plan[0][2], self.unit, self._timeout, self._on_reply)
        return True

    def _fast_reply(self, result: bytes | BaseException) -> None:
        done, link = self._fast_done, self._fast_link
        assert done is not None and link is not None
        if type(result) is not bytes:  # an error (a type test: see _TcpLink.data_received)
            assert isinstance(result, BaseException)
            if isinstance(result, DeviceTimeout):
                quiet = link.loop.time() - link.last_reply
                if quiet > 3 * self.cfg.timeout:  # see _request: a dead link, not a silent unit
                    link.close()
            done(result)
            return
        blocks, readings = self._fast_plan, self._fast_readings
        block, size, _request = blocks[self._fast_index]
        try:
            # A good reply checked inline (its length, function and byte count as asked);
            # exception and malformed replies by _registers, which says what is wrong.
            if len(result) == size and result[0] == block.function and result[1] == size - 2:
                block.decode_raw(result[2:], readings)
            else:
                block.decode_raw(_registers(result, block), readings)
        except DeviceError as exc:
            done(exc)
            return
        index = self._fast_index = self._fast_index + 1
        if index == len(blocks):
            done(readings)
        elif link.transport is None:
            done(DeviceUnreachable("connection closed by the device"))
        else:
            link.send_fast(blocks[index][2], self.unit, self._timeout, self._on_reply)

    async def write(self, name: str, value: float | None = None) -> int:
        """Write one of the model's named registers (e.g. an unoccupied setpoint) or coils
        (a relay: lights off)."""
        coil = self.model.coils.get(name)
        if coil is not None:
            if value is not None:
                raise CommandError(f"coil write {name!r} takes no value: it sets {coil.value}")
            await self._request(WriteSingleCoilRequest(address=coil.address, bits=[coil.value]))
            return int(coil.value)
        spec = self.model.writes.get(name)
        if spec is None:
            raise CommandError(f"model {self.model.model} has no write {name!r}")
        target = spec.value if value is None else value
        if target is None:
            raise CommandError(f"write {name!r} needs a value")
        try:
            words = spec.registers(float(target))
        except (ValueError, OverflowError) as exc:
            raise CommandError(f"write {name!r}: {exc}") from None
        if len(words) == 1:
            request: ModbusPDU = WriteSingleRegisterRequest(address=spec.address, registers=words)
        else:
            request = WriteMultipleRegistersRequest(address=spec.address, registers=words)
        await self._request(request)
        return words[0] if len(words) == 1 else int.from_bytes(struct.pack(">2H", *words))

    async def _writes(self, names: list[str]) -> str | None:
        """The model's named writes, in order; what was done, for the event and the log."""
        for name in names:
            await self.write(name)
        return _done(names)

    async def shutdown(self) -> str | None:
        """After the meeting: the model's `after_meeting` writes (lights off, blinds up) and its
        unoccupied setpoint, where it defines them."""
        done = await self._writes(self.model.after_meeting)
        spec = self.model.writes.get(UNOCCUPIED)
        if spec is None or UNOCCUPIED in self.model.after_meeting:
            return done
        await self.write(UNOCCUPIED)
        setpoint = f"climate set to its unoccupied setpoint ({spec.value:g})"
        return f"{done}, {setpoint}" if done else setpoint

    async def prewarm(self) -> str | None:
        return await self._writes(self.model.before_meeting)

    async def prepare_check(self) -> str | None:
        """The model's `before_check` writes. A coil already in that state is left alone, and
        only what this switched is switched back after a check far from the meeting."""
        self._switched_for_check = []
        written = []
        for name in self.model.before_check:
            coil = self.model.coils.get(name)
            if coil is not None:
                reply = await self._request(ReadCoilsRequest(address=coil.address, count=1))
                if bool(reply.bits[0]) == coil.value:
                    continue
                self._switched_for_check.append(name)
            await self.write(name)
            written.append(name)
        return _done(written)

    async def self_test(self, ctx: CheckContext) -> list[CheckItem]:
        switched, self._switched_for_check = self._switched_for_check, []
        return await restore_after_check(ctx, switched, self._opposite, self._writes)

    def _opposite(self, name: str) -> str | None:
        """The coil write that undoes `name` (lights_on → lights_off)."""
        coil = self.model.coils[name]
        return next(
            (n for n, c in self.model.coils.items()
             if c.address == coil.address and c.value != coil.value),
            None,
        )  # fmt: skip

    def command_specs(self) -> list[CommandSpec]:
        """One form per named write of the model: a button when it writes a fixed value."""
        specs = [
            CommandSpec("write", (ArgSpec("register", fixed=name),), label=name)
            for name in sorted(self.model.coils)
        ]
        for reg, spec in sorted(self.model.writes.items()):
            args = [ArgSpec("register", fixed=reg)]
            if spec.value is None:
                args.append(ArgSpec("value", min=spec.min, max=spec.max))
            specs.append(CommandSpec("write", tuple(args), label=reg))
        return specs

    async def command(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        if name == "write":
            reg = args.get("register")
            if not isinstance(reg, str):
                raise CommandError("args.register: the name of a write in the device model")
            value = args.get("value")
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise CommandError("args.value: a number")
            try:
                raw = await self.write(reg, value)
            except DeviceError as exc:
                raise CommandError(str(exc)) from None
            return {"register": reg, "raw": raw}
        return await super().command(name, args)

    async def close(self) -> None:
        if self._gateway is not None:
            self._gateway.release()  # the connection closes with its last device
            self._gateway = None
        # An RTU bus is shared: the supervisor closes it when its last device stops.
