"""`roomd run --workers n`: one site, one config, n worker processes (past one core).

Each worker is `roomd run --shard i/n` (shards.py): its own rooms, store, MQTT client and
availability topic; alerts and topics are the same as one process would publish. This process
only supervises: it starts the workers, restarts one that dies (capped, jittered backoff),
forwards SIGHUP (reload) and SIGTERM, and serves the site's /metrics and /healthz on the
configured address, merged from the workers' (each listens on a loopback port of its own).
Workers' series carry a `shard` label, so no two workers' series collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from .config import SiteConfig
from .sinks.prometheus import HttpServer
from .systemd import SdNotifier

log = logging.getLogger("roomd.workers")

RESTART_CAP = 30.0  # seconds: longest wait before restarting a worker that keeps dying


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Worker:
    index: int
    count: int
    port: int
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    health: dict[str, Any] = field(default_factory=dict)

    @property
    def shard(self) -> str:
        return f"{self.index}/{self.count}"


class WorkerPool:
    def __init__(self, cfg: SiteConfig, count: int, log_level: str) -> None:
        self.cfg = cfg
        self.count = count
        self.log_level = log_level
        self.workers = [Worker(i, count, _free_loopback_port()) for i in range(1, count + 1)]
        self.http = HttpServer(cfg.http.host, cfg.http.port, self.render, self.health)
        self.systemd = SdNotifier()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # ---- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        await self.http.start()
        log.info(
            "roomd %s: %d workers; metrics on http://%s:%d/metrics",
            self.cfg.site,
            self.count,
            self.http.host,
            self.http.port,
        )
        try:
            async with asyncio.TaskGroup() as tg:
                for w in self.workers:
                    tg.create_task(self._keep_running(w), name=f"worker:{w.shard}")
                tg.create_task(self._ready_when_up(), name="workers-ready")
                await self._stopping.wait()
                self.systemd.notify("STOPPING=1")
                await self._stop_all()
                raise _Stop
        except* _Stop:
            pass
        finally:
            await self.http.stop()
            self.systemd.close()

    def stop(self) -> None:
        self._stopping.set()

    def reload(self) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                w.proc.send_signal(signal.SIGHUP)

    async def _keep_running(self, w: Worker) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        cmd = [sys.executable, "-m", "roomd", "--log-level", self.log_level, "run"]
        cmd += ["-c", str(self.cfg.path), "--shard", w.shard, "--listen", f"127.0.0.1:{w.port}"]
        while not self._stopping.is_set():
            w.proc = await asyncio.create_subprocess_exec(*cmd, env=env)
            code = await w.proc.wait()
            if self._stopping.is_set():
                return
            w.restarts += 1
            ceiling = min(RESTART_CAP, 0.5 * 2 ** min(w.restarts, 8))
            delay = random.uniform(ceiling / 2, ceiling)
            log.error("worker %s exited (%s); restarting in %.1f s", w.shard, code, delay)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()

    async def _stop_all(self) -> None:
        running = [w.proc for w in self.workers if w.proc and w.proc.returncode is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        for proc in running:
            try:
                async with asyncio.timeout(20):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()

    async def _ready_when_up(self) -> None:
        while not self._stopping.is_set():
            await self.refresh_health()
            if all(w.health.get("status") == "ok" for w in self.workers):
                self.systemd.notify("READY=1", f"STATUS={self.count} workers up")
                break
            await asyncio.sleep(0.5)
        while not self._stopping.is_set():  # health, and the watchdog pings, from this loop
            await self.refresh_health()
            if self.systemd.watchdog:
                self.systemd.notify("WATCHDOG=1")
            await asyncio.sleep(2.0)

    # ---- the site's /metrics and /healthz, from the workers' ----------------------------------

    async def _fetch(self, w: Worker, path: str) -> bytes | None:
        try:
            async with asyncio.timeout(10):
                reader, writer = await asyncio.open_connection("127.0.0.1", w.port)
                writer.write(f"GET {path} HTTP/1.1\r\nHost: worker\r\n\r\n".encode())
                data = await reader.read()
                writer.close()
        except (OSError, TimeoutError):
            return None
        head, _, body = data.partition(b"\r\n\r\n")
        return body if head.startswith(b"HTTP/1.1 200") else None

    async def render(self) -> bytes:
        bodies = await asyncio.gather(*(self._fetch(w, "/metrics") for w in self.workers))
        texts = [(w.shard, b.decode()) for w, b in zip(self.workers, bodies, strict=True) if b]
        return await asyncio.to_thread(merge_metrics, texts)

    def health(self) -> dict[str, Any]:
        """The site's health from the workers' last answers (refreshed every 2 s)."""
        states = [w.health for w in self.workers]
        up = all(h.get("status") == "ok" for h in states)
        return {
            "status": "stopping" if self._stopping.is_set() else ("ok" if up else "degraded"),
            "site": self.cfg.site,
            "mqtt_connected": all(h.get("mqtt_connected") for h in states),
            **{
                key: sum(int(h.get(key) or 0) for h in states)
                for key in ("outbox", "devices", "devices_up", "alerts_active")
            },
            "workers": [
                {
                    "shard": w.shard,
                    "pid": w.proc.pid if w.proc else None,
                    "restarts": w.restarts,
                    **w.health,
                }
                for w in self.workers
            ],
        }

    async def refresh_health(self) -> None:
        for w in self.workers:
            body = await self._fetch(w, "/healthz")
            try:
                w.health = json.loads(body) if body else {"status": "down"}
            except ValueError:
                w.health = {"status": "down"}


def merge_metrics(texts: list[tuple[str, str]]) -> bytes:
    """One exposition from several workers': each family once, each sample with `shard`."""
    families: dict[str, Metric] = {}
    for shard, text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            for sample in family.samples:
                merged.add_sample(
                    sample.name, {**sample.labels, "shard": shard}, sample.value, sample.timestamp
                )

    class _Merged:
        def collect(self) -> list[Metric]:
            return list(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())
    return generate_latest(registry)


class _Stop(Exception):
    pass
