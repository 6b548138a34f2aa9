"""roomd's MQTT 3.1.1 wire, parser side: frames split anywhere, oversize and malformed input."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from roomd.daemon.sinks.mqtt_wire import Connection, publish_packet, remaining_length


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.aborted

    def get_extra_info(self, name: str) -> Any:
        return None

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass


def decode_length(data: bytes) -> int:
    value, shift = 0, 0
    for byte in data:
        value |= (byte & 0x7F) << shift
        shift += 7
    return value


@pytest.mark.parametrize("n", [0, 127, 128, 16383, 16384, 2097151, 2097152, 268435455])
def test_remaining_length(n: int) -> None:
    encoded = remaining_length(n)
    assert (
        decode_length(encoded) == n
        and len(encoded) == (1, 2, 3, 4)[(n > 127) + (n > 16383) + (n > 2097151)]
    )


def wire(max_packet: int = 1024) -> tuple[Connection, list[Any]]:
    events: list[Any] = []
    conn = Connection(
        on_message=lambda t, p, r: events.append(("msg", t, p, r)),
        on_puback=lambda mid: events.append(("ack", mid)),
        max_packet=max_packet,
    )
    conn.connection_made(FakeTransport())  # type: ignore[arg-type]
    conn.on_oversize = lambda n: events.append(("oversize", n))
    return conn, events


STREAM = (
    bytes((0x40, 2, 0, 7))
    + b"\x33" + remaining_length(2 + 7 + 2 + 5) + b"\x00\x07a/b/cmd" + b"\x00\x09" + b"hello"
    + bytes((0x40, 2, 1, 2))
    + publish_packet(b"\x00\x01x", b"y" * 300, 0, False, 0)
)  # fmt: skip
EXPECTED = [
    ("ack", 7),
    ("msg", b"a/b/cmd", b"hello", True),
    ("ack", 258),
    ("msg", b"x", b"y" * 300, False),
]


async def test_frames_split_at_every_byte_give_the_same_packets() -> None:
    for cut in range(1, len(STREAM)):
        conn, events = wire()
        conn.data_received(STREAM[:cut])
        conn.data_received(STREAM[cut:])
        assert events == EXPECTED, cut
    conn, events = wire()
    for i in range(len(STREAM)):
        conn.data_received(STREAM[i : i + 1])
    assert events == EXPECTED
    await asyncio.sleep(0)  # the PUBACK for the QoS 1 message went out in the next loop pass
    assert b"\x40\x02\x00\x09" in b"".join(conn.transport.written)  # type: ignore[union-attr]


async def test_an_oversize_message_is_skipped_and_the_next_one_read() -> None:
    big = publish_packet(b"\x00\x01x", b"z" * 5000, 0, False, 0)
    conn, events = wire(max_packet=1024)
    data = big + bytes((0x40, 2, 0, 1))
    for i in range(0, len(data), 700):
        conn.data_received(data[i : i + 700])
    assert events == [("oversize", len(big) - 3), ("ack", 1)]


async def test_malformed_input_ends_the_connection_with_a_reason() -> None:
    conn, _ = wire()
    conn.data_received(b"\x30\xff\xff\xff\xff\x01")  # a 5-byte remaining length
    assert conn.closed.done() and "longer than 4 bytes" in conn.closed.result()
    conn, _ = wire()
    conn.data_received(bytes((0xF0, 0)))  # AUTH: not MQTT 3.1.1
    assert "unexpected packet type 0xf0" in conn.closed.result()
    conn, _ = wire()
    conn.data_received(b"\x30\x03\x00\x09a")  # topic longer than the packet
    assert "topic longer than the packet" in conn.closed.result()
