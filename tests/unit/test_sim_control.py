from __future__ import annotations

from roomd.simulators.site import SimControl, SimulatedSite


async def test_control_commands_and_errors() -> None:
    site = await SimulatedSite(1, "normal", rtu=False).start()
    try:
        ctl = SimControl(site)
        assert ctl.execute("list") == "ok r301/env:none"
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
