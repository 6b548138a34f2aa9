from __future__ import annotations

from roomd.simulators.site import SimControl, SimulatedSite


async def test_control_commands_and_errors() -> None:
    site = await SimulatedSite(1, "normal", rtu=False, projectors=False).start()
    try:
        ctl = SimControl(site)
        assert ctl.execute("list") == "ok r301/env:none r301/mixer:main_open"
        assert ctl.execute("fault r301 env slow") == "ok r301/env fault slow"
        assert site.rooms[0].sensor("env").fault == "slow"
        assert ctl.execute("set r301 env co2_ppm 1234") == "ok r301/env co2_ppm=1234"
        assert site.rooms[0].sensor("env").value("co2_ppm") == 1234
        assert ctl.execute("unset r301 env co2_ppm").startswith("ok")
        assert site.rooms[0].sensor("env").value("co2_ppm") != 1234
        assert ctl.execute("fault r301 env melt").startswith("error: fault is one of none, silent")
        assert ctl.execute("set r301 env nope 1").startswith("error: env has no metric 'nope'")
        assert ctl.execute("set r301 env co2_ppm many") == "error: not a number: 'many'"
        assert ctl.execute("fault r999 env silent") == "error: no room 'r999'"
        assert ctl.execute("dance").startswith("error: commands:")
        assert ctl.execute("") == "error: empty command"
    finally:
        await site.stop()


async def test_control_of_projectors() -> None:
    site = await SimulatedSite(1, "normal", rtu=False).start()
    try:
        ctl = SimControl(site)
        assert ctl.execute("list") == "ok r301/env:none r301/projector:none r301/mixer:main_open"
        assert ctl.execute("fault r301 projector lamp") == "ok r301/projector faults lamp"
        assert ctl.execute("fault r301 projector fan") == "ok r301/projector faults fan,lamp"
        proj = site.rooms[0].projector
        assert proj is not None and proj.state.erst() == "120000"
        assert ctl.execute("fault r301 projector none") == "ok r301/projector faults none"
        assert ctl.execute("set r301 projector lamp_hours 2950").startswith("ok")
        assert proj.state.lamp_hours == 2950
        assert ctl.execute("set r301 projector power on") == "ok r301/projector power warming"
        assert ctl.execute("fault r301 projector melt").startswith("error: projector faults")
    finally:
        await site.stop()


async def test_fault_none_undoes_a_muted_main_mix() -> None:
    site = await SimulatedSite(1, "normal", rtu=False, projectors=False).start()
    try:
        ctl = SimControl(site)
        assert ctl.execute("fault r301 mixer mute_main") == "ok r301/mixer mute_main"
        assert ctl.execute("list").endswith("r301/mixer:main_muted")
        assert ctl.execute("fault r301 mixer none") == "ok r301/mixer none"
        assert ctl.execute("list").endswith("r301/mixer:main_open")  # the demo's "(then none)"
    finally:
        await site.stop()
