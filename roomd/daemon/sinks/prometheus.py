"""Prometheus metrics (contract §5) and a tiny asyncio HTTP server for /metrics and /healthz."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

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
        self.alerts_active = Gauge(
            "roomd_alerts_active",
            "Active alerts by incident grade",
            ("site", "severity"),
            registry=r,
        )
        self.room_alerts = Gauge(
            "roomd_room_alerts_active", "Active alerts per room", ("site", "room"), registry=r
        )
        # Observed on every poll: a bisect and two additions (prometheus_client's Histogram
        # takes a lock and walks every bucket: ~2 µs a poll); exposed by the collector below.
        self.poll_duration: dict[str, PollHistogram] = {}
        self.poll_errors = Counter(
            "roomd_poll_errors",
            "Polls that failed (timeout, garbage, refused)",
            ("driver",),
            registry=r,
        )
        self.signin_latency = Histogram(
            "roomd_signin_latency_seconds",
            "Card read to durable record and MQTT hand-off",
            ("site", "room"),
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
            "roomd_mqtt_outbox_messages",
            "Messages waiting for the MQTT broker",
            ("site",),
            registry=r,
        )
        self.mqtt_connected = Gauge(
            "roomd_mqtt_connected", "1 while connected to the MQTT broker", registry=r
        )
        self.loop_lag = Gauge(
            "roomd_event_loop_lag_seconds",
            "Longest delay of the event loop in the last 10 s (polls, sign-ins and commands "
            "all wait this long)",
            registry=r,
        )
        # STANDARD §3: the chain informed within 1 minute, diagnosis started within 5.
        response = (10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600)
        self.time_to_ack = Histogram(
            "roomd_alert_time_to_acknowledge_seconds",
            "From an alert's raise to its first acknowledgement",
            ("site", "severity"),
            buckets=response,
            registry=r,
        )
        self.time_to_clear = Histogram(
            "roomd_alert_time_to_clear_seconds",
            "From an alert's raise to its clear",
            ("site", "severity"),
            buckets=response,
            registry=r,
        )
        self.notifications = Counter(
            "roomd_notifications",
            "Notifications to people: sent, failed (tried again), given_up",
            ("site", "target", "outcome"),
            registry=r,
        )
        self.notifications_pending = Gauge(
            "roomd_notifications_pending", "Notifications waiting to be sent", registry=r
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
        # Readings are not copied into per-series objects on every poll (5,000 devices ×
        # 3 series cost ~25 MB and a few µs a poll): the readings collector reads them when
        # scraped. Devices come from `devices` (the site's state); `update` keeps the few
        # readings that are not a device's last poll (room-level readings, inspections).
        self.devices: Callable[[], Iterable[DeviceSample]] = lambda: ()
        self.rooms: Callable[[], Iterable[RoomSample]] = lambda: ()
        self._values: dict[tuple[str, str], dict[str, Any]] = {}
        self._poll_children: dict[str, Any] = {}
        self._collector = _ReadingsCollector(self)
        r.register(self._collector)

    def update(self, room: str, device: str, readings: Mapping[str, Any]) -> None:
        """A reading that is not a device's last poll (room-level ones, inspections)."""
        values = self._values.get((room, device))
        if values is None:
            values = self._values[(room, device)] = {}
        values.update(readings)

    def poll_observer(self, driver: str) -> Callable[[float], None]:
        histogram = self.poll_duration.get(driver)
        if histogram is None:
            histogram = self.poll_duration[driver] = PollHistogram()
        return histogram.observe

    def forget_device(self, room: str, device: str) -> None:
        self._values.pop((room, device), None)
        seen = self._collector.seen
        for key in [k for k in list(seen) if k[0] == room and k[1] == device]:
            seen.pop(key, None)

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


POLL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class PollHistogram:
    """`roomd_poll_duration_seconds` of one driver kind, cheap enough for every poll."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(POLL_BUCKETS) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(POLL_BUCKETS, seconds)] += 1
        self.sum += seconds

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, n in zip((*POLL_BUCKETS, float("inf")), list(self.counts), strict=True):
            running += n
            out.append((floatToGoString(bound), float(running)))
        return out


DeviceSample = tuple[str, str, bool | None, Mapping[str, Any]]  # room, device, online, readings
# room, state code, in a meeting, limits (metric, "min"|"max", value, inclusive)
RoomSample = tuple[str, int, bool, list[tuple[str, str, float, bool]]]


class _ReadingsCollector:
    """Every reading as a gauge `roomd_<metric>{site,room,device}`; text readings as one-hot
    `{state}` series (the current state 1, states seen before 0); `roomd_device_up` and the
    contract's `online` reading from each device's availability. Runs in the scrape thread:
    it only reads (dicts are replaced, never changed in place, by the event loop)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._names: dict[str, str] = {}
        self.seen: dict[tuple[str, str, str], set[str]] = {}

    def describe(self) -> list[Any]:
        return []  # dynamic: nothing to check for clashes at registration

    def _name(self, metric: str) -> str:
        name = self._names.get(metric)
        if name is None:
            name = self._names[metric] = "roomd_" + _NAME.sub("_", metric)
        return name

    def collect(self) -> Iterable[Any]:
        site = self.metrics.site
        gauges: dict[str, GaugeMetricFamily] = {}
        states: dict[str, GaugeMetricFamily] = {}
        up = GaugeMetricFamily(
            "roomd_device_up", "1 when the device answered its last poll", labels=LABELS
        )

        def add(room: str, device: str, metric: str, value: Any) -> None:
            if value is None:
                return
            if isinstance(value, str):
                family = states.get(metric)
                if family is None:
                    family = states[metric] = GaugeMetricFamily(
                        self._name(metric), f"roomd reading {metric}", labels=(*LABELS, "state")
                    )
                seen = self.seen.setdefault((room, device, metric), set())
                seen.add(value)
                for state in seen:
                    family.add_metric((site, room, device, state), 1.0 if state == value else 0.0)
                return
            family = gauges.get(metric)
            if family is None:
                family = gauges[metric] = GaugeMetricFamily(
                    self._name(metric), f"roomd reading {metric}", labels=LABELS
                )
            family.add_metric((site, room, device), float(value))

        for room, device, online, readings in list(self.metrics.devices()):
            if online is not None:
                up.add_metric((site, room, device), 1.0 if online else 0.0)
                add(room, device, "online", 1 if online else 0)
            for metric, value in list(readings.items()):
                add(room, device, metric, value)
        for (room, device), values in list(self.metrics._values.items()):
            for metric, value in list(values.items()):
                add(room, device, metric, value)
        yield up
        polls = HistogramMetricFamily(
            "roomd_poll_duration_seconds", "Time to poll one device", labels=("site", "driver")
        )
        for driver, histogram in list(self.metrics.poll_duration.items()):
            polls.add_metric((site, driver), histogram.buckets(), histogram.sum)
        yield polls
        yield from gauges.values()
        yield from states.values()
        yield from self._rooms(site)

    def _rooms(self, site: str) -> Iterable[Any]:
        """Each room's state (what the console's tiles show; `roomd_room_ready{state}` is the
        last check's verdict, a reading), whether a meeting runs, and its effective limits
        (profile and overrides), so panels draw the room's own thresholds."""
        state = GaugeMetricFamily(
            "roomd_room_state",
            "The room's state: 0 ready, 1 degraded, 2 not ready, 3 offline, 4 waiting",
            labels=("site", "room"),
        )
        meeting = GaugeMetricFamily(
            "roomd_room_in_meeting", "1 while a booked meeting runs", labels=("site", "room")
        )
        limit = GaugeMetricFamily(
            "roomd_limit",
            "A room's effective limit for a reading (the standard's, or the room's override)",
            labels=("site", "room", "metric", "bound", "inclusive"),
        )
        for room, code, in_meeting, limits in list(self.metrics.rooms()):
            state.add_metric((site, room), float(code))
            meeting.add_metric((site, room), 1.0 if in_meeting else 0.0)
            for metric, bound, value, inclusive in limits:
                limit.add_metric((site, room, metric, bound, str(inclusive).lower()), value)
        yield from (state, meeting, limit)


class HttpServer:
    """GET /metrics and /healthz. Kept tiny: no framework for two read-only endpoints."""

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics | Callable[[], Awaitable[bytes]],
        health: Callable[[], dict[str, Any]],
    ):
        self.host = host
        self.port = port
        # A Metrics is rendered in a thread (at 5,000 devices rendering takes 50-200 ms); a
        # worker pool's supervisor passes its own coroutine (it merges its workers' metrics).
        self.render = (
            (lambda: asyncio.to_thread(metrics.render)) if isinstance(metrics, Metrics) else metrics
        )
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
                body = await self.render()
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
