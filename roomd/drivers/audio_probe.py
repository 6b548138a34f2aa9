"""`audio-probe`: a measurement microphone's PCM, analysed each poll (roomd.audio.analysis).

Sources: an RTP L16/L24 stream (AES67: 48 kHz, big-endian; unicast or a multicast group), a
WAV file played in real time (looped), or a sound card through `sounddevice` (the optional
`roomd[soundcard]` extra). Every source feeds one ring buffer; a poll analyses what arrived
since the last poll, and the sound check captures fresh audio of its own from the same buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
import time
import wave
from collections import deque
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from ..audio.analysis import Analysis, Analyzer, Samples
from ..audio.rtp import Encoding, RtpError, SequenceTracker, decode_pcm, parse_rtp
from ..daemon.units import Duration
from . import register
from .base import (
    DeviceConfig,
    DeviceTimeout,
    DeviceUnreachable,
    Driver,
    DriverContext,
    Readings,
    split_host,
)
from .udp import DatagramEndpoint

log = logging.getLogger("roomd.audio")

BUFFER_SECONDS = 12.0  # audio kept for the poll and a sound check's captures


class AudioProbeConfig(DeviceConfig):
    driver: Literal["audio-probe"]
    source: Literal["rtp", "wav", "soundcard"] = "rtp"
    listen: str | None = None  # rtp: HOST:PORT to receive on; a multicast HOST joins the group
    file: Path | None = None  # wav
    device: str | int | None = None  # soundcard: a sounddevice name or index
    encoding: Encoding = "L24"
    sample_rate: int = Field(48000, ge=8000, le=192000)
    channels: int = Field(1, ge=1, le=64)  # in the stream
    channel: int = Field(1, ge=1)  # the microphone's channel (1-based)
    payload_type: int | None = Field(None, ge=0, le=127)  # None: accept any
    # dB SPL = dBFS + calibration_db. With a 94 dB calibrator reading X dBFS: 94 − X.
    calibration_db: float = 0.0
    weighting: Literal["A", "Z"] = "A"
    min_gap: Duration = 0.005  # digital silence this long after signal is a dropout
    poll: Duration = 1.0
    timeout: Duration = 2.0  # no audio for this long: offline

    @model_validator(mode="after")
    def _checks(self) -> AudioProbeConfig:
        if self.channel > self.channels:
            raise ValueError(f"channel {self.channel} but the stream has {self.channels}")
        if self.source == "rtp":
            if not self.listen:
                raise ValueError("source rtp needs listen: HOST:PORT")
            _host, port = split_host(self.listen, 0)
            if port == 0:
                raise ValueError("listen: expected HOST:PORT, e.g. 0.0.0.0:5004")
        elif self.source == "wav":
            if self.file is None:
                raise ValueError("source wav needs file")
            try:
                with wave.open(str(self.file), "rb") as w:
                    if w.getsampwidth() not in (2, 3, 4):
                        raise ValueError(f"file: {w.getsampwidth() * 8}-bit WAV is not supported")
            except (OSError, wave.Error, EOFError) as exc:
                raise ValueError(f"file: cannot read {self.file}: {exc}") from exc
        return self


class _Ring:
    """The last BUFFER_SECONDS of samples, addressed by an ever-growing sample index."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.chunks: deque[tuple[int, Samples]] = deque()
        self.total = 0  # samples ever received
        self.losses: deque[tuple[int, int]] = deque()  # (sample index, loss events there)
        self.arrived = asyncio.Event()

    def feed(self, x: Samples) -> None:
        self.chunks.append((self.total, x))
        self.total += len(x)
        limit = self.total - int(BUFFER_SECONDS * self.rate)
        while self.chunks and self.chunks[0][0] + len(self.chunks[0][1]) < limit:
            self.chunks.popleft()
        while self.losses and self.losses[0][0] < limit:
            self.losses.popleft()
        self.arrived.set()

    def lost(self, events: int) -> None:
        self.losses.append((self.total, events))

    def since(self, start: int, stop: int | None = None) -> tuple[Samples, int, int]:
        """Samples from index `start` (or the oldest kept) to `stop`; with the loss events in
        that span and the index the span really started at."""
        stop = self.total if stop is None else stop
        parts = []
        first = None
        for index, chunk in self.chunks:
            end = index + len(chunk)
            if end <= start or index >= stop:
                continue
            lo, hi = max(start - index, 0), min(stop - index, len(chunk))
            if first is None:
                first = index + lo
            parts.append(chunk[lo:hi])
        begin = start if first is None else first
        losses = sum(n for i, n in self.losses if begin <= i < stop)
        data = np.concatenate(parts) if parts else np.zeros(0)
        return data, losses, begin


@register
class AudioProbeDriver(Driver):
    kind = "audio-probe"
    config_model = AudioProbeConfig
    self_timed = True
    config: AudioProbeConfig

    def __init__(self, config: DeviceConfig, context: DriverContext) -> None:
        super().__init__(config, context)
        assert isinstance(config, AudioProbeConfig)
        self.ring = _Ring(config.sample_rate)
        self.analyzer = Analyzer(
            rate=config.sample_rate,
            calibration_db=config.calibration_db,
            weighting=config.weighting,
            min_gap=config.min_gap,
        )
        self.sequence = SequenceTracker()
        self.bad_packets = 0
        self.lost_packets = 0
        self._cursor: int | None = None
        self._opened_at = 0.0
        self._heard_at = 0.0
        self._endpoint: DatagramEndpoint | None = None
        self._feeder: asyncio.Task[None] | None = None
        self._stream: Any = None
        self.last: Analysis | None = None

    @property
    def metrics(self) -> list[str]:
        return [
            "sound_level_db",
            "noise_floor_db",
            "snr_db",
            "audio_dropouts",
            "clip_events",
            "peak_dbfs",
            "hum_db",
            "lost_packets",
            "bad_packets",
        ]

    # ---- sources -----------------------------------------------------------------------------

    async def _open(self) -> None:
        if self._opened_at:
            return
        cfg = self.config
        if cfg.source == "rtp":
            await self._open_rtp()
        elif cfg.source == "wav":
            self._feeder = asyncio.get_running_loop().create_task(
                self._play_wav(), name=f"wav:{cfg.id}"
            )
        else:
            self._open_soundcard()
        self._opened_at = self._heard_at = time.monotonic()

    async def _open_rtp(self) -> None:
        assert self.config.listen is not None
        host, port = split_host(self.config.listen, 0)
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            multicast = ipaddress.ip_address(host).is_multicast if _is_ip(host) else False
            sock.bind(("0.0.0.0" if multicast else host, port))
            if multicast:  # AES67 streams are usually multicast
                group = struct.pack("4s4s", socket.inet_aton(host), socket.inet_aton("0.0.0.0"))
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group)
            sock.setblocking(False)
            _t, self._endpoint = await loop.create_datagram_endpoint(
                lambda: DatagramEndpoint(self._rtp), sock=sock
            )
        except OSError as exc:
            sock.close()
            raise DeviceUnreachable(f"cannot listen on {self.config.listen}: {exc}") from exc

    def _rtp(self, data: bytes) -> None:
        cfg = self.config
        try:
            packet = parse_rtp(data)
            if cfg.payload_type is not None and packet.payload_type != cfg.payload_type:
                raise RtpError(f"payload type {packet.payload_type}, expected {cfg.payload_type}")
            samples = decode_pcm(packet.payload, cfg.encoding, cfg.channels, cfg.channel - 1)
        except RtpError:
            self.bad_packets += 1
            return
        events = self.sequence.loss_events
        lost = self.sequence.lost_packets
        if not self.sequence.accept(packet):
            return  # late or duplicate: its place in the stream has passed
        if self.sequence.loss_events != events:
            self.ring.lost(self.sequence.loss_events - events)
            self.lost_packets += self.sequence.lost_packets - lost
        self._heard_at = time.monotonic()
        self.ring.feed(samples)

    async def _play_wav(self) -> None:
        """Feed the file at its own pace, 20 ms at a time, looping."""
        assert self.config.file is not None
        with wave.open(str(self.config.file), "rb") as w:
            rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
            frames = w.readframes(w.getnframes())
        data = _wav_samples(frames, width, channels, min(self.config.channel, channels) - 1)
        if rate != self.config.sample_rate:
            log.warning(
                "%s: WAV at %d Hz, configured %d Hz", self.config.id, rate, self.config.sample_rate
            )
        step = max(1, rate // 50)
        pos = 0
        loop = asyncio.get_running_loop()
        started = loop.time()
        fed = 0
        while len(data):
            chunk = data[pos : pos + step]
            pos = (pos + step) % len(data)
            self.ring.feed(chunk)
            self._heard_at = time.monotonic()
            fed += len(chunk)
            await asyncio.sleep(max(0.0, started + fed / rate - loop.time()))

    def _open_soundcard(self) -> None:
        try:
            import sounddevice  # type: ignore[import-not-found, unused-ignore]
        except ImportError as exc:
            raise DeviceUnreachable(
                "source soundcard needs the sounddevice package: pip install 'roomd[soundcard]'"
            ) from exc
        loop = asyncio.get_running_loop()
        channel = self.config.channel - 1

        def callback(indata: Any, frames: int, when: Any, status: Any) -> None:
            samples = np.array(indata[:, channel], dtype=np.float64)
            loop.call_soon_threadsafe(self._feed_card, samples)

        try:
            self._stream = sounddevice.InputStream(
                device=self.config.device,
                channels=self.config.channels,
                samplerate=self.config.sample_rate,
                dtype="float32",
                callback=callback,
            )
            self._stream.start()
        except Exception as exc:  # PortAudio reports every problem as its own error type
            raise DeviceUnreachable(f"sound card {self.config.device!r}: {exc}") from exc

    def _feed_card(self, samples: Samples) -> None:
        self._heard_at = time.monotonic()
        self.ring.feed(samples)

    # ---- measuring ---------------------------------------------------------------------------

    async def poll(self) -> Readings:
        await self._open()
        now = time.monotonic()
        if now - self._heard_at > self.config.timeout:
            raise DeviceTimeout(f"no audio for {now - self._heard_at:.1f}s")
        ring = self.ring
        if self._cursor is None:
            self._cursor = max(0, ring.total - int(self.config.poll * self.config.sample_rate))
        window, losses, _ = ring.since(self._cursor)
        self._cursor = ring.total
        analysis = self.analyzer.analyze(window, extra_dropouts=losses)
        readings: Readings
        if analysis.seconds < 0.1:  # just opened: nothing to measure yet
            readings = dict.fromkeys(analysis.as_readings())
        else:
            self.last = analysis
            readings = dict(analysis.as_readings())
        readings["lost_packets"] = self.lost_packets
        readings["bad_packets"] = self.bad_packets
        return readings

    async def capture(self, seconds: float) -> Analysis:
        """Fresh audio of `seconds` from now, analysed on its own (for the sound check)."""
        await self._open()
        need = int(seconds * self.config.sample_rate)
        start = self.ring.total
        deadline = time.monotonic() + seconds + self.config.timeout
        while self.ring.total - start < need:
            self.ring.arrived.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeviceTimeout(f"audio stopped during the {seconds:g}s measurement")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self.ring.arrived.wait()
        window, losses, _ = self.ring.since(start, start + need)
        fresh = Analyzer(
            rate=self.analyzer.rate,
            calibration_db=self.analyzer.calibration_db,
            weighting=self.analyzer.weighting,
            min_gap=self.analyzer.min_gap,
        )
        return fresh.analyze(window, extra_dropouts=losses)

    async def close(self) -> None:
        if self._endpoint is not None and self._endpoint.transport is not None:
            self._endpoint.transport.close()
        self._endpoint = None
        if self._feeder is not None:
            self._feeder.cancel()
            self._feeder = None
        if self._stream is not None:
            with contextlib.suppress(Exception):
                self._stream.stop()
                self._stream.close()
            self._stream = None
        self._opened_at = 0.0
        self._cursor = None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _wav_samples(frames: bytes, width: int, channels: int, channel: int) -> Samples:
    """Little-endian WAV PCM → floats of one channel."""
    if width == 2:
        ints = np.frombuffer(frames, dtype="<i2").astype(np.float64) / 32768.0
    elif width == 4:
        ints = np.frombuffer(frames, dtype="<i4").astype(np.float64) / 2147483648.0
    else:
        raw = np.frombuffer(frames, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        v = np.where(v & 0x800000, v - 0x1000000, v)
        ints = v.astype(np.float64) / 8388608.0
    out: Samples = ints.reshape(-1, channels)[:, channel]
    return out


def read_wav(path: Path, channel: int = 1) -> tuple[Samples, int]:
    """A WAV file's samples (one channel) and its rate, for `roomd analyze`."""
    with wave.open(str(path), "rb") as w:
        rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        frames = w.readframes(w.getnframes())
    if width not in (2, 3, 4):
        raise ValueError(f"{path}: {width * 8}-bit WAV is not supported")
    return _wav_samples(frames, width, channels, min(channel, channels) - 1), rate
