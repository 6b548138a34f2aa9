"""Behringer X32 / Midas M32 (`x32`) and X-Air / MR (`xair`) mixers over OSC/UDP.

One UDP socket per mixer, for sending and receiving: the desk answers the request's source
address and port. The driver keeps an `/xremote` subscription (changes pushed for 10 s, renewed
every ~9 s) and a `/meters` subscription (same lifetime) alive, so a poll mostly reads state
that arrived by itself; a full re-read every `refresh` catches pushes lost on the way (UDP).
A desk that sends nothing within the timeout of a `/status` is offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..daemon.profiles import Threshold
from ..daemon.units import Duration
from . import register
from . import x32_protocol as osc
from .base import (
    ArgSpec,
    CommandError,
    CommandSpec,
    DeviceConfig,
    DeviceError,
    DeviceProtocolError,
    DeviceTimeout,
    DeviceUnreachable,
    Driver,
    DriverContext,
    Readings,
    split_host,
)
from .udp import DatagramEndpoint

log = logging.getLogger("roomd.x32")

# Both subscriptions lapse after 10 s on the desk. Renewed on a timer of their own, well inside
# the window and whatever the poll interval: renewing from polls gave gaps of 9.0–10.08 s.
SUBSCRIPTION_RENEW = 5.0
# Per-channel thresholds are written once in a profile under these names and copied to each
# configured channel (`ch_mute` → `ch03_mute`).
CHANNEL_TEMPLATES = ("ch_mute", "ch_fader_db", "ch_level_dbfs", "ch_silent_seconds")


class MixerConfig(DeviceConfig):
    driver: Literal["x32", "xair"]
    host: str
    # The microphone channels to watch (1-based), e.g. [1, 2, 3]: mute, fader, level, silence.
    channels: tuple[int, ...] = ()
    poll: Duration = 1.0
    timeout: Duration = 1.0
    refresh: Duration = 30.0  # full re-read of the watched parameters
    # A channel whose meter stays below this is silent (for `chNN_silent_seconds`).
    silent_below_dbfs: float = Field(-60.0, le=0)
    # Sound check signal: the X32's oscillator, or a channel that carries a test source
    # (a player on an aux or USB input) which is unmuted for the test.
    # Default: the oscillator where the desk has one on OSC (X32), else `test_channel`.
    test_source: Literal["oscillator", "channel"] | None = None
    test_channel: int | None = None
    # Backup microphone channels: {primary: backup}. When the primary fails during a meeting
    # (muted by a fault, silent, clipping), the backup channel is unmuted at once.
    backup_channels: dict[int, int] = Field(default_factory=dict)
    tone_level_db: float = Field(-12.0, ge=-90, le=10)
    tone_hz: float = Field(1000.0, ge=20, le=20000)

    @property
    def mixer(self) -> osc.MixerModel:
        return osc.MODELS[self.driver]

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        split_host(value, 10023)
        return value

    @model_validator(mode="after")
    def _checks(self) -> MixerConfig:
        top = self.mixer.channels
        extra = [*self.backup_channels, *self.backup_channels.values()]
        for ch in [*self.channels, *([self.test_channel] if self.test_channel else []), *extra]:
            if not 1 <= ch <= top:
                raise ValueError(f"channel {ch} does not exist on an {self.driver} (1..{top})")
        if len(set(self.channels)) != len(self.channels):
            raise ValueError("channels: listed twice")
        if self.test_source == "channel" and self.test_channel is None:
            raise ValueError("test_source channel needs test_channel")
        if self.test_source == "oscillator" and self.mixer.tone_path is None:
            raise ValueError(f"an {self.driver} has no oscillator on OSC; use test_channel")
        return self

    @property
    def test_signal(self) -> Literal["oscillator", "channel"] | None:
        """What the sound check switches on; None: this mixer cannot make a test signal."""
        if self.test_source is not None:
            return self.test_source
        if self.mixer.tone_path is not None:
            return "oscillator"
        return "channel" if self.test_channel is not None else None


@register
class MixerDriver(Driver):
    kind = "x32"
    config_model = MixerConfig
    self_timed = True
    config: MixerConfig

    def __init__(self, config: DeviceConfig, context: DriverContext) -> None:
        super().__init__(config, context)
        assert isinstance(config, MixerConfig)
        self.model = config.mixer
        self.host, self.port = split_host(config.host, self.model.port)
        self._endpoint: DatagramEndpoint | None = None
        self._error: Exception | None = None
        self._waiters: dict[str, list[asyncio.Future[list[Any]]]] = {}
        self.params: dict[str, Any] = {}
        self.meters: dict[str, list[float]] = {}
        self._loud_at: dict[int, float] = {}  # channel → monotonic time last above silence
        self._heard_at = 0.0
        self._meters_at = 0.0
        self._xremote_at = -1e9
        self._renewal: asyncio.TimerHandle | None = None
        self._meters_sub_at = -1e9
        self._refreshed_at = -1e9
        self.bad_packets = 0
        self.resubscribes = 0

    # ---- thresholds --------------------------------------------------------------------------

    def expand_thresholds(self, thresholds: dict[str, Threshold]) -> dict[str, Threshold]:
        out = {k: v for k, v in thresholds.items() if k not in CHANNEL_TEMPLATES}
        for template in CHANNEL_TEMPLATES:
            t = thresholds.get(template)
            if t is None:
                continue
            suffix = template.removeprefix("ch_")
            for ch in self.config.channels:
                label = f"Mic channel {ch} " + (t.label or suffix).lower()
                out.setdefault(f"ch{ch:02d}_{suffix}", t.model_copy(update={"label": label}))
        return out

    @property
    def metrics(self) -> list[str]:
        names = ["main_mute", "main_fader_db", "main_level_dbfs", "bad_packets"]
        if self.model.tone_path:
            names.append("test_tone")
        for ch in self.config.channels:
            names += [
                f"ch{ch:02d}_{s}" for s in ("mute", "fader_db", "level_dbfs", "silent_seconds")
            ]
        return names

    # ---- wire --------------------------------------------------------------------------------

    async def _open(self) -> DatagramEndpoint:
        if self._endpoint is not None and self._endpoint.transport is not None:
            return self._endpoint
        loop = asyncio.get_running_loop()
        try:
            _t, endpoint = await loop.create_datagram_endpoint(
                lambda: DatagramEndpoint(self._received, self._note_error),
                remote_addr=(self.host, self.port),
            )
        except OSError as exc:
            raise DeviceUnreachable(f"{self.host}:{self.port}: {exc.strerror or exc}") from exc
        self._endpoint = endpoint
        self._schedule_renewal()
        return endpoint

    def _schedule_renewal(self) -> None:
        if self._renewal is not None:
            self._renewal.cancel()
        # A check every second renews whatever is 5 s old: gaps stay within 5–6 s.
        self._renewal = asyncio.get_running_loop().call_later(1.0, self._renew)

    def _renew(self) -> None:
        self._renewal = None
        if self._endpoint is None or self._endpoint.transport is None:
            return
        if self.info:  # identified: subscribed before, keep it so
            with contextlib.suppress(DeviceError):
                self._subscribe(time.monotonic())
        self._schedule_renewal()

    def _send(self, data: bytes) -> None:
        if self._endpoint is None or self._endpoint.transport is None:
            raise DeviceUnreachable("socket closed")
        self._endpoint.transport.sendto(data)

    def _note_error(self, exc: Exception) -> None:
        self._error = exc

    def _received(self, data: bytes) -> None:
        try:
            messages = osc.parse(data)
        except osc.OscDecodeError:
            self.bad_packets += 1
            return
        now = time.monotonic()
        self._heard_at = now
        for address, args in messages:
            try:
                self._dispatch(address, args, now)
            except (osc.OscDecodeError, TypeError, ValueError, IndexError):
                self.bad_packets += 1
                continue
            waiters = self._waiters.pop(address, None)
            for fut in waiters or ():
                if not fut.done():
                    fut.set_result(args)

    def _dispatch(self, address: str, args: list[Any], now: float) -> None:
        model = self.model
        if address in (model.channel_bank, model.main_bank) and address.startswith("/meters/"):
            if len(args) != 1 or not isinstance(args[0], bytes):
                raise osc.OscDecodeError(f"{address}: expected one blob")
            levels = osc.decode_meters(args[0], model.float_meters)
            self.meters[address] = levels
            self._meters_at = now
            threshold = self.config.silent_below_dbfs
            if address == model.channel_bank:
                for ch in self.config.channels:
                    if ch - 1 < len(levels) and levels[ch - 1] >= threshold:
                        self._loud_at[ch] = now
            return
        if address.endswith("/mix/on") or address == model.tone_path:
            if len(args) != 1 or not isinstance(args[0], int):
                raise osc.OscDecodeError(f"{address}: expected one int")
            self.params[address] = args[0]
        elif address.endswith("/mix/fader"):
            if len(args) != 1 or not isinstance(args[0], float | int):
                raise osc.OscDecodeError(f"{address}: expected one float")
            self.params[address] = float(args[0])
        elif address in ("/xinfo", "/info", "/status"):
            if not all(isinstance(a, str) for a in args):
                raise osc.OscDecodeError(f"{address}: expected strings")
            if address == "/xinfo" and len(args) >= 4:
                self.info = {
                    "ip": args[0],
                    "name": args[1],
                    "model": args[2],
                    "firmware": args[3],
                }

    async def _request(self, address: str, *args: Any, reply: str | None = None) -> list[Any]:
        """Send and wait for the message that answers it (same address unless `reply`)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Any]] = loop.create_future()
        key = reply or address
        self._waiters.setdefault(key, []).append(fut)
        self._send(osc.build(address, *args))
        try:
            async with asyncio.timeout(self.config.timeout):
                return await fut
        except TimeoutError:
            if self._error is not None:
                err, self._error = self._error, None
                raise DeviceUnreachable(f"{self.host}:{self.port}: {err}") from None
            raise DeviceTimeout(f"no reply to {address} within {self.config.timeout:g}s") from None
        finally:
            waiting = self._waiters.get(key)
            if waiting and fut in waiting:
                waiting.remove(fut)

    def _watched(self) -> list[str]:
        m = self.model
        paths = [m.main_on, m.main_fader]
        for ch in self.config.channels:
            paths += [m.ch_on(ch), m.ch_fader(ch)]
        if m.tone_path and self.config.test_signal == "oscillator":
            paths.append(m.tone_path)
        if self.config.test_channel:
            paths.append(m.ch_on(self.config.test_channel))
        return paths

    async def _refresh(self) -> None:
        results = await asyncio.gather(
            *(self._request(p) for p in self._watched()), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        self._refreshed_at = time.monotonic()

    def _meter_factor(self) -> int:
        """Meters every 50 ms × factor: two updates per poll is plenty (and spares Wi-Fi)."""
        return max(1, min(99, int(self.config.poll / 0.1)))

    def _subscribe(self, now: float) -> None:
        stale = self._meters_at and now - self._meters_at > max(2.0, self.config.poll * 3)
        forgotten = stale and now - self._meters_sub_at > 1.0
        if forgotten:
            # The desk forgot us (a reboot, another client took the slot): ask again for both.
            self.resubscribes += 1
            self._xremote_at = self._meters_sub_at = -1e9
        if now - self._xremote_at >= SUBSCRIPTION_RENEW:
            self._send(osc.build("/xremote"))
            self._xremote_at = now
        if now - self._meters_sub_at >= SUBSCRIPTION_RENEW:
            tf = self._meter_factor()
            for bank in dict.fromkeys((self.model.channel_bank, self.model.main_bank)):
                self._send(osc.build("/meters", bank, tf))
            self._meters_sub_at = now

    # ---- poll --------------------------------------------------------------------------------

    async def poll(self) -> Readings:
        await self._open()
        now = time.monotonic()
        if not self.info:
            await self._request("/xinfo")
            self._xremote_at = self._meters_sub_at = -1e9
        # A lapsed /xremote (no poll for 10 s) may have missed changes: read everything again.
        if now - self._refreshed_at >= self.config.refresh or now - self._xremote_at > 10.0:
            await self._refresh()
        elif now - self._heard_at > self.config.poll + self.config.timeout:
            await self._request("/status")  # nothing pushed lately: is it still there?
        self._subscribe(time.monotonic())
        return self._readings(time.monotonic())

    def _readings(self, now: float) -> Readings:
        m, p = self.model, self.params
        fresh_meters = self._meters_at and now - self._meters_at < max(3.0, self.config.poll * 3)
        out: Readings = {
            "main_mute": _mute(p.get(m.main_on)),
            "main_fader_db": _fader(p.get(m.main_fader)),
        }
        main = self.meters.get(m.main_bank) if fresh_meters else None
        out["main_level_dbfs"] = (
            round(max(main[m.main_index], main[m.main_index + 1]), 1)
            if main and len(main) > m.main_index + 1
            else None
        )
        if m.tone_path and self.config.test_signal == "oscillator":
            tone = p.get(m.tone_path)
            out["test_tone"] = None if tone is None else ("on" if tone else "off")
        levels = self.meters.get(m.channel_bank) if fresh_meters else None
        for ch in self.config.channels:
            key = f"ch{ch:02d}"
            out[f"{key}_mute"] = _mute(p.get(m.ch_on(ch)))
            out[f"{key}_fader_db"] = _fader(p.get(m.ch_fader(ch)))
            out[f"{key}_level_dbfs"] = (
                round(levels[ch - 1], 1) if levels and len(levels) >= ch else None
            )
            loud = self._loud_at.setdefault(ch, now)
            out[f"{key}_silent_seconds"] = round(now - loud, 1) if fresh_meters else None
        out["bad_packets"] = self.bad_packets
        return out

    async def close(self) -> None:
        if self._renewal is not None:
            self._renewal.cancel()
            self._renewal = None
        if self._endpoint is not None and self._endpoint.transport is not None:
            with contextlib.suppress(Exception):
                self._send(osc.build("/unsubscribe"))
            self._endpoint.transport.close()
        self._endpoint = None
        self.info = {}
        self._meters_at = 0.0
        for waiters in self._waiters.values():
            for fut in waiters:
                fut.cancel()
        self._waiters.clear()

    # ---- meeting hooks -----------------------------------------------------------------------

    async def shutdown(self) -> str | None:
        if self.params.get(self.model.main_on) == 0:
            return None
        await self._set(self.model.main_on, 0)
        return "main mix muted"

    async def take_over(self, primary: Readings) -> str | None:
        await self._set(self.model.main_on, 1)
        return "main mix unmuted"

    async def backup_channel(self, primary: int) -> str | None:
        """Unmute the backup of a failed microphone channel, if it has one."""
        backup = self.config.backup_channels.get(primary)
        if backup is None:
            return None
        await self._set(self.model.ch_on(backup), 1)
        return f"channel {backup} unmuted in place of channel {primary}"

    # ---- commands ----------------------------------------------------------------------------

    def _channel(self, args: dict[str, Any]) -> tuple[str, str]:
        """args["channel"] → (on path, fader path)."""
        ch = args.get("channel")
        if ch == "main":
            return self.model.main_on, self.model.main_fader
        if isinstance(ch, str) and ch.isdigit():
            ch = int(ch)
        if not isinstance(ch, int) or isinstance(ch, bool) or not 1 <= ch <= self.model.channels:
            raise CommandError(f'channel: expected "main" or 1..{self.model.channels}, got {ch!r}')
        return self.model.ch_on(ch), self.model.ch_fader(ch)

    async def _set(self, path: str, value: Any) -> Any:
        """Write a parameter and read it back: the desk does not echo our own change."""
        await self._open()
        self._send(osc.build(path, value))
        reply = await self._request(path)
        if not reply:
            raise DeviceProtocolError(f"{path}: empty reply")
        if self.push is not None:
            self.push(self._readings(time.monotonic()))
        return reply[0]

    async def set_tone(self, on: bool) -> None:
        """Switch the sound-check signal on or off (oscillator or test channel)."""
        cfg = self.config
        signal = cfg.test_signal
        if signal == "channel" and cfg.test_channel:
            await self._set(self.model.ch_on(cfg.test_channel), 1 if on else 0)
            return
        if signal is None or self.model.tone_path is None:
            raise CommandError(f"an {self.kind} has no oscillator on OSC; set test_channel")
        if on:
            self._send(osc.build(osc.X32_TONE_TYPE, 0))
            self._send(osc.build(osc.X32_TONE_FREQ, osc.tone_freq_to_value(cfg.tone_hz)))
            self._send(osc.build(osc.X32_TONE_LEVEL, osc.db_to_fader(cfg.tone_level_db)))
        await self._set(self.model.tone_path, 1 if on else 0)

    def command_specs(self) -> list[CommandSpec]:
        channels = ("main", *(str(n) for n in range(1, self.model.channels + 1)))
        channel = ArgSpec("channel", channels)
        return [
            CommandSpec("mute", (channel, ArgSpec("state", ("on", "off")))),
            CommandSpec("fader", (channel, ArgSpec("db", min=-90, max=10, step=0.5))),
        ]

    async def command(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        if name == "mute":
            on_path, _ = self._channel(args)
            state = args.get("state")
            if state not in ("on", "off"):
                raise CommandError('state: expected "on" (muted) or "off"')
            value = await self._set(on_path, 0 if state == "on" else 1)
            return {"channel": args["channel"], "mute": _mute(value)}
        if name == "fader":
            _, fader_path = self._channel(args)
            db = args.get("db")
            if not isinstance(db, int | float) or isinstance(db, bool) or not -90 <= db <= 10:
                raise CommandError(f"db: expected a number from -90 to 10, got {db!r}")
            value = await self._set(fader_path, osc.db_to_fader(float(db)))
            return {"channel": args["channel"], "db": _fader(value)}
        if name == "scene":
            number = args.get("number")
            if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number <= 99:
                raise CommandError(f"number: expected a scene number 0..99, got {number!r}")
            await self._open()
            self._send(osc.build(self.model.scene_path, number))
            await self._refresh()  # a scene changes everything: read back what we watch
            if self.push is not None:
                self.push(self._readings(time.monotonic()))
            return {"scene": number}
        if name == "tone":
            state = args.get("state")
            if state not in ("on", "off"):
                raise CommandError('state: expected "on" or "off"')
            await self.set_tone(state == "on")
            return {"tone": state}
        raise CommandError(
            f"unknown command {name!r} for a mixer (known: mute, fader, scene, tone)"
        )


@register
class XAirDriver(MixerDriver):
    kind = "xair"


def _mute(on: Any) -> str | None:
    # On the desks `mix/on` 1 means the channel is on (unmuted).
    return None if on is None else ("off" if on else "on")


def _fader(value: Any) -> float | None:
    return None if value is None else round(osc.fader_to_db(float(value)), 1)
