"""MQTT sink: the contract's topics, with alert transitions and events drained from the outbox.

The wire is roomd's own MQTT 3.1.1 client on the event loop (sinks/mqtt_wire.py: one write per
loop pass, acks parsed in bulk; why not paho or an asyncio client library is said there).
Connecting (DNS, TCP, TLS, CONNECT/CONNACK) is bounded by the connect timeout; reconnects use
capped, jittered backoff.

Ordering and durability: alert transitions and events are rows in the SQLite outbox. The
drainer hands rows to the wire in sequence order only while connected; a row is deleted when
the broker has acknowledged it and every row before it (QoS 1). After a lost connection the
drainer starts again from the first row not yet acknowledged (rows acknowledged out of order
are not sent twice); after a crash the outbox is replayed from its first unacknowledged row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Callable
from typing import Any

import orjson

from ..clock import Clock, iso
from ..config import MqttConfig
from ..inbound import LogLimiter
from ..model import Transition
from ..store import Pending, Store
from .mqtt_wire import Connection, MqttError, Will, connect_packet, describe

log = logging.getLogger("roomd.mqtt")
_limited = LogLimiter(log)

# (room or "_daemon", device, payload, principal from a `/by/{user}` topic or None)
CommandHandler = Callable[[str | None, str | None, bytes, str | None], None]
BookingsHandler = Callable[[str, bytes, str | None], None]  # room, payload, principal


def dumps(obj: Any) -> bytes:
    # orjson's result keeps its ~4 KB working buffer; payloads we keep (latest state of every
    # device, retained topics) would cost 4 KB each (20 MB at 5,000 devices). A copy: 0.1 µs.
    return bytes(memoryview(orjson.dumps(obj)))


class MqttSink:
    WINDOW = 500  # outbox rows handed to the wire and not yet acknowledged
    CONNECT_TIMEOUT = 10.0

    def __init__(
        self,
        cfg: MqttConfig,
        site: str,
        store: Store,
        clock: Clock,
        on_command: CommandHandler | None = None,
        shard: tuple[int, int] | None = None,
    ) -> None:
        self.cfg = cfg
        self.state_qos = cfg.state_qos  # read on every state publish (pydantic is slow to read)
        self.base = f"{cfg.topic_prefix}/{site}"
        self.store = store
        self.clock = clock
        self.on_command = on_command
        # A shard of a sharded site has its own (its will must not mark the others offline).
        self.availability_topic = f"{self.base}/_daemon/availability" + (
            f"/shard-{shard[0]}-of-{shard[1]}" if shard else ""
        )
        self.connected = asyncio.Event()
        self._wake = asyncio.Event()
        self._conn: Connection | None = None
        self._inflight: dict[int, int] = {}  # packet id → outbox seq
        self._waiters: dict[int, asyncio.Future[None]] = {}  # packet id → someone waiting
        self._next_mid = 0
        self._sent_upto = 0
        self._acked: set[int] = set()
        self._retained: dict[str, bytes] = {}  # latest state topics, re-sent after reconnect
        self._unsent: set[str] = set()  # state topics held back while the socket is full
        self.last_error = ""
        self._attempt = 0
        self._tasks: list[asyncio.Task[None]] = []
        # More subscriptions: topic → handler of its payloads (HA's status, instance heartbeats).
        self.extra_topics: dict[str, Callable[[bytes], None]] = {}
        # Retained bookings lists written by booking systems.
        self.on_bookings: BookingsHandler | None = None
        # Retained topics whose latest value lives elsewhere (active alerts, check reports):
        # all re-published on every (re)connect, as a broker without persistence forgot them.
        self.retained_snapshot: Callable[[], dict[str, bytes]] | None = None
        # Called on the loop after every (re)connect.
        self.on_connected: list[Callable[[], None]] = []
        # Messages that never reach a handler (retained commands, handler failures).
        self.on_rejected: Callable[[str], None] | None = None
        self._closing = False
        self._client_id = (
            (cfg.client_id + (f"-{shard[0]}of{shard[1]}" if shard else ""))
            if cfg.client_id
            else f"roomd-{self.base.replace('/', '-')}-{random.getrandbits(24):06x}"
        )

    # ---- topics and payloads -------------------------------------------------------------

    def alert_topic(self, room: str, alert_id: str) -> str:
        return f"{self.base}/{room}/alerts/{alert_id}"

    def events_topic(self, room: str) -> str:
        return f"{self.base}/{room}/events"

    def messages_for(self, transitions: list[Transition]) -> list[Pending]:
        out: list[Pending] = []
        for t in transitions:
            body = t.alert.to_json()
            topic = self.alert_topic(t.alert.room, t.alert.id)
            # Retained while active; an empty retained payload removes it on clear.
            out.append((topic, b"" if t.kind == "cleared" else dumps(body), True, 1))
            event = {"type": "alert", "transition": t.kind, **body}
            out.append((self.events_topic(t.alert.room), dumps(event), False, 1))
        return out

    def event(self, room: str, payload: dict[str, Any]) -> Pending:
        payload.setdefault("ts", iso(self.clock.time()))
        return (self.events_topic(room), dumps(payload), False, 1)

    def publish_state(self, topic: str, payload: dict[str, Any]) -> None:
        """Retained latest-value topics: not queued (only the newest matters), re-sent on
        reconnect; held back while the socket is full and sent when it drains."""
        data = dumps(payload)
        self._retained[topic] = data
        conn = self._conn
        if conn is not None and self.connected.is_set():
            if conn.writable.is_set():
                qos = self.state_qos
                conn.publish(topic, data, qos, True, self._mid() if qos else 0)
            else:
                self._unsent.add(topic)

    def unpublish(self, topic: str) -> None:
        """Clear a retained topic (an empty retained payload), now or on the next connect."""
        self._retained[topic] = b""
        conn = self._conn
        if conn is not None and self.connected.is_set():
            conn.publish(topic, b"", 1, True, self._mid())

    def publish_now(self, topic: str, payload: dict[str, Any], qos: int = 1) -> None:
        """Fire-and-forget (command results): lost if the broker is down, by design."""
        conn = self._conn
        if conn is not None and self.connected.is_set():
            conn.publish(topic, dumps(payload), qos, False, self._mid() if qos else 0)

    def kick(self) -> None:
        self._wake.set()

    def _mid(self) -> int:
        """The next packet id not in flight (ids of untracked messages may be reused)."""
        mid = self._next_mid
        while True:
            mid = mid + 1 if mid < 0xFFFF else 1
            if mid not in self._inflight and mid not in self._waiters:
                self._next_mid = mid
                return mid

    # ---- connection ------------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.cfg.tls:
            return None
        ctx = ssl.create_default_context(cafile=str(self.cfg.ca_file) if self.cfg.ca_file else None)
        if self.cfg.cert_file:
            ctx.load_cert_chain(
                str(self.cfg.cert_file), str(self.cfg.key_file) if self.cfg.key_file else None
            )
        return ctx

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._connection_loop(), name="mqtt-connection")]

    async def _connection_loop(self) -> None:
        cfg = self.cfg
        packet = connect_packet(
            self._client_id,
            int(cfg.keepalive),
            cfg.username,
            cfg.secret() if cfg.username else None,
            Will(self.availability_topic, b"offline", 1, True),
        )
        while True:
            try:
                conn = await Connection.open(
                    cfg.host,
                    cfg.port,
                    ssl_context=self._ssl_context(),
                    connect=packet,
                    keepalive=cfg.keepalive,
                    timeout=self.CONNECT_TIMEOUT,
                    on_message=self._on_message,
                    on_puback=self._published,
                )
            except (OSError, ssl.SSLError, MqttError, TimeoutError, ValueError) as exc:
                why = describe(exc)
                if isinstance(exc, MqttError):
                    self._note_failure(why)
                else:
                    self._note_failure(f"cannot connect to {cfg.host}:{cfg.port}: {why}")
            else:
                self._conn = conn
                conn.on_writable = self._on_writable
                conn.on_oversize = self._on_oversize
                conn.suback = self._on_suback
                self._on_connect(conn)
                why = await conn.closed
                self._disconnected(why)
            self._attempt += 1
            # Equal jitter: between half and all of min(30 s, 0.5 s × 2^attempt).
            ceiling = min(30.0, 0.5 * 2 ** min(self._attempt, 6))
            await asyncio.sleep(random.uniform(ceiling / 2, ceiling))

    def _on_connect(self, conn: Connection) -> None:
        conn.publish(self.availability_topic, b"online", 1, True, self._mid())
        b = self.base
        conn.subscribe(
            self._mid(),
            [(f"{b}/+/+/cmd", 1), (f"{b}/_daemon/cmd", 1)]
            + [(f"{b}/+/+/cmd/by/+", 1), (f"{b}/_daemon/cmd/by/+", 1)]
            + ([(f"{b}/+/bookings", 1), (f"{b}/+/bookings/by/+", 1)] if self.on_bookings else [])
            + [(t, 1) for t in self.extra_topics],
        )
        for topic, data in list(self._retained.items()):
            conn.publish(topic, data, 1, True, self._mid())
        self._unsent.clear()
        # Before the outbox drains: its rows (older or newer transitions of the same alerts)
        # follow in order, so the last message on each topic is still the current state.
        if self.retained_snapshot is not None:
            for topic, data in self.retained_snapshot().items():
                conn.publish(topic, data, 1, True, self._mid())
        self._connected()

    def _on_writable(self) -> None:
        """The socket drained: send the newest value of each state topic held back."""
        conn = self._conn
        unsent, self._unsent = self._unsent, set()
        if conn is None:
            return
        for topic in unsent:
            conn.publish(topic, self._retained[topic], self.cfg.state_qos, True, self._mid())
        self.kick()

    def _on_suback(self, mid: int, codes: bytes) -> None:
        if b"\x80" in codes:
            refused = codes.count(0x80)
            log.error("MQTT: the broker refused %d of our subscriptions (its ACL?)", refused)

    def _on_oversize(self, length: int) -> None:
        self._rejected("oversize")
        _limited(logging.WARNING, "oversize", "MQTT message of %d bytes discarded", length)

    async def wait_connected(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self.connected.wait()
            return True
        except TimeoutError:
            return False

    async def stop(self) -> None:
        self._closing = True  # the disconnect that follows is ours, not a lost broker
        conn = self._conn
        if conn is not None and self.connected.is_set():
            # Drain what the outbox holds (briefly), then say goodbye retained.
            await self._drain_briefly(2.0)
            mid = self._mid()
            acked = self._waiters[mid] = asyncio.get_running_loop().create_future()
            conn.publish(self.availability_topic, b"offline", 1, True, mid)
            with contextlib.suppress(TimeoutError, MqttError):
                async with asyncio.timeout(1.0):
                    await acked
            self._waiters.pop(mid, None)
            conn.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if conn is not None:
            conn.abort()
        self.connected.clear()
        self._conn = None

    async def _drain_briefly(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end and (self.store.outbox_depth or self._inflight):
            self.kick()
            await asyncio.sleep(0.02)

    # ---- wire callbacks (on the loop) --------------------------------------------------------

    def _on_message(self, topic_bytes: bytes, payload: bytes, retained: bool) -> None:
        # Nothing may escape into the read loop: one poisoned message must cost one message.
        try:
            topic = topic_bytes.decode()
            self._command(topic, payload, retained)
        except Exception as exc:
            self._rejected("handler")
            _limited(
                logging.ERROR,
                f"handler:{type(exc).__name__}",
                "MQTT message on %r not handled: %s: %s",
                topic_bytes[:200],
                type(exc).__name__,
                str(exc)[:200],
            )

    def _rejected(self, kind: str) -> None:
        if self.on_rejected is not None:
            with contextlib.suppress(Exception):
                self.on_rejected(kind)

    def _connected(self) -> None:
        if self._attempt or self.last_error:
            log.info("connected to MQTT broker %s:%d", self.cfg.host, self.cfg.port)
        self._attempt = 0
        self.last_error = ""
        self.connected.set()
        self.kick()
        for hook in self.on_connected:
            try:
                hook()
            except Exception:
                log.exception("after connecting")

    def _note_failure(self, why: str) -> None:
        if why != self.last_error:
            log.error("MQTT: %s", why)
        self.last_error = why

    def _disconnected(self, why: str) -> None:
        if self.connected.is_set() and not self._closing:
            log.warning("MQTT broker connection lost (%s); alerts wait in the outbox", why)
        self.connected.clear()
        self._conn = None
        # Rows in flight were not acknowledged: the drainer sends them again, in order, from
        # the first one not yet acknowledged; rows acknowledged meanwhile are skipped.
        if self._inflight:
            self._sent_upto = min(self._inflight.values()) - 1
        self._inflight.clear()
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(MqttError(why))
        self._waiters.clear()

    def _published(self, mid: int) -> None:
        seq = self._inflight.pop(mid, None)
        if seq is None:
            waiter = self._waiters.pop(mid, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return  # state, command results: nobody waits
        self._acked.add(seq)
        # Delete the longest acknowledged prefix of the outbox.
        lowest_open = min(self._inflight.values(), default=self._sent_upto + 1)
        done = [s for s in self._acked if s < lowest_open]
        if done:
            self.store.outbox_done(max(done))
            self._acked.difference_update(done)
        self.kick()

    def _command(self, topic: str, payload: bytes, retained: bool) -> None:
        handler = self.extra_topics.get(topic)
        if handler is not None:
            handler(payload)
            return
        if self.on_command is None or not topic.startswith(self.base + "/"):
            return
        parts = topic[len(self.base) + 1 :].split("/")
        by: str | None = None
        if len(parts) >= 4 and parts[-2] == "by" and parts[-3] in ("cmd", "bookings"):
            by, parts = parts[-1], parts[:-2]  # .../cmd/by/{login}: the broker's login
        if len(parts) == 2 and parts[1] == "bookings":
            if self.on_bookings is not None:
                self.on_bookings(parts[0], payload, by)
            return
        if len(parts) not in (2, 3) or parts[-1] != "cmd":
            return
        if retained:
            # A retained command would be obeyed again on every restart and by every instance.
            self._rejected("retained_command")
            _limited(logging.WARNING, f"retained:{topic}", "retained command on %s ignored", topic)
            return
        if parts == ["_daemon", "cmd"]:
            self.on_command(None, None, payload, by)
        elif len(parts) == 3:
            self.on_command(parts[0], parts[1], payload, by)

    async def run_drainer(self) -> None:
        while True:
            await self.connected.wait()
            conn = self._conn
            if conn is None or not conn.is_open:
                await asyncio.sleep(0.05)
                continue
            if not conn.writable.is_set():
                await conn.writable.wait()
                continue
            room = self.WINDOW - len(self._inflight)
            rows = self.store.outbox_after(self._sent_upto, room) if room > 0 else []
            if not rows:
                self._wake.clear()
                await self._wake.wait()
                continue
            for row in rows:
                self._sent_upto = row.seq
                if row.seq in self._acked:
                    continue  # acknowledged before the connection was lost
                mid = self._mid()
                self._inflight[mid] = row.seq
                conn.publish(row.topic, row.payload, row.qos, row.retain, mid)
                if not row.qos:
                    self._published(mid)  # nothing will acknowledge it
            await asyncio.sleep(0)

    @property
    def outbox_depth(self) -> int:
        return self.store.outbox_depth
