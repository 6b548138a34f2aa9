"""`roomd` command line (contract §1). Exit codes: 0 ok, 1 runtime failure, 2 usage or config."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from . import __version__
from .daemon.config import ConfigError, SiteConfig, default_config_path, load_config
from .i18n import N_, translations

if TYPE_CHECKING:
    from collections.abc import Callable

    from .daemon.store import Store

T = TypeVar("T")

log = logging.getLogger("roomd")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # pymodbus logs every framing hiccup at ERROR; our drivers report them once, as alerts.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def gettext(message: str) -> str:
    """A CLI message in the terminal's language."""
    return translations(cli_language()).gettext(message)


NO_ANSWER = N_("no answer from the daemon (is `roomd run` connected to the broker?)")


def cli_language() -> str:
    """The terminal's language, as gettext reads it: zh-CN for a Chinese locale
    (`ROOMD_LANG`, `LANGUAGE`, `LC_ALL`, `LC_MESSAGES`, `LANG`, the first one set)."""
    for name in ("ROOMD_LANG", "LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(name)
        if value:
            return "zh-CN" if value.lower().startswith("zh") else "en"
    return "en"


# argparse's messages, marked for the catalog (argparse asks gettext for them by these ids).
ARGPARSE_MESSAGES = (
    N_("usage: "),
    N_("positional arguments"),
    N_("options"),
    N_("show this help message and exit"),
    N_("show program's version number and exit"),
    N_("%(prog)s: error: %(message)s\n"),
    N_("the following arguments are required: %s"),
    N_("invalid choice: %(value)r (choose from %(choices)s)"),
    N_("unrecognized arguments: %s"),
    N_("expected one argument"),
    N_("argument %(argument_name)s: %(message)s"),
    N_("invalid %(type)s value: %(value)r"),
)


def _config_arg(p: argparse.ArgumentParser) -> None:
    _ = translations(cli_language()).gettext
    p.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        help=_("site config (default: $ROOMD_CONFIG, ./roomd.yaml, /etc/roomd/roomd.yaml)"),
    )


def _load(args: argparse.Namespace) -> SiteConfig | None:
    path = args.config or default_config_path()
    try:
        return load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return None


def cmd_validate(args: argparse.Namespace) -> int:
    path = args.config or default_config_path()
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue)
        print(
            gettext("%(path)s: %(n)s problem(s)") % {"path": path, "n": len(exc.issues)},
            file=sys.stderr,
        )
        return 2
    devices = sum(len(r.devices) for r in cfg.rooms)
    print(
        gettext("%(path)s: ok: site %(site)s, %(rooms)s rooms, %(devices)s devices")
        % {"path": path, "site": cfg.site, "rooms": len(cfg.rooms), "devices": devices}
    )
    return 0


def run_event_loop(main: Any) -> Any:
    """uvloop when installed (a default dependency on Linux: its timers, sockets and
    callbacks cost a fraction of asyncio's), else asyncio's own loop. ROOMD_LOOP=asyncio
    chooses the latter (for comparisons and bug reports)."""
    factory = None
    if os.environ.get("ROOMD_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            pass
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if cfg is None:
        return 2
    from .daemon.supervisor import state_dir_writable

    problem = state_dir_writable(cfg.state_dir)
    if problem:
        print(f"{cfg.path}: {problem}", file=sys.stderr)
        return 2
    from .daemon.shards import ShardError, for_shard, parse_shard

    try:
        if args.listen:
            cfg = dataclasses.replace(cfg, http=cfg.http.model_copy(update={"listen": args.listen}))
        if args.workers > 1 and args.shard:
            raise ShardError("--workers and --shard: one or the other")
        if not 1 <= args.workers <= 64:
            raise ShardError("--workers: 1 to 64")
        if args.shard:
            cfg = for_shard(cfg, *parse_shard(args.shard))
        elif args.workers > 1:
            for i in range(1, args.workers + 1):
                for_shard(cfg, i, args.workers)  # the shard map fits, before anything starts
            return run_event_loop(_run_workers(cfg, args.workers, args.log_level)) or 0
    except (ShardError, ValueError) as exc:
        print(f"roomd run: {exc}", file=sys.stderr)
        return 2
    try:
        run_event_loop(_run_daemon(cfg))
    except OSError as exc:
        log.error("cannot run: %s", exc)
        return 1
    return 0


async def _run_daemon(cfg: SiteConfig) -> None:
    from .daemon.supervisor import Daemon

    daemon = Daemon(cfg)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, daemon.stop)
    loop.add_signal_handler(signal.SIGINT, daemon.stop)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)
    await daemon.run()


async def _run_workers(cfg: SiteConfig, count: int, log_level: str) -> None:
    from .daemon.workers import WorkerPool

    pool = WorkerPool(cfg, count, log_level)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, pool.stop)
    loop.add_signal_handler(signal.SIGINT, pool.stop)
    loop.add_signal_handler(signal.SIGHUP, pool.reload)
    await pool.run()


def cmd_simulate(args: argparse.Namespace) -> int:
    from .simulators.scenario import SCENARIOS

    if args.scenario not in SCENARIOS:
        print(
            f"roomd simulate: unknown scenario {args.scenario!r} (known: {', '.join(SCENARIOS)})",
            file=sys.stderr,
        )
        return 2
    asyncio.run(_simulate(args))
    return 0


async def _simulate(args: argparse.Namespace) -> None:
    from .simulators.site import SimControl, SimulatedSite

    site = await SimulatedSite(args.rooms, args.scenario, rtu=not args.no_rtu).start()
    host, _, port = args.control.rpartition(":")
    control = await SimControl(site, host or "127.0.0.1", int(port or 0)).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    for room in site.rooms:
        parts = [f"{d}=modbus-tcp {s.address}" for d, s in room.tcp.items()]
        if room.projector is not None:
            parts.append(f"projector=pjlink {room.projector.address}")
        if room.serial_projector is not None:
            parts.append(f"side-projector=escvp21 {room.serial_projector.path}")
        if room.reader is not None:
            parts.append(f"reader={room.reader.framing} {room.reader.path}")
        if room.rtu is not None:
            parts += [
                f"{d}=modbus-rtu {room.rtu.path} unit {u.unit}" for d, u in room.rtu_units.items()
            ]
        print(f"{room.id}: " + ", ".join(parts), flush=True)
    if args.write_config:
        site.write_config(
            args.write_config,
            mqtt_url=args.mqtt,
            http_listen=args.http,
            state_dir=str(args.state_dir),
            poll=args.poll,
        )
        print(f"wrote {args.write_config}; run: roomd run -c {args.write_config}", flush=True)
    print(
        f"simulating {len(site.rooms)} rooms, scenario {args.scenario}; Ctrl-C to stop", flush=True
    )
    if site.search is not None:
        print(
            f"projectors: roomd discover --address 127.0.0.1 --port {site.search_port} "
            f"--tcp-port {site.projector_port}",
            flush=True,
        )
    print(
        f"control: roomd simctl {control.host}:{control.port} list  "
        "(or nc; fault ROOM DEVICE FAULT | set ROOM DEVICE METRIC VALUE)",
        flush=True,
    )
    await stop.wait()
    await control.stop()
    await site.stop()


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    try:
        return asyncio.run(run_demo(duration=args.duration, rooms=args.rooms))
    except KeyboardInterrupt:
        return 0


def cmd_discover(args: argparse.Namespace) -> int:
    from .discover import discover, snippet

    password = args.password_file.read_text().strip() if args.password_file else None
    found = asyncio.run(discover(args.address, args.port, args.tcp_port, args.timeout, password))
    where = f"{args.address}:{args.port}"
    if not found:
        print(f"# no PJLink Class 2 projector answered %2SRCH on {where} within {args.timeout:g}s")
        return 0
    print(f"# {len(found)} PJLink projector(s) answered %2SRCH on {where}; paste under a room:")
    print("    devices:")
    print(snippet(found, args.tcp_port))
    return 0


def cmd_signins_export(args: argparse.Namespace) -> int:
    import csv

    from .daemon.clock import iso
    from .daemon.store import Store

    cfg = _load(args)
    if cfg is None:
        return 2
    from .daemon.attendance import Attendance

    store = Store(cfg.state_dir)
    try:
        rows = store.signins(args.meeting)
    finally:
        store.close()
    # Names are not in the store (STANDARD §5): they come from the rooms' rosters, here only.
    attendance = Attendance(Attendance.load_secret(cfg.signins.secret_file, cfg.state_dir))
    for room in cfg.rooms:
        if room.config.roster is not None and any(r.room == room.id for r in rows):
            attendance.load_roster(room.id, room.config.roster)
    if not rows:
        print(f"roomd signins export: no sign-ins for meeting {args.meeting!r}", file=sys.stderr)
        return 1
    out = args.output.open("w", newline="", encoding="utf-8") if args.output else sys.stdout
    try:
        w = csv.writer(out)
        w.writerow(["meeting", "room", "time", "attendee", "reader", "latency_ms"])
        for r in rows:
            w.writerow(
                [
                    r.meeting,
                    r.room,
                    iso(r.ts),
                    attendance.attendee(r.room, r.card) or "unknown",
                    r.reader,
                    f"{r.latency * 1000:.1f}",
                ]
            )
    finally:
        if args.output:
            out.close()
    return 0


def cmd_ack(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if cfg is None:
        return 2
    reply = site_command(cfg, "ack", {"alert": args.alert_id, "by": "cli"}, timeout=args.timeout)
    if reply is None:
        print("roomd ack: " + gettext(NO_ANSWER), file=sys.stderr)
        return 1
    if reply.get("ok"):
        print(gettext("acknowledged %(alert)s") % {"alert": args.alert_id})
        return 0
    print(f"roomd ack: {reply.get('error')}", file=sys.stderr)
    return 1


def cmd_simctl(args: argparse.Namespace) -> int:
    """One line to a running simulator's control port; prints the reply."""
    import socket

    host, _, port = args.address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5) as s:
            s.sendall((" ".join(args.words) + "\n").encode())
            reply = s.makefile().readline().strip()
    except (OSError, ValueError) as exc:
        print(f"roomd simctl: {args.address}: {exc}", file=sys.stderr)
        return 2
    print(reply)
    return 0 if reply.startswith("ok") else 1


def cmd_check(args: argparse.Namespace) -> int:
    """A pre-meeting check of one room, run by the daemon against its live devices."""
    from .daemon.checks import render_html, render_text

    cfg = _load(args)
    if cfg is None:
        return 2
    if args.room not in {r.id for r in cfg.rooms}:
        known = ", ".join(r.id for r in cfg.rooms)
        print(
            "roomd check: "
            + gettext("no room %(room)r in %(path)s (rooms: %(known)s)")
            % {"room": args.room, "path": cfg.path, "known": known},
            file=sys.stderr,
        )
        return 2
    cmd_args: dict[str, Any] = {"room": args.room}
    if args.level is not None:
        cmd_args["level"] = args.level
    reply = site_command(cfg, "check", cmd_args, timeout=args.timeout)
    if reply is None:
        print("roomd check: " + gettext(NO_ANSWER), file=sys.stderr)
        return 2
    if not reply.get("ok"):
        print(f"roomd check: {reply.get('error')}", file=sys.stderr)
        return 2
    report = reply["result"]
    if args.format == "json":
        text = json.dumps(report, indent=2) + "\n"
    elif args.format == "html":
        text = render_html(report, cfg.language)
    else:
        text = render_text(report, cfg.language)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
        verdict = gettext("ready") if report["passed"] else gettext("NOT READY")
        print(
            gettext("%(room)s: %(verdict)s; report in %(path)s")
            % {"room": args.room, "verdict": verdict, "path": args.output}
        )
    else:
        sys.stdout.write(text)
    return 0 if report["passed"] else 1


def _since(text: str | None) -> float | None:
    from datetime import UTC, datetime

    if not text:
        return 0.0
    try:
        day = datetime.fromisoformat(text)
    except ValueError:
        print(f"--since: expected a date like 2026-11-01, got {text!r}", file=sys.stderr)
        return None
    return (day if day.tzinfo else day.replace(tzinfo=UTC)).timestamp()


def _read_store(args: argparse.Namespace, read: Callable[[Store, float], T]) -> T | None:
    """`read(store, since)` on the config's store (the reports); None when the config or
    `--since` is wrong (already said)."""
    from .daemon.store import Store

    cfg = _load(args)
    since = _since(args.since) if cfg is not None else None
    if cfg is None or since is None:
        return None
    store = Store(cfg.state_dir)
    try:
        return read(store, since)
    finally:
        store.close()


def cmd_report_incidents(args: argparse.Namespace) -> int:
    """Alerts with time to acknowledge and to clear (STANDARD §3: the 1- and 5-minute rules)."""
    from statistics import median

    from .console.views import incidents_csv

    rows = _read_store(args, lambda store, since: store.incidents(since, limit=1_000_000))
    if rows is None:
        return 2
    if args.format == "csv":
        sys.stdout.write(incidents_csv(rows).decode("utf-8-sig"))
        return 0
    acked = [r.to_ack for r in rows if r.to_ack is not None]
    cleared = [r.to_clear for r in rows if r.to_clear is not None]
    print(
        gettext("%(n)s alerts; %(acked)s acknowledged, %(cleared)s cleared")
        % {"n": len(rows), "acked": len(acked), "cleared": len(cleared)}
    )
    if acked:
        late = sum(1 for t in acked if t > 60)
        print(
            gettext("time to acknowledge: median %(median)s s, over 1 min: %(late)s")
            % {"median": f"{median(acked):.0f}", "late": late}
        )
    if cleared:
        late = sum(1 for t in cleared if t > 300)
        print(
            gettext("time to clear: median %(median)s s, over 5 min: %(late)s")
            % {"median": f"{median(cleared):.0f}", "late": late}
        )
    for r in rows:
        to_ack = "—" if r.to_ack is None else f"{r.to_ack:.0f} s"
        to_clear = "open" if r.to_clear is None else f"{r.to_clear:.0f} s"
        print(f"[{r.severity}] {r.alert}  ack {to_ack} ({r.acked_by or '-'})  clear {to_clear}")
    return 0


def cmd_console_hash_password(args: argparse.Namespace) -> int:
    """An argon2 hash for a console user's `password_hash` (the password from stdin or a
    prompt; never an argument, which `ps` would show)."""
    import getpass

    from .console.auth import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("roomd console hash-password: the two entries differ", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        print("roomd console hash-password: use 8 characters or more", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


def cmd_report_usage(args: argparse.Namespace) -> int:
    import csv

    from .daemon.clock import iso

    rows = _read_store(args, lambda store, since: store.usage(since))
    if rows is None:
        return 2
    header = [
        "meeting",
        "room",
        "device",
        "driver",
        "start",
        "end",
        "online_min",
        "in_use_min",
        "alerts",
        "anomalies",
    ]
    table = [
        [
            r.meeting,
            r.room,
            r.device,
            r.driver,
            iso(r.start)[:16] + "Z",
            iso(r.end)[:16] + "Z",
            f"{r.online_s / 60:.1f}",
            f"{r.in_use_s / 60:.1f}",
            str(r.alerts),
            " | ".join(r.anomalies),
        ]
        for r in rows
    ]
    if args.format == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(header)
        w.writerows(table)
    else:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in table:
            print("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    return 0


def _mqtt_client_setup(client: Any, cfg: SiteConfig) -> None:
    """The broker login and TLS of the site config, for the CLI's own MQTT clients."""
    if cfg.mqtt.username:
        client.username_pw_set(cfg.mqtt.username, cfg.mqtt.secret())
    if cfg.mqtt.tls:
        client.tls_set(
            ca_certs=str(cfg.mqtt.ca_file) if cfg.mqtt.ca_file else None,
            certfile=str(cfg.mqtt.cert_file) if cfg.mqtt.cert_file else None,
            keyfile=str(cfg.mqtt.key_file) if cfg.mqtt.key_file else None,
        )


def cmd_top(args: argparse.Namespace) -> int:
    """The live terminal view of a running daemon, from its MQTT topics."""
    from .top import run_top

    cfg = _load(args)
    if cfg is None:
        return 2
    return run_top(cfg, once=args.once, language=args.lang)


def site_command(
    cfg: SiteConfig, command: str, cmd_args: dict[str, Any], timeout: float
) -> dict[str, Any] | None:
    """Send a `_daemon/cmd` over MQTT and wait for its result."""
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    base = f"{cfg.mqtt.topic_prefix}/{cfg.site}/_daemon"
    cmd_id = uuid.uuid4().hex
    done = threading.Event()
    reply: dict[str, Any] = {}

    availability: list[bytes] = []
    known = threading.Event()

    def on_connect(c: mqtt.Client, *_: Any) -> None:
        c.subscribe([(f"{base}/cmd/result", 1), (f"{base}/availability", 1)])

    def on_subscribe(c: mqtt.Client, *_: Any) -> None:
        c.publish(
            f"{base}/cmd", json.dumps({"command": command, "args": cmd_args, "id": cmd_id}), qos=1
        )

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == f"{base}/availability":
            availability.append(bytes(msg.payload))
            known.set()
            if msg.payload == b"offline":
                done.set()  # the daemon is not running: do not wait for an answer
            return
        try:
            data = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(data, dict) and data.get("id") == cmd_id:
            reply.update(data)
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"roomd-cli-{cmd_id[:8]}")
    _mqtt_client_setup(client, cfg)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    try:
        client.connect(cfg.mqtt.host, cfg.mqtt.port)
    except OSError as exc:
        print(
            gettext("cannot reach the MQTT broker %(host)s:%(port)s: %(error)s")
            % {"host": cfg.mqtt.host, "port": cfg.mqtt.port, "error": exc},
            file=sys.stderr,
        )
        return None
    client.loop_start()
    # The daemon's retained availability arrives at once; none means it never ran here.
    if known.wait(min(3.0, timeout)):
        done.wait(timeout)
    client.loop_stop()
    client.disconnect()
    if not reply:
        state = availability[-1].decode(errors="replace") if availability else "unknown"
        print(
            gettext("the daemon for site %(site)s is %(state)s on this broker")
            % {"site": cfg.site, "state": state},
            file=sys.stderr,
        )
    return reply or None


def cmd_analyze(args: argparse.Namespace) -> int:
    """The audio probe's analysis on a WAV recording, one line (or JSON object) per window."""
    from .audio.analysis import Analyzer
    from .drivers.audio_probe import read_wav

    try:
        samples, rate = read_wav(args.file, args.channel)
    except (OSError, ValueError, EOFError) as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 2
    analyzer = Analyzer(rate=rate, calibration_db=args.calibration_db, weighting=args.weighting)
    size = max(1, int(args.window * rate))
    unit = "dB(A)" if args.weighting == "A" else "dB"
    for start in range(0, max(len(samples), 1), size):
        a = analyzer.analyze(samples[start : start + size])
        if args.format == "json":
            print(
                json.dumps(
                    {
                        "t": round(start / rate, 3),
                        **a.as_readings(),
                        "tone_hz": a.tone_hz,
                        "hum_hz": a.hum_hz,
                    }
                )
            )
            continue
        snr = "-" if a.snr_db is None else f"{a.snr_db:.1f} dB"
        line = (
            f"{start / rate:7.2f}s  level {a.level_db:6.1f} {unit}  floor {a.noise_floor_db:6.1f}"
            f"  SNR {snr}  dropouts {a.dropouts}  clipped {a.clip_events}"
        )
        if a.tone_hz:
            line += f"  tone {a.tone_hz:g} Hz"
        if a.hum_hz:
            line += f"  hum {a.hum_hz:g} Hz {a.hum_db:.1f} dB"
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    tr = translations(cli_language())
    _ = tr.gettext
    # argparse's own words ("usage:", "options", its errors) through the same catalog.
    argparse._ = tr.gettext  # type: ignore[attr-defined]
    argparse.ngettext = tr.ngettext  # type: ignore[attr-defined]
    parser = argparse.ArgumentParser(
        prog="roomd",
        description=_(
            "Meeting-room device monitor: polls room hardware, checks it against the "
            "meeting standard, publishes alerts over MQTT and metrics to Prometheus."
        ),
    )
    parser.add_argument("--version", action="version", version=f"roomd {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "run", help=_("run the daemon in the foreground (SIGHUP reloads the config)")
    )
    _config_arg(p)
    p.add_argument(
        "--shard",
        metavar="I/N",
        help=_("poll only shard I of N of the site's rooms (instances on several machines)"),
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help=_("run the site as N worker processes, one shard each (past one core)"),
    )
    p.add_argument("--listen", metavar="HOST:PORT", help=_("serve /metrics here instead"))
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "validate", help=_("check a config; print each problem as FILE:LINE: key: message")
    )
    _config_arg(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("simulate", help=_("serve simulated devices on 127.0.0.1 and ptys"))
    p.add_argument("--rooms", type=int, default=3, help=_("number of rooms (default 3)"))
    p.add_argument("--scenario", default="normal", help=_("normal, drift or demo"))
    p.add_argument(
        "--write-config", type=Path, metavar="FILE", help=_("write a site config polling them")
    )
    p.add_argument("--no-rtu", action="store_true", help=_("Modbus TCP only (no pseudo-terminals)"))
    p.add_argument(
        "--mqtt", default="mqtt://127.0.0.1:1883", help=_("broker URL for the written config")
    )
    p.add_argument(
        "--http", default="127.0.0.1:9880", help=_("metrics listen address for the written config")
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path("./state"),
        help=_("state_dir for the written config"),
    )
    p.add_argument("--poll", default="2s", help=_("poll interval for the written config"))
    p.add_argument(
        "--control",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help=_("line-based control port for injecting faults (default: a free port)"),
    )
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("demo", help=_("simulators + daemon + broker + live view, no set-up"))
    p.add_argument("--rooms", type=int, default=3, help=argparse.SUPPRESS)
    p.add_argument("--duration", type=float, default=None, help=_("stop after this many seconds"))
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "discover", help=_("find PJLink Class 2 projectors and print a config snippet")
    )
    p.add_argument(
        "--address",
        default="255.255.255.255",
        help=_("where to send %%2SRCH: a broadcast address or one host (default: broadcast)"),
    )
    p.add_argument(
        "--port", type=int, default=4352, help=_("UDP port of the search (default 4352)")
    )
    p.add_argument(
        "--tcp-port", type=int, default=4352, help=_("PJLink TCP port to query (default 4352)")
    )
    p.add_argument("--timeout", type=float, default=2.0, help=_("seconds to wait for answers"))
    p.add_argument(
        "--password-file", type=Path, help=_("PJLink password, to query protected projectors")
    )
    p.set_defaults(func=cmd_discover)

    p = sub.add_parser("signins", help=_("sign-in records"))
    signins = p.add_subparsers(dest="signins_command", required=True, metavar="SUBCOMMAND")
    e = signins.add_parser(
        "export", help=_("a meeting's sign-in records as CSV (for the organiser)")
    )
    e.add_argument("--meeting", required=True)
    e.add_argument("-o", "--output", type=Path, help=_("write to a file instead of stdout"))
    _config_arg(e)
    e.set_defaults(func=cmd_signins_export)

    p = sub.add_parser("simctl", help=_("send a command to a running simulator's control port"))
    p.add_argument("address", metavar="HOST:PORT")
    p.add_argument("words", nargs="+", metavar="WORD", help=_("e.g. fault r301 mixer mute_main"))
    p.set_defaults(func=cmd_simctl)

    p = sub.add_parser("check", help=_("run a pre-meeting check of one room now (exit 0 ready)"))
    p.add_argument("room")
    p.add_argument(
        "--level",
        type=int,
        choices=[0, 1, 2, 3],
        default=None,
        help=_(
            "0 inspection, 1 (T-2 h), 2 (T-1 h), 3 (T-30 min); default: the level the "
            "room's next meeting has reached, else 1"
        ),
    )
    p.add_argument("--format", choices=["text", "json", "html"], default="text")
    p.add_argument("-o", "--output", type=Path, help=_("write the report to a file"))
    p.add_argument("--timeout", type=float, default=300.0, help=_("seconds to wait for the result"))
    _config_arg(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("report", help=_("reports from the local store"))
    reports = p.add_subparsers(dest="report_command", required=True, metavar="REPORT")
    u = reports.add_parser("usage", help=_("device usage per meeting (STANDARD §4)"))
    u.add_argument("--since", help=_("a date, e.g. 2026-11-01"))
    u.add_argument("--format", choices=["csv", "md"], default="md")
    _config_arg(u)
    u.set_defaults(func=cmd_report_usage)
    i = reports.add_parser("incidents", help=_("alerts: time to acknowledge and to clear"))
    i.add_argument("--since", help=_("a date, e.g. 2026-11-01"))
    i.add_argument("--format", choices=["text", "csv"], default="text")
    _config_arg(i)
    i.set_defaults(func=cmd_report_incidents)

    p = sub.add_parser("console", help=_("the help-desk web console"))
    consoles = p.add_subparsers(dest="console_command", required=True, metavar="COMMAND")
    h = consoles.add_parser(
        "hash-password", help=_("print an argon2 hash of a password read from stdin")
    )
    h.set_defaults(func=cmd_console_hash_password)

    p = sub.add_parser("analyze", help=_("measure a WAV recording: level, SNR, dropouts, hum"))
    p.add_argument("file", type=Path)
    p.add_argument("--calibration-db", type=float, default=0.0, help=_("dB SPL = dBFS + this"))
    p.add_argument("--weighting", choices=["A", "Z"], default="A")
    p.add_argument("--window", type=float, default=1.0, help=_("seconds per line (default 1)"))
    p.add_argument("--channel", type=int, default=1)
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("top", help=_("live view of a running daemon: rooms, alerts, devices"))
    p.add_argument("--once", action="store_true", help=_("print one snapshot and exit"))
    p.add_argument("--lang", choices=["en", "zh-CN"], help=_("language (default: the site's)"))
    _config_arg(p)
    p.set_defaults(func=cmd_top)

    p = sub.add_parser("ack", help=_("acknowledge an active alert through the running daemon"))
    p.add_argument("alert_id")
    p.add_argument("--timeout", type=float, default=5.0)
    _config_arg(p)
    p.set_defaults(func=cmd_ack)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
