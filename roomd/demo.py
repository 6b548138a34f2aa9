"""`roomd demo`: simulators + daemon + a broker + metrics + a live view, nothing to prepare."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from .console.auth import hash_password
from .daemon.config import load_config
from .daemon.supervisor import Daemon
from .simulators.site import SimControl, SimulatedSite
from .top import SiteView, follow

log = logging.getLogger("roomd.demo")


def _port_answers(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.3):
        return True
    return False


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free port")


async def _embedded_broker(port: int) -> Any:
    try:
        from amqtt.broker import Broker
    except ImportError:
        return None
    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.ERROR)
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
    )
    await broker.start()
    return broker


async def run_demo(duration: float | None = None, rooms: int = 3) -> int:
    console = Console(stderr=False)
    workdir = Path(tempfile.mkdtemp(prefix="roomd-demo-"))
    broker = None
    if _port_answers("127.0.0.1", 1883):
        mqtt_port = 1883
        broker_note = "the local broker at 127.0.0.1:1883"
    else:
        mqtt_port = _free_port(1883)
        broker = await _embedded_broker(mqtt_port)
        if broker is None:
            console.print(
                "[red]No broker at 127.0.0.1:1883 and amqtt is not installed: "
                "pip install 'roomd[demo]' or start mosquitto.[/red]"
            )
            return 1
        broker_note = f"an embedded broker at 127.0.0.1:{mqtt_port}"
    http_port = _free_port(9880)
    console_port = _free_port(9881)
    site = await SimulatedSite(rooms, "demo", tap_period=4.0).start()
    control = await SimControl(site).start()
    cfg_path = workdir / "roomd.yaml"
    site.write_config(
        cfg_path,
        mqtt_url=f"mqtt://127.0.0.1:{mqtt_port}",
        http_listen=f"127.0.0.1:{http_port}",
        state_dir=str(workdir / "state"),
        poll="1s",
    )
    # Demo timings: short holds so alerts show up and clear within a minute.
    raw = yaml.safe_load(cfg_path.read_text())
    for room in raw["rooms"]:
        room["thresholds"] = {
            "co2_ppm": {"hold": "5s"},
            "illuminance_lux": {"hold": "5s"},
            "temperature_c": {"hold": "10s"},
            "humidity_pct": {"hold": "10s"},
        }
    # The help-desk console, with a login made for this run (printed below).
    password = secrets.token_urlsafe(9)
    raw["console"] = {
        "enabled": True,
        "listen": f"127.0.0.1:{console_port}",
        "users": [{"name": "demo", "role": "technician", "password_hash": hash_password(password)}],
    }
    cfg_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    events: deque[str] = deque(maxlen=8)
    handler = _EventLines(events)
    logging.getLogger("roomd").addHandler(handler)
    logging.getLogger("roomd").propagate = False
    daemon = Daemon(load_config(cfg_path))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(daemon.run(), name="daemon")
    roomd = roomd_command()
    header = Text.from_markup(
        f"Broker: {broker_note}\n"
        f"Subscribe: [bold]mosquitto_sub -h 127.0.0.1 -p {mqtt_port} -t 'roomd/#' -v[/bold]\n"
        f"Console:   [bold]http://127.0.0.1:{console_port}/[/bold]   "
        f"log in as [bold]demo[/bold], password [bold]{password}[/bold]\n"
        f"Metrics:   [bold]http://127.0.0.1:{http_port}/metrics[/bold]   config: {cfg_path}\n"
        f"Check:     [bold]{roomd} check r301 -c {cfg_path}[/bold]\n"
        f"Faults:    [bold]{roomd} simctl 127.0.0.1:{control.port} fault r301 mixer mute_main"
        "[/bold] (then `none`)\n"
        "Scenario: r302 CO2 rises past 1000 ppm, r303's lights go off, r303's RS-485 climate "
        "sensor stops answering, r303's projector lamp fails and r302's projector fan warns, "
        "r303's main mix is muted and r302 picks up mains hum; each recovers. r301 stays ready. "
        "Ctrl-C to stop."
    )

    # The same view as `roomd top`, fed from the demo's broker.
    site_view = SiteView(daemon.config)
    follower, _ = follow(site_view, daemon.config, mqtt_port)

    def view() -> Group:
        room_for = max(10, console.size.height - 8 - len(events))
        lines = site_view.render(console.size.width, room_for, daemon.config.language, time.time())
        return Group(header, *lines, Text("\n".join(events), style="cyan"))

    started = time.monotonic()
    try:
        if console.is_terminal:
            with Live(view(), console=console, refresh_per_second=2, screen=False) as live:
                while not stop.is_set() and not task.done():
                    if duration and time.monotonic() - started > duration:
                        break
                    live.update(view())
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.5)
        else:
            console.print(header, soft_wrap=True)  # piped: whole lines, copyable commands
            while not stop.is_set() and not task.done():
                if duration and time.monotonic() - started > duration:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 5)
                lang = daemon.config.language
                for line in site_view.render(console.width, 10_000, lang, time.time()):
                    print(line.plain)
                while events:
                    console.print(events.popleft())
    finally:
        follower.loop_stop()
        follower.disconnect()
        daemon.stop()
        with contextlib.suppress(Exception):
            await task
        await control.stop()
        await site.stop()
        if broker is not None:
            with contextlib.suppress(Exception):
                await broker.shutdown()
        logging.getLogger("roomd").removeHandler(handler)
        shutil.rmtree(workdir, ignore_errors=True)  # config, state, sockets: nothing left behind
    return 0


def roomd_command() -> str:
    """How to call this roomd from another terminal: the commands the demo prints must work as
    printed, also where `roomd` is not on PATH (it lives in .venv/bin)."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "roomd" and argv0.exists():
        here = argv0.resolve() if argv0.is_symlink() else argv0.absolute()
        if shutil.which("roomd") == str(here):
            return "roomd"
        return shlex.quote(str(here))
    return f"{shlex.quote(sys.executable)} -m roomd"


class _EventLines(logging.Handler):
    def __init__(self, lines: deque[str]) -> None:
        super().__init__(logging.INFO)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(time.strftime("%H:%M:%S ") + record.getMessage())
