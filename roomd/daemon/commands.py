"""Commands and bookings from MQTT: bounded, parsed, the sender identified and authorised, then
run; every refusal answered `ok:false` with the reason, and counted."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, Protocol

from ..drivers.audio_probe import AudioProbeDriver
from ..drivers.base import CommandError, DeviceError
from ..drivers.x32 import MixerDriver
from .authz import Authorizer, Principal, Refused
from .checks import audio_devices, room_soundcheck
from .clock import iso
from .config import Room, SiteConfig
from .inbound import BadCommand, LogLimiter, parse_command
from .model import Transition
from .site import Poller, Site

log = logging.getLogger("roomd")
_limited = LogLimiter(log)


class BookingsSink(Protocol):
    def on_bookings_message(self, room_id: str, payload: bytes) -> None: ...


class Control(Protocol):
    """What commands need of the daemon around them: its small interface, not the class."""

    authz: Authorizer

    @property
    def meetings(self) -> BookingsSink: ...

    def reload(self) -> bool: ...

    def health(self) -> dict[str, Any]: ...

    async def check_room(self, room_id: str, level: int | None) -> dict[str, Any]: ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...


class CommandService:
    def __init__(self, site: Site, daemon: Control) -> None:
        self.site = site
        self.daemon = daemon

    @property
    def config(self) -> SiteConfig:
        return self.site.config

    def on_command(
        self, room: str | None, device: str | None, payload: bytes, by: str | None
    ) -> None:
        """A message on a command topic: bounded, parsed, its sender identified and authorised,
        then run as a task. Anything refused gets `ok:false` with the reason, and is counted."""
        base = self.site.mqtt.base
        topic = f"{base}/_daemon/cmd" if room is None else f"{base}/{room}/{device}/cmd"
        result_topic = f"{topic}/result"
        cmd_id: Any = None
        try:
            try:
                command = parse_command(payload)
            except BadCommand as exc:
                cmd_id = exc.cmd_id
                self.site.metrics.input_rejected.labels(self.config.site, "command").inc()
                raise Refused("malformed", f"bad command: {exc}") from None
            cmd_id, name, args, msg = command.id, command.name, command.args, command.message
            who = self.daemon.authz.identify(topic, by, msg)
            if room is None:
                self.daemon.authz.site_command(who, name)
                self.daemon.spawn(self._daemon_command(result_topic, cmd_id, name, args, who))
                return
            if not self.site.owns_room(room):
                return  # another instance's room (sharded sites): not ours to answer
            poller = self.site.pollers.get((room, str(device)))
            if poller is None:
                raise Refused("no_device", f"no device {room}/{device}")
            self.daemon.authz.device_command(who, room, poller.config.id, poller.driver.kind, name)
        except Refused as exc:
            self.site.metrics.commands_refused.labels(self.config.site, exc.reason).inc()
            _limited(logging.WARNING, f"refused:{exc.reason}:{by}", "command refused: %s", exc)
            self.site.mqtt.publish_now(
                result_topic,
                {"id": cmd_id, "ok": False, "error": str(exc), "ts": iso(self.site.clock.time())},
            )
            return
        self.daemon.spawn(self._device_command(poller, result_topic, cmd_id, name, args))

    def on_bookings(self, room: str, payload: bytes, by: str | None) -> None:
        """A bookings list pushed by a booking system: only from the sources allowed to."""
        if not self.site.owns_room(room):
            return
        who = Principal.by_topic(by)
        try:
            self.daemon.authz.bookings(who)
        except Refused as exc:
            self.site.metrics.commands_refused.labels(self.config.site, exc.reason).inc()
            _limited(logging.WARNING, f"bookings:{who.name}", "%s: bookings refused: %s", room, exc)
            return
        self.daemon.meetings.on_bookings_message(room, payload)

    async def _device_command(
        self, p: Poller, topic: str, cmd_id: Any, name: str, args: dict[str, Any]
    ) -> None:
        result = {"id": cmd_id, **await self.run_device_command(p, name, args)}
        self.site.mqtt.publish_now(topic, result)

    async def run_device_command(
        self, p: Poller, name: str, args: dict[str, Any], by: str | None = None
    ) -> dict[str, Any]:
        """Run a command already authorised; the answer (`ok`, `result` or `error`, `ts`) is
        returned and announced as a `command` event (with who gave it, when known)."""
        result: dict[str, Any] = {}
        try:
            if name == "soundcheck" and isinstance(p.driver, MixerDriver | AudioProbeDriver):
                async with asyncio.timeout(60.0):
                    value = await self.soundcheck(p.room)
            else:
                async with asyncio.timeout(max(10.0, p.config.timeout * 5)):
                    value = await p.driver.command(name, args)
            result.update(ok=True, result=value)
        except CommandError as exc:
            result.update(ok=False, error=str(exc))
        except DeviceError as exc:
            result.update(ok=False, error=f"device: {exc}")
        except TimeoutError:
            result.update(ok=False, error="device did not complete the command in time")
        except Exception as exc:
            log.exception("command %s on %s/%s", name, p.room.id, p.config.id)
            result.update(ok=False, error=f"internal error: {type(exc).__name__}")
        result["ts"] = iso(self.site.clock.time())
        event = {"type": "command", "device": p.config.id, "command": name, "args": args}
        if by is not None:
            event["by"] = by
        self.site.emit([], [self.site.mqtt.event(p.room.id, {**event, **result})])
        return result

    def acknowledge(self, alert_id: str, by: str) -> Transition | None:
        """Acknowledge an active alert for `by`; None when there is no such alert."""
        t = self.site.book.acknowledge(alert_id, by=by)
        if t is not None:
            self.site.emit([t])
        return t

    async def _daemon_command(
        self, topic: str, cmd_id: Any, name: str, args: dict[str, Any], who: Principal
    ) -> None:
        result: dict[str, Any] = {"id": cmd_id}
        # A sharded site: every shard hears `_daemon/cmd`; the shard owning the room answers
        # for an alert or a room, every shard for reload and status (with its shard number).
        room_arg = None
        if name == "ack":
            room_arg = str(args.get("room") or str(args.get("alert", "")).split(".", 1)[0])
        if name == "check":
            room_arg = str(args.get("room"))
        if room_arg is not None and not self.site.answers_for(room_arg):
            return
        if self.config.shard is not None:
            result["shard"] = f"{self.config.shard[0]}/{self.config.shard[1]}"
        if name == "ack":
            alert_id = args.get("alert")
            # `by` is who the broker or a signature says sent it; a name in args is only a
            # claim, kept beside it (e.g. the technician at the shared console).
            claimed = str(args.get("by", ""))[:64]
            if who.how == "none":
                by = f"{claimed} (unverified)" if claimed else "anonymous"
            else:
                by = who.name if not claimed or claimed == who.name else f"{who.name} ({claimed})"
            if alert_id is None and args.get("room"):
                # Every active alert of a room (Home Assistant's button, a wall panel).
                room_id = str(args["room"])
                ids = sorted(a.id for a in self.site.book.active.values() if a.room == room_id)
                acked = [t.alert.id for i in ids if (t := self.acknowledge(i, by)) is not None]
                result.update(ok=True, result={"room": room_id, "acknowledged": acked})
            elif (t := self.acknowledge(str(alert_id), by) if alert_id else None) is None:
                result.update(ok=False, error=f"no active alert {alert_id!r}")
            else:
                result.update(ok=True, result={"alert": t.alert.id, "state": t.alert.state})
        elif name == "reload":
            ok = self.daemon.reload()
            result.update(
                ok=ok, **({} if ok else {"error": "new config invalid; see the daemon log"})
            )
        elif name == "status":
            result.update(ok=True, result=self.daemon.health())
        elif name == "check":
            level = args.get("level")
            if level is not None and level not in (0, 1, 2, 3):
                result.update(ok=False, error="args.level: 0 (inspection), 1, 2 or 3")
            else:
                try:
                    report = await self.daemon.check_room(str(args.get("room")), level)
                    result.update(ok=True, result=report)
                except CommandError as exc:
                    result.update(ok=False, error=str(exc))
        else:
            result.update(
                ok=False, error=f"unknown command {name!r} (known: ack, reload, status, check)"
            )
        result["ts"] = iso(self.site.clock.time())
        self.site.mqtt.publish_now(topic, result)

    async def soundcheck(self, room: Room) -> dict[str, Any]:
        """The room's sound check (mixer test signal → audio probe); an event either way."""
        mixer, probe = audio_devices(self.site.room_pollers.get(room.id, {}).values())
        if probe is None:
            raise CommandError(f"room {room.id} has no audio-probe device to measure with")
        outcome = await room_soundcheck(room, mixer, probe)
        report = outcome.as_dict()
        report.update(mixer=mixer.config.id if mixer else None, probe=probe.config.id, room=room.id)
        event = {"type": "soundcheck", **report, "ts": iso(self.site.clock.time())}
        self.site.emit([], [self.site.mqtt.event(room.id, event)])
        if outcome.passed:
            log.info("%s: sound check passed", room.id)
        else:
            log.warning("%s: sound check failed: %s", room.id, "; ".join(outcome.reasons))
        return report
