"""The desk simulators against a client nobody here wrote: behringer-mixer (PyPI, the library
behind Home Assistant's Behringer integration) identifies the desk, loads every channel's mute
and fader, and sets values that roomd's own driver then sees pushed through `/xremote`."""

from __future__ import annotations

import pytest

from roomd.drivers.base import DriverContext
from roomd.drivers.x32 import MixerConfig, MixerDriver, XAirDriver
from roomd.simulators.mixer import MixerSim, RoomAudio
from tests.conftest import until


@pytest.mark.parametrize(
    ("kind", "client_type", "channels"), [("x32", "X32", 32), ("xair", "XR18", 16)]
)
async def test_a_third_party_client_reads_and_sets_the_simulated_desk(
    kind: str, client_type: str, channels: int
) -> None:
    from behringer_mixer import mixer_api  # type: ignore[import-untyped]

    sim = MixerSim(kind, room=RoomAudio(talking=True))
    await sim.start()
    cfg = MixerConfig.model_validate(
        {"id": "mixer", "driver": kind, "host": f"127.0.0.1:{sim.port}", "channels": [1, 2]}
    )
    ours = (XAirDriver if kind == "xair" else MixerDriver)(cfg, DriverContext())
    client = mixer_api.create(client_type, ip="127.0.0.1", port=sim.port, delay=0.001)
    try:
        assert await ours.poll()  # subscribed (/xremote) like any controller
        assert await client.start() is True  # /xinfo answered as a desk answers it
        await client.reload()
        state = client.state()
        for ch in range(1, channels + 1):
            assert state[f"/ch/{ch}/mix_on"] is (sim.params[f"/ch/{ch:02d}/mix/on"] == 1)
            assert state[f"/ch/{ch}/mix_fader"] == pytest.approx(
                sim.params[f"/ch/{ch:02d}/mix/fader"], abs=1e-3
            )
        main = "/main/st" if kind == "x32" else "/lr"  # the client calls both "/main/st"
        await client.set_value("/main/st/mix_on", False)
        await client.set_value("/ch/2/mix_on", False)
        await until(lambda: sim.params[f"{main}/mix/on"] == 0, 2, "main muted on the desk")
        # roomd's driver hears the other controller's change through its subscription.
        await until(lambda: ours.params.get(f"{main}/mix/on") == 0, 2, "pushed to roomd")
        readings = await ours.poll()
        assert readings["main_mute"] == "on" and readings["ch02_mute"] == "on"
    finally:
        await client.stop()
        await ours.close()
        await sim.stop()
