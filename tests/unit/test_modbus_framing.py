"""Parser tests with a fake wire (split, corrupt, interleave), in the spirit of pymodbus's
test transport. Real sockets are in tests/integration."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.framer import FramerRTU, FramerSocket
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.register_message import ReadInputRegistersRequest, ReadInputRegistersResponse

from roomd.drivers.base import DeviceError, DeviceProtocolError
from roomd.drivers.modbus import RtuBus, _TcpLink


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def reply_frame(tid: int, regs: list[int], unit: int = 1) -> bytes:
    framer = FramerSocket(DecodePDU(is_server=True))
    pdu = ReadInputRegistersResponse(registers=regs, dev_id=unit, transaction_id=tid)
    return bytes(framer.buildFrame(pdu))


def test_request_bytes_are_modbus_tcp() -> None:
    async def go() -> None:
        link = _TcpLink()
        link.connection_made(FakeTransport())  # on the loop, as a transport calls it
        task = asyncio.create_task(
            link.request(ReadInputRegistersRequest(address=1, count=2, dev_id=1), 1)
        )
        await asyncio.sleep(0)
        assert link.transport is not None
        # tid 1, protocol 0, length 6, unit 1, FC04, address 1, count 2
        assert link.transport.written[0] == bytes.fromhex("0001 0000 0006 01 04 0001 0002")  # type: ignore[attr-defined]
        link.data_received(reply_frame(1, [235, 501]))
        reply = await task
        assert list(reply.registers) == [235, 501]

    asyncio.run(go())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=8))
def test_split_replies_reassemble(cuts: list[int]) -> None:
    async def go() -> None:
        link = _TcpLink()
        link.connection_made(FakeTransport())
        fut1 = asyncio.create_task(
            link.request(ReadInputRegistersRequest(address=0, count=3, dev_id=1), 1)
        )
        fut2 = asyncio.create_task(
            link.request(ReadInputRegistersRequest(address=0, count=1, dev_id=1), 1)
        )
        await asyncio.sleep(0)
        # Replies out of order, split at arbitrary points: matched by transaction id.
        stream = reply_frame(2, [7]) + reply_frame(1, [1, 2, 3])
        pos = 0
        for cut in cuts:
            link.data_received(stream[pos : pos + cut])
            pos += cut
        link.data_received(stream[pos:])
        assert list((await fut1).registers) == [1, 2, 3]
        assert list((await fut2).registers) == [7]

    asyncio.run(go())


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=300))
def test_garbage_never_crashes_the_tcp_parser(junk: bytes) -> None:
    async def go() -> None:
        link = _TcpLink()
        link.connection_made(FakeTransport())
        task = asyncio.create_task(
            link.request(ReadInputRegistersRequest(address=0, count=1, dev_id=1), 0.002)
        )
        await asyncio.sleep(0)
        link.data_received(junk)
        # A timeout or a protocol error are both fine; an uncaught crash is not.
        with contextlib.suppress(DeviceError):
            await task

    asyncio.run(go())


def test_non_mbap_bytes_are_a_protocol_error() -> None:
    async def go() -> None:
        link = _TcpLink()
        transport = FakeTransport()
        link.connection_made(transport)
        task = asyncio.create_task(
            link.request(ReadInputRegistersRequest(address=0, count=1, dev_id=1), 1)
        )
        await asyncio.sleep(0)
        link.data_received(b"\x13\x37\xde\xad\xbe\xef\x00\x01\x02\x03")
        with pytest.raises(DeviceProtocolError, match="corrupt Modbus TCP frame"):
            await task
        assert transport.closed

    asyncio.run(go())


def rtu_reply(unit: int, regs: list[int]) -> bytes:
    framer = FramerRTU(DecodePDU(is_server=True))
    return bytes(framer.buildFrame(ReadInputRegistersResponse(registers=regs, dev_id=unit)))


def test_rtu_frame_bytes_and_crc() -> None:
    # The classic example: unit 1, FC04, address 1, count 2 → CRC 0x0BC0 (sent low byte first... as
    # pymodbus packs it big-endian after its own swap): 01 04 00 01 00 02 20 0B
    framer = FramerRTU(DecodePDU(is_server=False))
    frame = framer.buildFrame(ReadInputRegistersRequest(address=1, count=2, dev_id=1))
    assert bytes(frame) == bytes.fromhex("01 04 0001 0002 200B")


def test_rtu_bus_takes_its_own_unit_and_rejects_bad_crc() -> None:
    bus = RtuBus("/dev/null", 9600, "N", 1, 8)
    bus.buffer = rtu_reply(7, [1]) + rtu_reply(1, [42, 43])  # a late reply from unit 7 first
    assert bus._take_frame(1) is None  # unit 7's frame is skipped
    reply = bus._take_frame(1)
    assert reply is not None and list(reply.registers) == [42, 43]
    broken = bytearray(rtu_reply(1, [5]))
    broken[-1] ^= 0xFF
    bus.buffer = bytes(broken)
    with pytest.raises(DeviceProtocolError, match="bad CRC"):
        bus._take_frame(1)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=300))
def test_garbage_never_crashes_the_rtu_parser(junk: bytes) -> None:
    bus = RtuBus("/dev/null", 9600, "N", 1, 8)
    bus.buffer = junk
    for _ in range(5):
        try:
            if bus._take_frame(1) is None:
                continue
        except DeviceProtocolError:
            continue
