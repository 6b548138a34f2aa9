"""Serial ports for asyncio protocols: pyserial configures the port (baud, parity, …); reads
and writes go straight to the file descriptor from the event loop.

Why not an asyncio adapter around pyserial's read(): pyserial reads through select.select(),
which fails with "filedescriptor out of range" once the process holds more than 1024 file
descriptors — a daemon polling 1000 Modbus TCP devices does (found by bench/signin_bench.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import termios
from collections.abc import Callable
from typing import Any

import serial

from .base import DeviceUnreachable

log = logging.getLogger("roomd.serial")


class SerialTransport(asyncio.Transport):
    """A minimal transport over a serial port's file descriptor."""

    def __init__(self, port: serial.Serial, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._serial = port
        self._fd = port.fileno()
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        self._pending = b""
        self._closed = False
        os.set_blocking(self._fd, False)
        self._loop.add_reader(self._fd, self._readable)
        protocol.connection_made(self)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:  # EIO: the device (or the pty's other side) went away
            self._lose(exc)
            return
        if not data:
            self._lose(None)
            return
        self._protocol.data_received(data)

    def write(self, data: Any) -> None:
        if self._closed:
            return
        if self._pending:
            self._pending += bytes(data)
            return
        try:
            n = os.write(self._fd, data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self._lose(exc)
            return
        if n < len(data):
            self._pending = bytes(data)[n:]
            self._loop.add_writer(self._fd, self._writable)

    def _writable(self) -> None:
        try:
            n = os.write(self._fd, self._pending)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lose(exc)
            return
        self._pending = self._pending[n:]
        if not self._pending:
            self._loop.remove_writer(self._fd)

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._lose(None)

    def _lose(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        with contextlib.suppress(Exception):
            self._serial.close()
        self._protocol.connection_lost(exc)


class _Callbacks(asyncio.Protocol):
    def __init__(
        self, on_data: Callable[[bytes], None], on_lost: Callable[[Exception | None], None]
    ) -> None:
        self._on_data = on_data
        self._on_lost = on_lost

    def data_received(self, data: bytes) -> None:
        self._on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost(exc)


async def open_serial(
    port: str,
    on_data: Callable[[bytes], None],
    on_lost: Callable[[Exception | None], None],
    **settings: Any,
) -> SerialTransport:
    """Open `port`; DeviceUnreachable when it cannot be. Pseudo-terminals (simulators, some USB
    bridges) reject parity with EINVAL: parity is a line property they do not carry, so the
    open is retried without it."""
    settings = dict(settings)
    for attempt in range(2):
        try:
            ser = serial.Serial(port, timeout=0, **settings)
            return SerialTransport(ser, _Callbacks(on_data, on_lost))
        # termios.error (not an OSError) is what tcsetattr raises for a setting the line
        # cannot take, e.g. even parity on a Linux pseudo-terminal.
        except (serial.SerialException, OSError, ValueError, termios.error) as exc:
            parity = settings.get("parity", "N")
            if attempt == 0 and parity != "N" and "Invalid argument" in str(exc):
                log.debug("%s rejects parity %s; opening without", port, parity)
                settings["parity"] = "N"
                continue
            raise DeviceUnreachable(f"cannot open {port}: {exc}") from None
    raise DeviceUnreachable(f"cannot open {port}")
