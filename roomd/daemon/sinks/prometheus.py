"""Prometheus metrics (contract §5) and a tiny asyncio HTTP server for /metrics and /healthz."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..units import SEVERITIES

log = logging.getLogger("roomd.http")

_NAME = re.compile(r"[^a-zA-Z0-9_]")
LABELS = ("site", "room", "device")
MAX_HEADER_LINES = 100


class Metrics:
    def __init__(self, site: str) -> None:
        self.site = site
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.device_up = Gauge(
            "roomd_device_up", "1 when the device answered its last poll", LABELS, registry=r
        )
        self.alerts_active = Gauge(
            "roomd_alerts_active",
            "Active alerts by incident grade",
            ("site", "severity"),
            registry=r,
        )
        self.room_alerts = Gauge(
            "roomd_room_alerts_active", "Active alerts per room", ("site", "room"), registry=r
        )
        self.poll_duration = Histogram(
            "roomd_poll_duration_seconds",
            "Time to poll one device",
            ("driver",),
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.poll_errors = Counter(
            "roomd_poll_errors",
            "Polls that failed (timeout, garbage, refused)",
            ("driver",),
            registry=r,
        )
        self.signin_latency = Histogram(
            "roomd_signin_latency_seconds",
            "Card read to durable record and MQTT hand-off",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.check_passed = Gauge(
            "roomd_check_passed",
            "1 when the last pre-meeting check of this level passed",
            ("site", "room", "level"),
            registry=r,
        )
        self.outbox = Gauge(
            "roomd_mqtt_outbox_messages", "Messages waiting for the MQTT broker", registry=r
        )
        self.mqtt_connected = Gauge(
            "roomd_mqtt_connected", "1 while connected to the MQTT broker", registry=r
        )
        self.commands_refused = Counter(
            "roomd_commands_refused",
            "Commands and bookings not obeyed: malformed, unauthorised, bad signature, replayed",
            ("site", "reason"),
            registry=r,
        )
        self.input_rejected = Counter(
            "roomd_input_rejected",
            "Messages on subscribed topics that were not used (size, depth, not JSON)",
            ("site", "topic_kind"),
            registry=r,
        )
        for sev in SEVERITIES:
            self.alerts_active.labels(site, sev).set(0)
        self._gauges: dict[str, Gauge] = {}
        self._children: dict[tuple[str, str, str], Any] = {}
        self._states: dict[tuple[str, str, str], tuple[str, dict[str, Any]]] = {}
        self._poll_children: dict[str, Any] = {}

    def _gauge(self, metric: str, text: bool) -> Gauge:
        gauge = self._gauges.get(metric)
        if gauge is None:
            name = "roomd_" + _NAME.sub("_", metric)
            labels = (*LABELS, "state") if text else LABELS
            gauge = Gauge(name, f"roomd reading {metric}", labels, registry=self.registry)
            self._gauges[metric] = gauge
        return gauge

    def update(self, room: str, device: str, readings: Mapping[str, Any]) -> None:
        """Hot path: one cached child lookup and a set per reading."""
        children = self._children
        for metric, value in readings.items():
            if value is None:
                continue
            key = (room, device, metric)
            if isinstance(value, str):
                self._set_state(key, value)
                continue
            child = children.get(key)
            if child is None:
                child = children[key] = self._gauge(metric, False).labels(self.site, room, device)
            child.set(value)

    def _set_state(self, key: tuple[str, str, str], value: str) -> None:
        # Text states are one-hot gauges: state="on" 1, every other state seen 0.
        current = self._states.get(key)
        if current is not None and current[0] == value:
            return
        room, device, metric = key
        gauge = self._gauge(metric, True)
        seen = current[1] if current else {}
        for state, child in seen.items():
            child.set(1 if state == value else 0)
        if value not in seen:
            seen[value] = gauge.labels(self.site, room, device, value)
            seen[value].set(1)
        self._states[key] = (value, seen)

    def poll_observer(self, driver: str) -> Callable[[float], None]:
        child = self._poll_children.get(driver)
        if child is None:
            child = self._poll_children[driver] = self.poll_duration.labels(driver)
        return child.observe

    def set_up(self, room: str, device: str, up: bool) -> None:
        self.device_up.labels(self.site, room, device).set(1 if up else 0)
        self.update(room, device, {"online": 1 if up else 0})  # the contract's `online` reading

    def forget_device(self, room: str, device: str) -> None:
        for key in [k for k in self._children if k[0] == room and k[1] == device]:
            metric = key[2]
            with contextlib.suppress(KeyError):
                self._gauges[metric].remove(self.site, room, device)
            del self._children[key]
        for key in [k for k in self._states if k[0] == room and k[1] == device]:
            for state in self._states.pop(key)[1]:
                with contextlib.suppress(KeyError):
                    self._gauges[key[2]].remove(self.site, room, device, state)
        with contextlib.suppress(KeyError):
            self.device_up.remove(self.site, room, device)

    def count_alerts_at_scrape(self, by_severity: Callable[[], Mapping[str, int]]) -> None:
        """`roomd_alerts_active{severity}` is computed when scraped, not on every alert
        transition (a count over every active alert per transition was quadratic in fleet
        size)."""

        def count(sev: str) -> Callable[[], float]:
            return lambda: float(by_severity().get(sev, 0))

        for sev in SEVERITIES:
            self.alerts_active.labels(self.site, sev).set_function(count(sev))

    def set_room_alerts(self, by_room: Mapping[str, int]) -> None:
        for room, n in by_room.items():
            self.room_alerts.labels(self.site, room).set(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class HttpServer:
    """GET /metrics and /healthz. Kept tiny: no framework for two read-only endpoints."""

    def __init__(
        self, host: str, port: int, metrics: Metrics, health: Callable[[], dict[str, Any]]
    ):
        self.host = host
        self.port = port
        self.metrics = metrics
        self.health = health
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, self.host, self.port)
        sock = self.server.sockets[0]
        self.port = sock.getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(10):
                    request = await reader.readline()
                    for _ in range(MAX_HEADER_LINES):
                        if (await reader.readline()) in (b"\r\n", b"\n", b""):
                            break
                    else:
                        raise ValueError("too many header lines")
            except (ValueError, asyncio.LimitOverrunError):
                # A line over the stream limit (64 KiB) or a flood of headers: answer, no traceback.
                request = b"\0"
            parts = request.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else ""
            if request == b"\0":
                status, ctype, body = "431 Request Header Fields Too Large", "text/plain", b""
            elif len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif path == "/metrics":
                # Rendered in a thread: at 5,000 devices it took 220-890 ms on the event loop.
                # prometheus-client copies each metric's children under its own lock.
                body = await asyncio.to_thread(self.metrics.render)
                status, ctype = "200 OK", CONTENT_TYPE_LATEST
            elif path == "/healthz":
                info = self.health()
                status = "200 OK" if info.get("status") != "stopping" else "503 Service Unavailable"
                ctype, body = "application/json", json.dumps(info).encode() + b"\n"
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"try /metrics or /healthz\n"
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + (body if parts[:1] != ["HEAD"] else b""))
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
