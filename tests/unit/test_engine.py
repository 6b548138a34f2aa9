"""The poll engine on its own: drivers that answer at once (no wire), callbacks recorded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from roomd.daemon.engine import PollEngine
from roomd.drivers.base import DeviceConfig, DeviceTimeout, Driver, DriverContext, Readings


class Answering(Driver):
    kind = "test"
    config_model = DeviceConfig
    self_timed = True

    def __init__(self, config: DeviceConfig, fast: bool = False, fail: bool = False) -> None:
        super().__init__(config, DriverContext())
        self.fast, self.fail = fast, fail
        self.polls = 0

    async def poll(self) -> Readings:
        self.polls += 1
        if self.fail:
            raise DeviceTimeout("no reply within 1s")
        return {"n": self.polls}

    def start_poll(self, done: Callable[[Readings | BaseException], None]) -> bool:
        if not self.fast:
            return False
        self.polls += 1
        asyncio.get_running_loop().call_soon(done, {"n": self.polls})
        return True


def config(dev_id: str, poll: float) -> DeviceConfig:
    return DeviceConfig.model_validate({"id": dev_id, "driver": "test", "poll": poll})


async def test_each_device_on_its_own_schedule_a_failing_one_backs_off() -> None:
    got: list[tuple[Any, Readings]] = []
    failed: list[tuple[Any, str]] = []
    engine = PollEngine(lambda o, r, t: got.append((o, r)), lambda o, e, p: failed.append((o, e)))
    slow_path = Answering(config("a", 0.02))
    fast_path = Answering(config("b", 0.02), fast=True)
    broken = Answering(config("c", 0.02), fail=True)
    for name, driver in (("a", slow_path), ("b", fast_path), ("c", broken)):
        engine.add(driver.config, driver, name)
    await asyncio.sleep(0.3)
    await engine.close()
    count = {o: sum(1 for g in got if g[0] == o) for o in "ab"}
    # ~15 polls each in 0.3 s at 20 ms (first one at a random point of the first interval).
    assert 8 <= count["a"] <= 16 and 8 <= count["b"] <= 16, count
    # The broken one: retried with backoff (≥ 0.25 s for a 20 ms poll), not every 20 ms.
    assert 1 <= len(failed) <= 2 and failed[0] == ("c", "no reply within 1s")
    assert broken.polls == len(failed)
    # After close: nothing more, even for replies already on their way.
    polls = (slow_path.polls, fast_path.polls, len(got))
    await asyncio.sleep(0.1)
    assert (slow_path.polls, fast_path.polls, len(got)) == polls


async def test_a_removed_device_is_not_polled_again() -> None:
    got: list[Any] = []
    engine = PollEngine(lambda o, r, t: got.append(o), lambda o, e, p: None)
    driver = Answering(config("a", 0.01), fast=True)
    handle = engine.add(driver.config, driver, "a")
    await asyncio.sleep(0.1)
    engine.remove(handle)
    seen = len(got)
    await asyncio.sleep(0.1)
    assert seen >= 3 and len(got) <= seen + 1  # at most the poll already in flight
    await engine.close()
