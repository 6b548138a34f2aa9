"""MQTT sink: the contract's topics, with alert transitions and events drained from the outbox.

paho-mqtt (≈22 µs a publish; aiomqtt costs ≈200 µs) is driven by our asyncio loop itself:
its socket is registered with add_reader/add_writer, as in paho's own asyncio example, so no
second thread competes for the GIL on every publish. Only the blocking connect (DNS, TCP,
TLS handshake) runs in an executor thread; reconnects use capped, jittered backoff.

Ordering and durability: alert transitions and events are rows in the SQLite outbox. The
drainer hands rows to paho in sequence order only while connected; a row is deleted when the
broker has acknowledged it and every row before it (QoS 1). paho re-sends its in-flight QoS 1
messages itself after a reconnect, in order, so the drainer never hands a row over twice within
one process; after a crash the outbox is replayed from its first unacknowledged row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ..clock import Clock, iso
from ..config import MqttConfig
from ..inbound import LogLimiter
from ..model import Transition
from ..store import Pending, Store

log = logging.getLogger("roomd.mqtt")
_limited = LogLimiter(log)

# (room or "_daemon", device, payload, principal from a `/by/{user}` topic or None)
CommandHandler = Callable[[str | None, str | None, bytes, str | None], None]
BookingsHandler = Callable[[str, bytes, str | None], None]  # room, payload, principal


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


class MqttSink:
    WINDOW = 500  # rows handed to paho and not yet acknowledged

    def __init__(
        self,
        cfg: MqttConfig,
        site: str,
        store: Store,
        clock: Clock,
        on_command: CommandHandler | None = None,
    ) -> None:
        self.cfg = cfg
        self.base = f"{cfg.topic_prefix}/{site}"
        self.store = store
        self.clock = clock
        self.on_command = on_command
        self.availability_topic = f"{self.base}/_daemon/availability"
        self.connected = asyncio.Event()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inflight: dict[int, int] = {}  # paho mid → outbox seq
        self._sent_upto = 0
        self._acked: set[int] = set()
        self._retained: dict[str, bytes] = {}  # latest state topics, re-sent after reconnect
        # mids of messages nobody waits for (state, command results): their PUBACKs are dropped
        # in paho's thread instead of costing a hop to the event loop each.
        self._untracked: set[int] = set()
        self._client: mqtt.Client | None = None
        self.last_error = ""
        self._attempt = 0
        self._lost = asyncio.Event()
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
        self._sock: Any = None
        self._loop_thread = 0
        self._closing = False

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
        reconnect."""
        data = dumps(payload)
        self._retained[topic] = data
        client = self._client
        if client is not None and self.connected.is_set():
            info = client.publish(topic, data, qos=self.cfg.state_qos, retain=True)
            if self.cfg.state_qos:
                self._untracked.add(info.mid)

    def unpublish(self, topic: str) -> None:
        """Clear a retained topic (an empty retained payload), now or on the next connect."""
        self._retained[topic] = b""
        client = self._client
        if client is not None and self.connected.is_set():
            client.publish(topic, b"", qos=1, retain=True)

    def publish_now(self, topic: str, payload: dict[str, Any], qos: int = 1) -> None:
        """Fire-and-forget (command results): lost if the broker is down, by design."""
        client = self._client
        if client is not None and self.connected.is_set():
            info = client.publish(topic, dumps(payload), qos=qos, retain=False)
            if qos:
                self._untracked.add(info.mid)

    def kick(self) -> None:
        self._wake.set()

    # ---- connection ------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        client_id = (
            self.cfg.client_id
            or f"roomd-{self.base.replace('/', '-')}-{random.getrandbits(24):06x}"
        )
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        client.max_inflight_messages_set(100)
        client.max_queued_messages_set(0)
        if self.cfg.username:
            client.username_pw_set(self.cfg.username, self.cfg.secret())
        if self.cfg.tls:
            ctx = ssl.create_default_context(
                cafile=str(self.cfg.ca_file) if self.cfg.ca_file else None
            )
            if self.cfg.cert_file:
                ctx.load_cert_chain(
                    str(self.cfg.cert_file), str(self.cfg.key_file) if self.cfg.key_file else None
                )
            client.tls_set_context(ctx)
        client.will_set(self.availability_topic, b"offline", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        return client

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._client = self._make_client()
        self._tasks = [
            asyncio.create_task(self._connection_loop(), name="mqtt-connection"),
            asyncio.create_task(self._misc_loop(), name="mqtt-keepalive"),
        ]

    async def _connection_loop(self) -> None:
        client = self._client
        assert client is not None and self._loop is not None
        first = True
        while True:
            self._lost.clear()
            try:
                if first:
                    await self._loop.run_in_executor(
                        None, client.connect, self.cfg.host, self.cfg.port, int(self.cfg.keepalive)
                    )
                    first = False
                else:
                    await self._loop.run_in_executor(None, client.reconnect)
            except (OSError, ssl.SSLError, ValueError) as exc:
                self._note_failure(f"cannot connect to {self.cfg.host}:{self.cfg.port}: {exc}")
                self._lost.set()
            await self._lost.wait()
            self._attempt += 1
            # Equal jitter: between half and all of min(30 s, 0.5 s × 2^attempt).
            ceiling = min(30.0, 0.5 * 2 ** min(self._attempt, 6))
            await asyncio.sleep(random.uniform(ceiling / 2, ceiling))

    async def _misc_loop(self) -> None:
        # Keepalive pings and retries of unacknowledged packets.
        while True:
            await asyncio.sleep(1.0)
            client = self._client
            if client is not None and self._sock is not None:
                client.loop_misc()

    # ---- socket registration (paho ↔ asyncio) ----------------------------------------------

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(OSError, AttributeError):  # TLS-wrapped or non-TCP sockets
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._call(self._register, sock)

    def _register(self, sock: Any) -> None:
        assert self._loop is not None and self._client is not None
        client = self._client
        self._sock = sock
        self._loop.add_reader(sock, client.loop_read)
        if client.want_write():
            self._loop.add_writer(sock, client.loop_write)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._call(self._unregister, sock)

    def _unregister(self, sock: Any) -> None:
        assert self._loop is not None
        if self._sock is sock:
            self._sock = None
        with contextlib.suppress(Exception):
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        self._lost.set()

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._call(self._want_write, sock)

    def _want_write(self, sock: Any) -> None:
        if self._loop is not None and self._client is not None and sock is self._sock:
            self._loop.add_writer(sock, self._client.loop_write)

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._call(self._no_write, sock)

    def _no_write(self, sock: Any) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_writer(sock)

    async def wait_connected(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self.connected.wait()
            return True
        except TimeoutError:
            return False

    async def stop(self) -> None:
        client = self._client
        if client is None:
            return
        self._closing = True  # the disconnect that follows is ours, not a lost broker
        if self.connected.is_set():
            # Drain what the outbox holds (briefly), then say goodbye retained.
            await self._drain_briefly(2.0)
            info = client.publish(self.availability_topic, b"offline", qos=1, retain=True)
            for _ in range(50):
                if info.is_published():
                    break
                await asyncio.sleep(0.02)
            client.disconnect()
            with contextlib.suppress(Exception):
                client.loop_write()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._sock is not None:
            self._unregister(self._sock)
        self.connected.clear()
        self._client = None

    async def _drain_briefly(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end and (self.store.outbox_depth or self._inflight):
            self.kick()
            await asyncio.sleep(0.02)

    # ---- paho callbacks (on the loop, or in the executor during connect) --------------------

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        elif self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            self._call(self._note_failure, f"broker refused the connection: {reason}")
            return
        client.publish(self.availability_topic, b"online", qos=1, retain=True)
        b = self.base
        client.subscribe(
            [(f"{b}/+/+/cmd", 1), (f"{b}/_daemon/cmd", 1)]
            + [(f"{b}/+/+/cmd/by/+", 1), (f"{b}/_daemon/cmd/by/+", 1)]
            + ([(f"{b}/+/bookings", 1), (f"{b}/+/bookings/by/+", 1)] if self.on_bookings else [])
            + [(t, 1) for t in self.extra_topics]
        )
        for topic, data in list(self._retained.items()):
            client.publish(topic, data, qos=1, retain=True)
        # Before the outbox drains: its rows (older or newer transitions of the same alerts)
        # follow in order, so the last message on each topic is still the current state.
        if self.retained_snapshot is not None:
            for topic, data in self.retained_snapshot().items():
                client.publish(topic, data, qos=1, retain=True)
        self._call(self._connected)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self._call(self._disconnected, str(reason))
        self._call(self._lost.set)

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any
    ) -> None:
        try:
            self._untracked.remove(mid)
        except KeyError:
            self._call(self._published, mid)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # Nothing may escape into paho's read loop: it would handle the same packet again and
        # again (a busy loop on one poisoned message).
        try:
            topic = msg.topic  # paho decodes it: invalid UTF-8 raises here
            self._call(self._command, topic, bytes(msg.payload), bool(msg.retain))
        except Exception as exc:
            self._rejected("handler")
            _limited(
                logging.ERROR,
                f"handler:{type(exc).__name__}",
                "MQTT message on %r not handled: %s: %s",
                getattr(msg, "_topic", b"?")[:200],
                type(exc).__name__,
                str(exc)[:200],
            )

    def _rejected(self, kind: str) -> None:
        if self.on_rejected is not None:
            with contextlib.suppress(Exception):
                self.on_rejected(kind)

    # ---- on the asyncio loop -----------------------------------------------------------------

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
        self._untracked.clear()
        self._attempt += 1

    def _published(self, mid: int) -> None:
        seq = self._inflight.pop(mid, None)
        if seq is None:
            return
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
            client = self._client
            if client is None:
                return
            room = self.WINDOW - len(self._inflight)
            rows = self.store.outbox_after(self._sent_upto, room) if room > 0 else []
            if not rows:
                self._wake.clear()
                await self._wake.wait()
                continue
            for row in rows:
                if not self.connected.is_set():
                    break
                info = client.publish(row.topic, row.payload, qos=row.qos, retain=row.retain)
                self._inflight[info.mid] = row.seq
                self._sent_upto = row.seq
                if info.rc == mqtt.MQTT_ERR_NO_CONN:
                    break  # paho keeps it queued and sends it first after reconnecting
            await asyncio.sleep(0)

    @property
    def outbox_depth(self) -> int:
        return self.store.outbox_depth
