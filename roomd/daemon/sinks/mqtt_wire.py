"""MQTT 3.1.1 client wire on an asyncio Protocol: what the MQTT sink sends and receives.

Why not a library here (measured in bench/mqtt_clients.py, docs/benchmarks.md): paho-mqtt costs
≈ 60–100 µs of CPU per QoS 1 publish on this path (one `send` per packet, the socket added to
and removed from the selector's write set each time, three `recv` calls and MQTT 5 property
objects per PUBACK); the asyncio-native clients are slower still (gmqtt, amqtt). A daemon that
publishes one retained state message per poll at 5,000 devices cannot afford that. This module
does the little the sink needs, on the event loop, in bulk:

- every packet of one loop pass goes out in one `transport.write` (and so one `send`);
- every packet that arrived in one `recv` is parsed in one pass; PUBACKs are two integers;
- flow control by the transport's high-water mark (`pause_writing`), not by a queue of ours.

Scope: MQTT 3.1.1 (protocol level 4), clean session, QoS 0 and 1, retained messages, a will,
username/password, TLS (asyncio's), keep-alive. QoS 2 is neither sent nor accepted in
subscriptions (the sink subscribes at QoS 1), so the broker never sends it.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass

from ...tcp import stream_transport

CONNECT, CONNACK, PUBLISH, PUBACK = 0x10, 0x20, 0x30, 0x40
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 0x82, 0x90, 0xC0, 0xD0, 0xE0

CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",  # the specification's words (3.2.2.3)
}

_U16 = struct.Struct(">H")
_PUBACK = struct.Struct(">BBH")
_PINGREQ = bytes((PINGREQ, 0))


class MqttError(Exception):
    """The broker or the connection to it failed."""


class MqttRefused(MqttError):
    """CONNACK with a non-zero return code."""


class MqttProtocolError(MqttError):
    """The broker sent something MQTT 3.1.1 does not allow."""


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    if len(data) > 0xFFFF:
        raise ValueError("MQTT string longer than 65,535 bytes")
    return _U16.pack(len(data)) + data


def connect_packet(
    client_id: str,
    keepalive: int,
    username: str | None = None,
    password: str | None = None,
    will: Will | None = None,
) -> bytes:
    flags = 0x02  # clean session
    payload = _string(client_id)
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        payload += _string(will.topic) + _string(will.payload)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
        if password is not None:
            flags |= 0x40
            payload += _string(password)
    body = _string("MQTT") + bytes((4, flags)) + _U16.pack(keepalive) + payload
    return bytes((CONNECT,)) + remaining_length(len(body)) + body


def publish_packet(topic: bytes, payload: bytes, qos: int, retain: bool, mid: int) -> bytes:
    """One PUBLISH; `topic` already length-prefixed (see Connection.topic_bytes)."""
    body_len = len(topic) + len(payload) + (2 if qos else 0)
    head = 0x30 | (qos << 1) | retain
    if body_len < 128:
        fixed = bytes((head, body_len))
    else:
        fixed = bytes((head,)) + remaining_length(body_len)
    if qos:
        return b"".join((fixed, topic, _U16.pack(mid), payload))
    return b"".join((fixed, topic, payload))


def subscribe_packet(mid: int, filters: list[tuple[str, int]]) -> bytes:
    body = _U16.pack(mid) + b"".join(_string(t) + bytes((q,)) for t, q in filters)
    return bytes((SUBSCRIBE,)) + remaining_length(len(body)) + body


MessageHandler = Callable[[bytes, bytes, bool], None]  # topic (raw UTF-8), payload, retained


class Connection(asyncio.Protocol):
    """One connection to the broker. Create with `Connection.open`; `closed` resolves when it
    ends, with the reason. Callbacks run on the event loop."""

    def __init__(
        self,
        on_message: MessageHandler,
        on_puback: Callable[[int], None],
        max_packet: int,
    ) -> None:
        self.on_message = on_message
        self.on_puback = on_puback
        self.max_packet = max_packet
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[str] = self._loop.create_future()
        self._connack: asyncio.Future[bool] = self._loop.create_future()
        self._out: list[bytes] = []
        self._flush_pending = False
        self._buffer = b""
        self._skip = 0  # bytes left of an oversized packet being discarded
        self.writable = asyncio.Event()
        self.writable.set()
        self.on_writable: Callable[[], None] | None = None
        self.on_oversize: Callable[[int], None] | None = None
        self.suback: Callable[[int, bytes], None] | None = None
        self._topics: dict[str, bytes] = {}
        self._last_heard = self._loop.time()
        self._keepalive: asyncio.TimerHandle | None = None

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        connect: bytes,
        keepalive: float,
        timeout: float,
        on_message: MessageHandler,
        on_puback: Callable[[int], None],
        max_packet: int = 2 * 1024 * 1024,
    ) -> Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            _, conn = await loop.create_connection(
                lambda: cls(on_message, on_puback, max_packet),
                host,
                port,
                ssl=ssl_context,
                server_hostname=host if ssl_context is not None else None,
            )
            try:
                conn.send(connect)
                await conn._connack
            except BaseException:
                conn.abort()
                raise
        conn._arm_keepalive(keepalive)
        return conn

    # ---- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = stream_transport(transport)
        # Our own bound on the kernel-side backlog: past it, state messages wait (see sink).
        self.transport.set_write_buffer_limits(high=4 * 1024 * 1024, low=1024 * 1024)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._keepalive is not None:
            self._keepalive.cancel()
        reason = f"connection lost: {exc}" if exc else "connection closed by the broker"
        if not self._connack.done():
            self._connack.set_exception(MqttError(reason))
        if not self.closed.done():
            self.closed.set_result(reason)
        self.writable.set()  # wake writers; they find the connection gone

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()
        if self.on_writable is not None:
            self.on_writable()

    def data_received(self, data: bytes) -> None:
        self._last_heard = self._loop.time()
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return
            data = data[self._skip :]
            self._skip = 0
        buf = self._buffer + data if self._buffer else data
        pos, end = 0, len(buf)
        try:
            on_puback = self.on_puback
            while end - pos >= 2:
                first = buf[pos]
                if first == PUBACK and buf[pos + 1] == 2:
                    # One a message sent: the packet that comes most, read without the
                    # general length loop.
                    if end - pos < 4:
                        break
                    on_puback((buf[pos + 2] << 8) | buf[pos + 3])
                    pos += 4
                    continue
                # Remaining length: 1-4 bytes, 7 bits each.
                length, shift, i, complete = 0, 0, pos + 1, False
                while i < end and i - pos <= 4:
                    byte = buf[i]
                    i += 1
                    length |= (byte & 0x7F) << shift
                    if not byte & 0x80:
                        complete = True
                        break
                    shift += 7
                if not complete:
                    if i - pos > 4:
                        raise MqttProtocolError("remaining length longer than 4 bytes")
                    break  # the length is not complete yet
                if length > self.max_packet:
                    available = end - i
                    if available >= length:
                        pos = i + length
                    else:
                        self._skip = length - available
                        pos = end
                    if self.on_oversize is not None:
                        self.on_oversize(length)
                    continue
                if end - i < length:
                    break
                self._packet(first, buf, i, length)
                pos = i + length
        except MqttProtocolError as exc:
            self._fail(str(exc))
            return
        self._buffer = buf[pos:] if pos < end else b""

    def _packet(self, first: int, buf: bytes, at: int, length: int) -> None:
        kind = first & 0xF0
        if kind == PUBACK:
            if length != 2:
                raise MqttProtocolError("PUBACK of the wrong length")
            self.on_puback((buf[at] << 8) | buf[at + 1])
        elif kind == PUBLISH:
            qos = (first >> 1) & 3
            if qos == 3 or length < 2:
                raise MqttProtocolError("malformed PUBLISH")
            tlen = (buf[at] << 8) | buf[at + 1]
            start = at + 2 + tlen + (2 if qos else 0)
            if start > at + length:
                raise MqttProtocolError("PUBLISH topic longer than the packet")
            topic = buf[at + 2 : at + 2 + tlen]
            if qos:
                mid = (buf[at + 2 + tlen] << 8) | buf[at + 3 + tlen]
                self.send(_PUBACK.pack(PUBACK, 2, mid))  # acknowledged whatever the handler does
            self.on_message(topic, buf[start : at + length], bool(first & 1))
        elif kind == CONNACK:
            if length != 2:
                raise MqttProtocolError("CONNACK of the wrong length")
            code = buf[at + 1]
            if self._connack.done():
                raise MqttProtocolError("second CONNACK")
            if code:
                why = CONNACK_REASONS.get(code, f"return code {code}")
                self._connack.set_exception(MqttRefused(f"broker refused the connection: {why}"))
            else:
                self._connack.set_result(bool(buf[at] & 1))
        elif kind == SUBACK:
            if self.suback is not None and length >= 2:
                self.suback((buf[at] << 8) | buf[at + 1], bytes(buf[at + 2 : at + length]))
        elif kind == PINGRESP:
            pass
        else:
            raise MqttProtocolError(f"unexpected packet type 0x{first:02x} from the broker")

    # ---- sending ------------------------------------------------------------------------------

    def send(self, packet: bytes) -> None:
        """Queue a packet; everything queued in one loop pass leaves in one write."""
        self._out.append(packet)
        if not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        out, self._out = self._out, []
        if self.transport is not None and out:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])

    def topic_bytes(self, topic: str) -> bytes:
        encoded = self._topics.get(topic)
        if encoded is None:
            if len(self._topics) > 200_000:  # bounded: topics come from config, but be safe
                self._topics.clear()
            encoded = self._topics[topic] = _string(topic)
        return encoded

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool, mid: int) -> None:
        self.send(publish_packet(self.topic_bytes(topic), payload, qos, retain, mid))

    def subscribe(self, mid: int, filters: list[tuple[str, int]]) -> None:
        self.send(subscribe_packet(mid, filters))

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        """DISCONNECT (a clean goodbye: the broker does not send the will), then close."""
        if self.transport is not None:
            self.send(bytes((DISCONNECT, 0)))
            self._flush()
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, reason: str) -> None:
        if not self.closed.done():
            self.closed.set_result(reason)
        self.abort()

    def _arm_keepalive(self, keepalive: float) -> None:
        if keepalive <= 0:
            return
        interval = keepalive / 2

        def tick() -> None:
            if self.transport is None:
                return
            if self._loop.time() - self._last_heard > keepalive * 1.5:
                self._fail(f"no reply from the broker within {keepalive * 1.5:g}s")
                return
            self.send(_PINGREQ)
            self._keepalive = self._loop.call_later(interval, tick)

        self._keepalive = self._loop.call_later(interval, tick)


def describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


__all__ = [
    "Connection",
    "MqttError",
    "MqttProtocolError",
    "MqttRefused",
    "Will",
    "connect_packet",
    "describe",
    "publish_packet",
    "remaining_length",
    "subscribe_packet",
]
