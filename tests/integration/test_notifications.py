"""People in the loop: an alert walked through three escalation tiers to a real SMTP server
(aiosmtpd) and a webhook receiver (Apprise's json:// format), in Chinese and in English, on a
fake clock; acknowledgement stops the chain; the clear reaches everyone who was told; a target
that keeps failing becomes an alert; a restart repeats nothing."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from roomd.daemon.clock import FakeClock
from roomd.daemon.config import load_config
from roomd.daemon.supervisor import Daemon
from roomd.simulators.modbus import ModbusTcpSim, SimSensor
from tests.conftest import Mosquitto, free_port, until, write_config

START = 1_795_000_000.0
OFFLINE = "r301.env.online.min"


@dataclass
class Mailbox:
    messages: list[email.message.EmailMessage] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, email.message.EmailMessage)
        self.messages.append(msg)
        return "250 OK"

    def to(self, address: str) -> list[tuple[str, str]]:
        out = []
        for m in self.messages:
            if address in str(m["To"]):
                part = m.get_body(("plain",))
                body = part.get_content() if part is not None else ""
                out.append((str(m["Subject"]), str(body)))
        return out


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


class Hooks:
    """A webhook receiver: what Apprise's json:// posts, per path."""

    def __init__(self, port: int) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers["content-length"])
                hooks.received.append((self.path, json.loads(self.rfile.read(size))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def on(self, path: str) -> list[dict[str, Any]]:
        return [body for p, body in self.received if p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def config(
    tmp_path: Path, broker: Mosquitto, sim: ModbusTcpSim, smtp_port: int, hook_port: int
) -> Path:
    # The on-site technician's address holds no secret here, but comes from a file as a real
    # one (with a password in it) would.
    onsite = tmp_path / "onsite.url"
    onsite.write_text(
        f"mailto://127.0.0.1:{smtp_port}?from=roomd@hq.test&to=onsite@hq.test&mode=insecure\n"
    )
    return write_config(
        tmp_path / "roomd.yaml",
        {
            "site": "hq",
            "language": "en",
            "mqtt": {"url": broker.url},
            "http": {"listen": f"127.0.0.1:{free_port()}"},
            "state_dir": str(tmp_path / "state"),
            "notifications": {
                "console_url": "http://127.0.0.1:9881/",
                "targets": {
                    "onsite": {"url_file": str(onsite), "language": "zh-CN"},
                    "organiser": {"url": f"json://127.0.0.1:{hook_port}/organiser"},
                    "centre": {
                        "url": f"mailto://127.0.0.1:{smtp_port}?from=roomd@hq.test"
                        "&to=centre@hq.test&mode=insecure"
                    },
                },
                "routes": [
                    {
                        "name": "chain",
                        "match": {"grades": ["I", "II"]},
                        "tiers": [
                            {"after": "0s", "targets": ["onsite"]},
                            {"after": "5m", "targets": ["organiser"]},
                            {"after": "15m", "targets": ["centre"]},
                        ],
                        "repeat": "10m",
                    }
                ],
            },
            "rooms": [
                {
                    "id": "r301",
                    "name": "市政厅 301",
                    "devices": [
                        {
                            "id": "env",
                            "driver": "modbus",
                            "model": "senseair-s8",
                            "host": sim.address,
                            "poll": "100ms",
                            "timeout": "100ms",
                        }
                    ],
                }
            ],
        },
    )


async def test_an_alert_walks_three_tiers_until_acknowledged_then_all_hear_the_clear(
    tmp_path: Path, mosquitto: Mosquitto, smtp: tuple[Mailbox, int]
) -> None:
    box, smtp_port = smtp
    hooks = Hooks(free_port())
    sensor = SimSensor.of("senseair-s8", co2_ppm=600)
    sim = await ModbusTcpSim([sensor]).start()
    clock = FakeClock(START)
    cfg = config(tmp_path, mosquitto, sim, smtp_port, hooks.server.server_port)
    daemon = Daemon(load_config(cfg), clock=clock)
    task = asyncio.create_task(daemon.run())
    try:
        await daemon.mqtt.wait_connected(10)
        sensor.fault = "silent"
        await until(lambda: OFFLINE in daemon.book.active, 10, "offline alert")

        # Tier 1 at once: the on-site technician, in Chinese, with how to acknowledge.
        await until(lambda: box.to("onsite@hq.test"), 15, "mail to the on-site technician")
        [(subject, body)] = box.to("onsite@hq.test")
        assert subject == "[II] 市政厅 301：env 离线"
        assert "会议室：市政厅 301（r301）" in body and "等级：II级" in body
        assert f"确认方法：roomd ack {OFFLINE}" in body
        assert "http://127.0.0.1:9881/rooms/r301" in body
        assert not hooks.received and not box.to("centre@hq.test")

        # Tier 2 after 5 minutes without acknowledgement: the organiser's webhook, in English.
        clock.advance(299)
        assert daemon.notifier.tick() == 0
        clock.advance(1)
        assert daemon.notifier.tick() == 1
        await until(lambda: hooks.on("/organiser"), 15, "the organiser's webhook")
        [hook] = hooks.on("/organiser")
        assert hook["title"].startswith(
            "Not acknowledged after 5 min: [II] 市政厅 301: env offline"
        )
        assert f"roomd ack {OFFLINE}" in hook["message"] and "Grade: grade II" in hook["message"]

        # Tier 3 at 15 minutes: the control centre (and no repeat on top of it).
        clock.advance(600)
        assert daemon.notifier.tick() == 1
        await until(lambda: box.to("centre@hq.test"), 15, "mail to the control centre")
        assert box.to("centre@hq.test")[0][0].startswith("Not acknowledged after 15 min")

        # Reported again every 10 minutes to the last tier reached, until acknowledged.
        clock.advance(600)
        assert daemon.notifier.tick() == 1
        await until(lambda: len(box.to("centre@hq.test")) == 2, 15, "the repeat")
        daemon.commands.acknowledge(OFFLINE, "ana@console")
        clock.advance(3600)
        assert daemon.notifier.tick() == 0
        await asyncio.sleep(1.5)
        assert len(box.to("centre@hq.test")) == 2 and len(box.to("onsite@hq.test")) == 1

        # The clear goes to everyone who was told, each in their language, once.
        sensor.fault = None
        await until(lambda: OFFLINE not in daemon.book.active, 10, "the clear")
        await until(lambda: len(box.to("onsite@hq.test")) == 2, 15, "the clear, on-site")
        await until(lambda: len(hooks.on("/organiser")) == 2, 15, "the clear, organiser")
        await until(lambda: len(box.to("centre@hq.test")) == 3, 15, "the clear, centre")
        assert box.to("onsite@hq.test")[1][0] == "已恢复：市政厅 301：env 离线"
        assert hooks.on("/organiser")[1]["title"].startswith("Cleared: 市政厅 301: env offline")

        # Every delivery is recorded; time to acknowledge and to clear are measured.
        await until(
            lambda: all(r["state"] == "sent" for r in daemon.store.notifications_log()),
            10,
            "every delivery recorded",
        )
        log = daemon.store.notifications_log()
        assert [(r["target"], r["kind"], r["state"]) for r in log] == [
            ("onsite", "raised", "sent"),
            ("organiser", "escalated", "sent"),
            ("centre", "escalated", "sent"),
            ("centre", "repeat-1", "sent"),
            ("centre", "cleared", "sent"),
            ("onsite", "cleared", "sent"),
            ("organiser", "cleared", "sent"),
        ]
        [incident] = daemon.store.incidents()
        assert incident.to_ack == pytest.approx(1500) and incident.acked_by == "ana@console"
        text = daemon.metrics.render().decode()
        assert 'roomd_alert_time_to_acknowledge_seconds_count{severity="II",site="hq"} 1.0' in text
        assert 'roomd_notifications_total{outcome="sent",site="hq",target="centre"} 3.0' in text
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 10)
        await sim.stop()
        hooks.close()


async def test_a_failing_target_becomes_an_alert_and_a_restart_repeats_nothing(
    tmp_path: Path, mosquitto: Mosquitto, smtp: tuple[Mailbox, int]
) -> None:
    box, smtp_port = smtp
    hook_port = free_port()  # nobody listens yet: the organiser's webhook fails
    sensor = SimSensor.of("senseair-s8", co2_ppm=600)
    sim = await ModbusTcpSim([sensor]).start()
    clock = FakeClock(START)
    cfg = config(tmp_path, mosquitto, sim, smtp_port, hook_port)
    daemon = Daemon(load_config(cfg), clock=clock)
    task = asyncio.create_task(daemon.run())
    hooks: Hooks | None = None
    try:
        await daemon.mqtt.wait_connected(10)
        sensor.fault = "silent"
        await until(lambda: OFFLINE in daemon.book.active, 10, "offline alert")
        clock.advance(300)
        daemon.notifier.tick()
        failing = "r301._room.notification_failed.failing"
        for _ in range(3):  # retried with backoff (5 s, 10 s, ...), then an alert
            await until(
                lambda: any(
                    r["attempts"]
                    for r in daemon.store.notifications_log()
                    if r["target"] == "organiser"
                ),
                10,
                "an attempt",
            )
            clock.advance(20)
            await daemon.delivery.deliver_due()
        await until(lambda: failing in daemon.book.active, 10, "the delivery alert")
        assert "organiser" in daemon.book.active[failing].message
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 10)
    # Restart: what was decided is not decided again; the webhook now answers and the queued
    # message goes out, which clears the delivery alert.
    hooks = Hooks(hook_port)
    daemon = Daemon(load_config(cfg), clock=clock)
    task = asyncio.create_task(daemon.run())
    try:
        await daemon.mqtt.wait_connected(10)
        assert daemon.notifier.tick() == 0
        clock.advance(300)
        await until(lambda: hooks.on("/organiser"), 15, "the queued webhook after the restart")
        await until(lambda: failing not in daemon.book.active, 10, "the delivery alert clears")
        # The on-site technician heard of the offline sensor once (not again after the
        # restart), and of the failing webhook (a grade II alert of its own): raise and clear.
        subjects = [subject for subject, _ in box.to("onsite@hq.test")]
        assert subjects.count("[II] 市政厅 301：env 离线") == 1, subjects
        await until(lambda: len(box.to("onsite@hq.test")) == 3, 15, "the delivery alert's clear")
        subjects = [subject for subject, _ in box.to("onsite@hq.test")]
        assert (
            subjects[1]
            == "[II] 市政厅 301：通知未送达：organiser: " + subjects[1].split("organiser: ", 1)[1]
        )
        assert subjects[2].startswith("已恢复：市政厅 301：通知未送达"), subjects
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 10)
        await sim.stop()
        hooks.close()
