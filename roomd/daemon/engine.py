"""The poll engine: one scheduler for every device's polls. It knows drivers and two callbacks,
nothing else (no rules, no MQTT, no store).

A timer wheel served by one timer, instead of a sleeping task per device: polls fall on a
TICK grid, each grid point's polls in one list (a poll is scheduled with a dict lookup and an
append; only the grid points in use are in a small heap).
A driver that can poll without a coroutine (`Driver.start_poll`, Modbus TCP) is polled with no
task, future or timer of its own; every other driver's poll runs as a short-lived task. Each
poll is bounded (the driver's own timeouts, or the engine's guard); a failure is reported once
per poll and retried with capped, jittered backoff; an authentication failure parks the device
until a reload. One device's error never touches another's schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..drivers.base import DeviceAuthError, DeviceConfig, DeviceError, Driver, Readings

log = logging.getLogger("roomd")

RETRY_CAP = 60.0  # seconds: longest wait between retries of an offline device
TICK = 0.005  # seconds: the scheduler's timer granularity
FIRST_SPREAD = 5.0  # seconds: the first polls after a start are spread over at most this


def backoff(attempt: int, poll: float, cap: float = RETRY_CAP) -> float:
    """Equal-jitter exponential backoff: never zero (no retry storm), never above `cap`."""
    ceiling = min(cap, max(poll, 0.5) * 2 ** min(attempt - 1, 16))
    return random.uniform(ceiling / 2, ceiling)


@dataclass(eq=False, slots=True)
class Polled:
    """One device as the engine sees it; `owner` is whatever the caller keeps per device."""

    config: DeviceConfig
    driver: Driver
    owner: Any
    failures: int = 0
    next_at: float = 0.0
    started: float = 0.0
    running: bool = False  # a poll is in flight
    stopped: bool = False
    parked: bool = False  # after an authentication failure, until a reload
    paced: bool = False  # the driver sets its own next interval (Driver.next_interval)
    poll: float = 0.0  # config.poll, read on every poll
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    # Set by PollEngine.add: the poll's end (readings or exception) to the engine.
    done: Callable[[Any], None] = field(default=lambda result: None, repr=False)


SuccessHandler = Callable[[Any, Readings, float], None]  # owner, readings, seconds it took
FailureHandler = Callable[[Any, str, bool], None]  # owner, error, parked (auth failure)


class PollEngine:
    def __init__(
        self, on_readings: SuccessHandler, on_failure: FailureHandler, jitter: float = 0.0
    ) -> None:
        self.on_readings = on_readings
        self.on_failure = on_failure
        self.jitter = jitter
        self._slots: dict[int, list[Polled]] = {}  # grid point (due time / TICK) → its polls
        self._points: list[int] = []  # a heap of the grid points in `_slots`
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    # ---- membership -------------------------------------------------------------------------

    def add(self, config: DeviceConfig, driver: Driver, owner: Any) -> Polled:
        """Start polling; the first poll falls at a random point of the first interval (at most
        FIRST_SPREAD s: a device polled every minute is known within seconds of a start), so
        5,000 devices do not fire at once."""
        loop = self._loop = self._loop or asyncio.get_running_loop()
        p = Polled(config, driver, owner)
        p.paced = type(driver).next_interval is not Driver.next_interval
        p.poll = config.poll
        p.done = functools.partial(self._finished, p)  # no Python frame of its own
        self._schedule(p, loop.time() + random.uniform(0, min(config.poll, FIRST_SPREAD)))
        return p

    def remove(self, p: Polled) -> None:
        """Stop polling (lazily: its heap entry is skipped); the caller closes the driver."""
        p.stopped = True
        if p.task is not None:
            p.task.cancel()

    async def close(self) -> None:
        # From here on, replies still in flight are dropped and nothing is scheduled again.
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._slots.clear()
        self._points.clear()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    # ---- scheduling -------------------------------------------------------------------------

    def _schedule(self, p: Polled, at: float) -> None:
        if self._closed:
            return
        p.next_at = at
        # A poll starts at most TICK late (its schedule, next_at, does not drift).
        point = math.ceil(at / TICK)
        slot = self._slots.get(point)
        if slot is not None:
            slot.append(p)
            return
        self._slots[point] = [p]
        heapq.heappush(self._points, point)
        if point * TICK < self._timer_at:
            self._arm(point)

    def _arm(self, point: int) -> None:
        assert self._loop is not None
        # At 5,000 polls a second one timer serves ~TICK × 5,000 polls instead of one each.
        at = point * TICK
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._run_due)

    def _run_due(self) -> None:
        assert self._loop is not None
        self._timer, self._timer_at = None, float("inf")
        points, slots = self._points, self._slots
        due = (self._loop.time() + TICK / 10) / TICK
        clock = time.perf_counter
        while points and points[0] <= due:
            for p in slots.pop(heapq.heappop(points)):
                if p.stopped or p.running or p.parked:
                    continue
                # Started here, not in a method of its own: this loop runs 5,000 times a second.
                p.running = True
                p.started = clock()
                try:
                    if p.driver.start_poll(p.done):
                        continue  # the driver calls p.done(readings or exception) on the loop
                except Exception as exc:  # a driver bug: reported as that device's failure
                    p.done(exc)
                    continue
                self._start_task(p)
        if points:
            self._arm(points[0])

    def _start_task(self, p: Polled) -> None:
        """A poll as a task: drivers without `start_poll`, first polls and reconnects."""
        task = asyncio.ensure_future(self._poll_task(p))
        p.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _poll_task(self, p: Polled) -> None:
        # A backstop for drivers whose wire operations are not all bounded by their own timeout.
        guard = None if p.driver.self_timed else p.config.timeout * 4 + 1.0
        try:
            if guard is None:
                readings = await p.driver.poll()
            else:
                async with asyncio.timeout(guard):
                    readings = await p.driver.poll()
        except asyncio.CancelledError:
            p.running = False
            raise
        except BaseException as exc:
            p.task = None
            p.done(exc)
            return
        p.task = None
        p.done(readings)

    def _finished(self, p: Polled, result: Any) -> None:
        """A poll ended: readings (a dict) or the exception that ended it."""
        p.running = False
        if p.stopped or self._closed:
            return
        assert self._loop is not None
        if isinstance(result, dict):
            p.failures = 0
            self.on_readings(p.owner, result, time.perf_counter() - p.started)
            poll = p.poll
            jitter = self.jitter
            step = p.driver.next_interval(poll) if p.paced else poll
            if jitter:
                step *= 1 + random.uniform(-jitter, jitter)
            at = p.next_at + step
            now = self._loop.time()
            if at < now:
                # Behind (a slow device, a busy moment): skip the missed polls but keep this
                # device's phase. "Now" for every late device would bunch them into one tick
                # for good, and each later tick would stall the loop longer.
                at += math.ceil((now - at) / step) * step
            self._schedule(p, at)
            return
        p.failures += 1
        parked = isinstance(result, DeviceAuthError)
        if parked:
            error = f"authentication failed: {result}"
        elif isinstance(result, DeviceError | TimeoutError):
            error = str(result) or "no reply (poll timed out)"
        else:  # a driver bug must not kill the daemon
            log.error(
                "%s: driver error",
                p.config.id,
                exc_info=(type(result), result, result.__traceback__),
            )
            error = f"driver error: {type(result).__name__}: {result}"
        self.on_failure(p.owner, error, parked)
        self._spawn(self._close_driver(p.driver))
        if parked:
            p.parked = True
            return
        self._schedule(p, self._loop.time() + backoff(p.failures, p.poll))

    async def _close_driver(self, driver: Driver) -> None:
        with contextlib.suppress(Exception):
            await driver.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
