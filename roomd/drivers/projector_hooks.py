"""Meeting hooks every projector driver shares (PJLink, RS-232): the pre-meeting power-on test,
switching off after the meeting, taking over from a failed projector, pre-warming. They use
the driver's own `power`/`input` commands, so any projector driver with those plugs in."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any, cast

from ..daemon.checktypes import CheckContext, CheckItem
from .base import ArgSpec, CommandError, CommandSpec, DeviceRefused, Driver, Readings

WARMUP_TIMEOUT = 120.0  # seconds a lamp projector may take to reach "on"
COOLDOWN_TIMEOUT = 180.0
MIN_WIDTH, MIN_LINES = 1920, 1080  # STANDARD §1: input signal ≥ 1080p


def _resolution_ok(value: Any) -> tuple[bool, str]:
    match = re.fullmatch(r"(\d+)x(\d+)", str(value or ""))
    if not match:
        return False, "no signal" if not value else str(value)
    w, h = int(match.group(1)), int(match.group(2))
    return w >= MIN_WIDTH and h >= MIN_LINES, f"{w}x{h}"


async def power_test(driver: Driver, ctx: CheckContext) -> list[CheckItem]:
    """Power on (if off), confirm `on`, check the signal, and restore standby unless the meeting
    is near."""
    items: list[CheckItem] = []
    started = time.monotonic()
    before = ctx.readings().get("projector_power")
    if before == "cooling":
        await ctx.wait_for("projector_power", lambda v: v == "off", COOLDOWN_TIMEOUT)
    if before != "on":
        await driver.command("power", {"state": "on"})
    state = await ctx.wait_for("projector_power", lambda v: v == "on", WARMUP_TIMEOUT)
    items.append(
        CheckItem(
            "power-on test",
            "on",
            str(state),
            state == "on",
            round(time.monotonic() - started, 2),
            "" if before == "on" else f"was {before}",
        )
    )
    if ctx.expect_source and state == "on":
        ok, measured = _resolution_ok(ctx.readings().get("input_resolution"))
        items.append(CheckItem("input signal", f">= {MIN_WIDTH}x{MIN_LINES}", measured, ok))
    if before in ("off", "cooling", None) and state == "on" and not ctx.keep_on:
        t = time.monotonic()
        await driver.command("power", {"state": "off"})
        items.append(
            CheckItem("restored to standby", "off", "off", True, round(time.monotonic() - t, 2))
        )
    return items


async def switch_off(driver: Driver, readings: Readings) -> str | None:
    power = readings.get("projector_power")
    if power in ("off", "cooling"):
        return None
    await driver.command("power", {"state": "off"})
    return "projector powered off"


async def take_over(driver: Driver, primary: Readings) -> str:
    """Power on and select the primary's input by its logical name (hdmi1 is "31" in PJLink
    and "30" in ESC/VP21). Most projectors refuse an input change while warming up (PJLink
    ERR3), so the input is retried until it is taken or the lamp is up."""
    await driver.command("power", {"state": "on"})
    done = "powered on"
    source = primary.get("input_name")
    if not source and primary.get("input"):
        # The primary's code has no name in its model: another make's code means something
        # else, so it is not sent. Said in the failover's result, for the technician.
        return done + f"; the primary's input {primary.get('input')} has no name to select"
    if isinstance(source, str) and source:
        deadline = time.monotonic() + WARMUP_TIMEOUT
        while True:
            try:
                await driver.command("input", {"input": source})
                break
            except (CommandError, DeviceRefused):
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(1.0)
        done += f", input {source} selected"
    return done


async def prewarm(driver: Driver, readings: Readings) -> str | None:
    if readings.get("projector_power") in ("on", "warming"):
        return None
    await driver.command("power", {"state": "on"})
    return "projector powering on"


class ProjectorHooks:
    """The meeting hooks of a projector driver (mixed into PJLink and RS-232 drivers, which
    keep their power state in `self.power`)."""

    power: str | None

    def command_specs(self) -> list[CommandSpec]:
        inputs = getattr(self, "inputs", None)
        names = tuple(sorted(inputs.codes)) if inputs is not None else ()
        on_off = ArgSpec("state", ("on", "off"))
        specs = [CommandSpec("power", (on_off,))]
        if names:
            specs.append(CommandSpec("input", (ArgSpec("input", names),)))
        specs.append(CommandSpec("mute", (ArgSpec("target", ("video", "both")), on_off)))
        return specs

    async def self_test(self, ctx: CheckContext) -> list[CheckItem]:
        return await power_test(cast(Driver, self), ctx)

    async def shutdown(self) -> str | None:
        return await switch_off(cast(Driver, self), {"projector_power": self.power})

    async def take_over(self, primary: Readings) -> str | None:
        return await take_over(cast(Driver, self), primary)

    async def prewarm(self) -> str | None:
        return await prewarm(cast(Driver, self), {"projector_power": self.power})
