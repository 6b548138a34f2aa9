"""A pseudo-terminal pair for simulated serial devices: the driver opens `path`, the simulator
reads and writes the master side from the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import Callable


class Pty:
    def __init__(self, on_data: Callable[[bytes], None]) -> None:
        self.on_data = on_data
        self.master = self.slave = -1
        self.path = ""

    @property
    def open(self) -> bool:
        return self.master >= 0

    def start(self) -> Pty:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        tty.setraw(self.master)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        asyncio.get_running_loop().add_reader(self.master, self._readable)
        return self

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except OSError:
            return  # EIO while nobody holds the port open
        if data:
            self.on_data(data)

    def write(self, data: bytes) -> None:
        if self.master >= 0:
            with contextlib.suppress(OSError):
                os.write(self.master, data)

    def close(self) -> None:
        if self.master < 0:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.master)
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.master = self.slave = -1
