"""Simulated X32 and X-Air mixers (OSC over UDP) and the room they play into.

`RoomAudio` is the simulated room: noise, hum, people talking, clipping, dropouts. The mixer's
meters follow it, and `RtpAudioSource` streams what a measurement microphone in that room would
hear as RTP L16/L24, including the mixer's test tone when its oscillator (or test channel) is on
and the main mix is open: the sound check sees cause and effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..audio import synth
from ..audio.analysis import Samples
from ..audio.rtp import Encoding, build_rtp, encode_pcm
from ..drivers import x32_protocol as osc

log = logging.getLogger("roomd.sim.mixer")

SUBSCRIPTION_TTL = 10.0  # seconds, as on the desks
CALIBRATION_DB = 120.0  # the simulated microphone: 0 dBFS = 120 dB SPL
ROOM_GAIN_DB = 102.0  # a 0 dBFS tone through the main mix at 0 dB reaches 102 dB SPL


@dataclass
class RoomAudio:
    """What a measurement microphone in the room hears, in dB SPL."""

    noise_db: float = 38.0
    hum_db: float | None = None
    hum_hz: float = 50.0
    talking: bool = False
    clipping: bool = False  # the test tone and speech overdrive the converter
    dropouts_per_s: float = 0.0
    mixer: MixerSim | None = None

    def tone_spl(self) -> float | None:
        """The test tone's level at the microphone, or None when none reaches the room."""
        m = self.mixer
        if m is None or m.silent:
            return None
        main_open = m.params.get(m.model.main_on) == 1
        if not main_open:
            return None
        main_db = osc.fader_to_db(float(m.params.get(m.model.main_fader, 0.0)))
        if m.tone_channel is not None:
            if m.params.get(m.model.ch_on(m.tone_channel)) != 1:
                return None
            source = osc.fader_to_db(float(m.params.get(m.model.ch_fader(m.tone_channel), 0.0)))
            return ROOM_GAIN_DB - 12.0 + source + main_db
        if m.model.tone_path is None or m.params.get(m.model.tone_path) != 1:
            return None
        level = osc.fader_to_db(float(m.params.get(osc.X32_TONE_LEVEL, 0.0)))
        return ROOM_GAIN_DB + level + main_db

    def tone_hz(self) -> float:
        m = self.mixer
        if m is None or m.tone_channel is not None:
            return 1000.0
        return round(osc.tone_value_to_freq(float(m.params.get(osc.X32_TONE_FREQ, 0.5))), 1)


@dataclass
class _Subscriber:
    addr: tuple[str, int]
    expires: float
    bank: str = ""
    interval: float = 0.05
    next_at: float = 0.0


@dataclass
class MixerSim:
    """One desk on 127.0.0.1 (or any host). Faults: `silent`, `drop_subscriptions()`,
    `mute_main()`; `garbage` answers every query with bytes that are not OSC."""

    kind: str = "x32"
    host: str = "127.0.0.1"
    port: int = 0
    name: str = "roomd-sim"
    room: RoomAudio = field(default_factory=RoomAudio)
    tone_channel: int | None = None  # X-Air: the channel carrying a test source
    silent: bool = False
    garbage: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    remote: dict[tuple[str, int], _Subscriber] = field(default_factory=dict)
    meters: dict[tuple[tuple[str, int], str], _Subscriber] = field(default_factory=dict)
    # (time, client, what): every subscription request, and every meter subscription that
    # lapsed for want of one (tests catch a renewal that came too late).
    renewals: list[tuple[float, tuple[str, int], str]] = field(default_factory=list)
    lapses: list[tuple[float, tuple[str, int], str]] = field(default_factory=list)
    scene: int = 0
    log: list[str] = field(default_factory=list)  # addresses received (tests read it)
    _transport: asyncio.DatagramTransport | None = None
    _task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.model = osc.MODELS[self.kind]
        self.room.mixer = self
        self.params.update(self._scene_params(0))

    def _scene_params(self, number: int) -> dict[str, Any]:
        """Scene 0: everything on at 0 dB; 1: speech (main −10 dB); 2: all muted."""
        m = self.model
        on = 0 if number == 2 else 1
        params: dict[str, Any] = {
            m.main_on: on,
            m.main_fader: osc.db_to_fader(-10.0 if number == 1 else 0.0),
        }
        for ch in range(1, m.channels + 1):
            params[m.ch_on(ch)] = on if ch != self.tone_channel else 0
            params[m.ch_fader(ch)] = osc.db_to_fader(0.0)
        if m.tone_path:
            params[m.tone_path] = 0
            params[osc.X32_TONE_LEVEL] = osc.db_to_fader(-12.0)
            params[osc.X32_TONE_FREQ] = osc.tone_freq_to_value(1000.0)
            params[osc.X32_TONE_TYPE] = 0
        return params

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _SimEndpoint(self), local_addr=(self.host, self.port)
        )
        self.port = self._transport.get_extra_info("sockname")[1]
        self._task = loop.create_task(self._meter_loop(), name=f"mixer-sim:{self.port}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._transport is not None:
            self._transport.close()

    # ---- faults ------------------------------------------------------------------------------

    def drop_subscriptions(self) -> None:
        """The desk forgets its clients (a reboot, another client took the slot)."""
        self.remote.clear()
        self.meters.clear()

    def send_junk(self) -> None:
        """Malformed datagrams to every client: the driver must count and drop them."""
        for addr in {*self.remote, *(k[0] for k in self.meters)}:
            self._send(b"\x00\x01not osc", addr)
            self._send(osc.build(self.model.channel_bank, "not a blob"), addr)

    def mute_main(self, muted: bool = True) -> None:
        self._set(self.model.main_on, 0 if muted else 1, None)

    # ---- protocol ----------------------------------------------------------------------------

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._transport is not None:
            self._transport.sendto(data, addr)

    def received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.silent:
            return
        try:
            messages = osc.parse(data)
        except osc.OscDecodeError:
            return  # the desks ignore what they cannot parse
        for address, args in messages:
            self.log.append(address)
            if self.garbage:
                self._send(b"\x00garbage" + address.encode(), addr)
                continue
            self._handle(address, args, addr)

    def _handle(self, address: str, args: list[Any], addr: tuple[str, int]) -> None:
        now = time.monotonic()
        m = self.model
        if address == "/xinfo":
            self._send(osc.build("/xinfo", self.host, self.name, m.kind.upper(), "4.06"), addr)
        elif address == "/info":
            self._send(osc.build("/info", "V2.07", self.name, m.kind.upper(), "4.06"), addr)
        elif address == "/status":
            self._send(osc.build("/status", "active", self.host, self.name), addr)
        elif address in ("/xremote", "/xremotenfb"):
            self.renewals.append((now, addr, address))
            self.remote[addr] = _Subscriber(addr, now + SUBSCRIPTION_TTL)
        elif address == "/unsubscribe":
            self.remote.pop(addr, None)
            for key in [k for k in self.meters if k[0] == addr]:
                del self.meters[key]
        elif address == "/meters":
            if args and isinstance(args[0], str):
                tf = args[-1] if len(args) >= 2 and isinstance(args[-1], int) else 1
                tf = tf if 1 <= tf <= 99 else 1
                self.renewals.append((now, addr, f"/meters {args[0]}"))
                self.meters[(addr, args[0])] = _Subscriber(
                    addr, now + SUBSCRIPTION_TTL, args[0], 0.05 * tf, now
                )
        elif address == m.scene_path:
            if args and isinstance(args[0], int):
                self.scene = args[0]
                for path, value in self._scene_params(args[0]).items():
                    if self.params.get(path) != value:
                        self._set(path, value, None)
        elif address in self.params:
            if not args:
                self._send(osc.build(address, self.params[address]), addr)
            else:
                value = args[0]
                if isinstance(self.params[address], float) and isinstance(value, float | int):
                    self._set(address, min(1.0, max(0.0, float(value))), addr)
                elif isinstance(self.params[address], int) and isinstance(value, int):
                    self._set(address, value, addr)
        # anything else: the real desks ignore unknown addresses silently

    def _set(self, path: str, value: Any, source: tuple[str, int] | None) -> None:
        self.params[path] = value
        now = time.monotonic()
        message = osc.build(path, value)
        for sub in list(self.remote.values()):
            if sub.expires <= now:  # dropped at exactly 10 s, as the desks do
                del self.remote[sub.addr]
            elif sub.addr != source:  # the desk does not echo a change to its sender
                self._send(message, sub.addr)

    # ---- meters ------------------------------------------------------------------------------

    async def _meter_loop(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            if self.silent:
                continue
            now = time.monotonic()
            for key, sub in list(self.meters.items()):
                if sub.expires <= now:
                    del self.meters[key]
                    self.lapses.append((now, key[0], f"/meters {key[1]}"))
                    continue
                if now >= sub.next_at:
                    sub.next_at = now + sub.interval
                    levels = self.meter_bank(sub.bank)
                    if levels is not None:
                        blob = osc.encode_meters(levels, self.model.float_meters)
                        self._send(osc.build(sub.bank, blob), sub.addr)

    def channel_level(self, ch: int) -> float:
        """A channel's pre-fader level in dBFS."""
        room = self.room
        if ch == self.tone_channel:
            return -12.0
        if room.clipping and ch == 1:
            return 2.0
        if room.talking and ch <= 4:
            return -22.0 + random.uniform(-6, 4)
        return max(osc.SILENCE_DB, room.noise_db - CALIBRATION_DB - 30 + random.uniform(-1, 1))

    def main_level(self) -> float:
        m = self.model
        if self.params.get(m.main_on) != 1:
            return osc.SILENCE_DB
        main_db = osc.fader_to_db(float(self.params.get(m.main_fader, 0.0)))
        sources = [osc.SILENCE_DB]
        for ch in range(1, m.channels + 1):
            if self.params.get(m.ch_on(ch)) == 1:
                fader = osc.fader_to_db(float(self.params.get(m.ch_fader(ch), 0.0)))
                sources.append(self.channel_level(ch) + fader)
        if m.tone_path and self.params.get(m.tone_path) == 1:
            sources.append(osc.fader_to_db(float(self.params.get(osc.X32_TONE_LEVEL, 0.0))))
        power = sum(10 ** (s / 10) for s in sources if s > osc.SILENCE_DB)
        level = 10 * math.log10(power) if power > 0 else osc.SILENCE_DB
        return max(osc.SILENCE_DB, level + main_db) if level > osc.SILENCE_DB else level

    def meter_bank(self, bank: str) -> list[float] | None:
        m = self.model
        if m.kind == "x32":
            if bank == "/meters/0":
                return [self.channel_level(ch) for ch in range(1, 33)] + [osc.SILENCE_DB] * 38
            if bank == "/meters/2":
                main = self.main_level()
                return [osc.SILENCE_DB] * 22 + [main, main] + [osc.SILENCE_DB] * 25
            return None
        if bank == "/meters/1":
            main = self.main_level()
            chans = [self.channel_level(ch) for ch in range(1, 17)]
            return chans + [osc.SILENCE_DB] * 20 + [main, main, osc.SILENCE_DB, osc.SILENCE_DB]
        return None


class _SimEndpoint(asyncio.DatagramProtocol):
    def __init__(self, sim: MixerSim) -> None:
        self.sim = sim

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.sim.received(data, (str(addr[0]), int(addr[1])))


@dataclass
class RtpAudioSource:
    """Streams the room's sound to a probe as RTP L16/L24 (4 ms packets, paced in real time)."""

    room: RoomAudio
    target: tuple[str, int]
    encoding: Encoding = "L24"
    rate: int = 48000
    packet_ms: int = 4
    payload_type: int = 96
    paused: bool = False  # a dead stream: the probe goes offline
    sent: int = 0
    _task: asyncio.Task[None] | None = None
    _transport: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=self.target
        )
        self._task = loop.create_task(self._run(), name=f"rtp-source:{self.target[1]}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._transport is not None:
            self._transport.close()

    def block(self, n: int, start: int, rng: np.random.Generator) -> Samples:
        """`n` samples of what the microphone hears, in dBFS of the simulated microphone."""
        room = self.room
        x = synth.noise(room.noise_db - CALIBRATION_DB, n, rng)
        if room.hum_db is not None:
            x += synth.hum(room.hum_hz, room.hum_db - CALIBRATION_DB, n, self.rate, start)
        tone = room.tone_spl()
        if tone is not None:
            x += synth.tone(room.tone_hz(), tone - CALIBRATION_DB, n, self.rate, start)
        if room.talking:
            # Syllables at 2 per second with gaps between them, as speech has.
            phase = 2 * math.pi * 2.0 * (np.arange(n) + start) / self.rate
            envelope = np.square(np.maximum(0.0, np.sin(phase))) * 2.0
            x += envelope * synth.noise(65.0 - CALIBRATION_DB, n, rng)
        if room.clipping:
            x *= 200.0  # overdriven: the converter clips
        out: Samples = np.clip(x, -1.0, 1.0 - 2.0**-23)
        return out

    async def _run(self) -> None:
        rng = np.random.default_rng()
        loop = asyncio.get_running_loop()
        per_packet = self.rate * self.packet_ms // 1000
        block_packets = 5
        seq = random.randrange(0x10000)
        ssrc = random.getrandbits(32)
        start = 0
        began = loop.time()
        blocks = 0
        while True:
            n = per_packet * block_packets
            x = self.block(n, start, rng)
            lose: set[int] = set()
            dropouts = self.room.dropouts_per_s
            if dropouts > 0 and random.random() < dropouts * n / self.rate:
                if blocks % 2:  # half the dropouts are lost packets, half digital silence
                    lose = {1, 2}
                else:
                    x[per_packet : per_packet * 4] = 0.0
            for i in range(block_packets):
                chunk = x[i * per_packet : (i + 1) * per_packet]
                if i not in lose and not self.paused and self._transport is not None:
                    payload = encode_pcm(chunk, self.encoding)
                    self._transport.sendto(
                        build_rtp(payload, seq, start + i * per_packet, ssrc, self.payload_type)
                    )
                    self.sent += 1
                seq = (seq + 1) & 0xFFFF
            start += n
            blocks += 1
            await asyncio.sleep(max(0.0, began + start / self.rate - loop.time()))
