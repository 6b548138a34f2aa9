"""The help-desk console in a real browser: Debian's chromium, headless, driven by Playwright
(no browser download), against a daemon polling a simulated PJLink projector, with a real
Mosquitto. Screenshots of the page are saved next to the test's files when a step fails."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from roomd.console.auth import hash_password
from roomd.daemon.supervisor import Daemon
from roomd.simulators.pjlink import PJLinkSim, ProjectorState
from tests.conftest import Mosquitto, free_port, until, write_config
from tests.integration.test_daemon import BASE, running, site

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Chromium is told to resolve no name but loopback and to make no background connection:
# nothing it does leaves this machine.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
LAMP = "r301.proj.projector_error_lamp.error"
TECH_PASSWORD = "correct horse battery"


def console_config(tmp_path: Path, mosquitto: Mosquitto, sim: PJLinkSim) -> Path:
    token = tmp_path / "viewer.token"
    token.write_text("viewer-token-0123456789abcdef\n")
    cfg = site(
        tmp_path,
        mosquitto,
        [
            {
                "id": "proj",
                "driver": "pjlink",
                "model": "roomd-simulator",
                "host": sim.address,
                "poll": "200ms",
                "timeout": "500ms",
            }
        ],
        thresholds={},
    )
    cfg["rooms"][0]["name"] = "市政厅 301"
    cfg["console"] = {
        "enabled": True,
        "listen": f"127.0.0.1:{free_port()}",
        "users": [
            {"name": "tech", "role": "technician", "password_hash": hash_password(TECH_PASSWORD)},
            {"name": "guest", "role": "viewer", "token_file": str(token), "language": "zh-CN"},
        ],
    }
    return write_config(tmp_path / "roomd.yaml", cfg)


@asynccontextmanager
async def console_daemon(
    tmp_path: Path, mosquitto: Mosquitto
) -> AsyncIterator[tuple[Daemon, PJLinkSim]]:
    sim = await PJLinkSim(ProjectorState(warmup=0.3, cooldown=0.3)).start()
    try:
        async with running(console_config(tmp_path, mosquitto, sim)) as daemon:
            assert daemon.console is not None
            yield daemon, sim
    finally:
        await sim.stop()


@asynccontextmanager
async def browser(tmp_path: Path) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    assert shutil.which(CHROMIUM), "chromium missing: scripts/setup installs Debian's chromium"
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


async def shot_on_failure(page: Any, tmp_path: Path, name: str) -> str:
    path = tmp_path / f"{name}.png"
    try:
        await page.screenshot(path=str(path), full_page=True)
    except Exception as exc:  # the page may be gone
        return f"(no screenshot: {exc})"
    return f"screenshot: {path}"


async def test_technician_and_viewer_in_a_real_browser(
    tmp_path: Path, mosquitto: Mosquitto, recorder_factory: Any
) -> None:
    rec = recorder_factory(mosquitto.port, topic="roomd/#")
    async with console_daemon(tmp_path, mosquitto) as (daemon, sim), browser(tmp_path) as b:
        console = daemon.console
        assert console is not None
        url = console.url
        page = await b.new_page()
        step = "login"
        try:
            # A technician logs in and sees the fleet: one tile, its state, the room's name.
            await page.goto(url)
            assert "/login" in page.url
            await page.fill("input[name=user]", "tech")
            await page.fill("input[name=password]", TECH_PASSWORD)
            await page.click("form.login button[type=submit]")
            step = "fleet"
            tile = page.locator(".tile[data-room=r301]")
            await tile.wait_for()
            assert "市政厅 301" in await tile.inner_text()
            await page.locator(".tile[data-room=r301].ready").wait_for(timeout=10_000)

            # A lamp fault: the tile turns "not ready" on the open page, without a reload.
            step = "live fleet"
            sim.state.faults.add("lamp")
            await page.locator(".tile[data-room=r301].not_ready").wait_for(timeout=10_000)

            # The room page: acknowledge the alert; the retained alert topic says who.
            step = "acknowledge"
            await tile.locator("a").click()
            row = page.locator(f"tr[data-alert='{LAMP}']")
            await row.wait_for()
            await row.locator("button", has_text="Acknowledge").click()
            await page.locator("#flash", has_text="Acknowledged").wait_for()
            acked = await rec.wait_for(
                lambda m: (
                    m.topic == f"{BASE}/r301/alerts/{LAMP}"
                    and m.payload
                    and m.json()["state"] == "acknowledged"
                )
            )
            assert acked[-1].json()["acknowledged_by"] == "tech@console"
            assert "acknowledged by tech@console" in await row.inner_text()

            # Power the projector on: the device's answer is shown, the state follows live.
            step = "power"
            power = page.locator("form[data-command='proj:power']")
            await power.locator("button[value=on]").click()
            await page.locator("#flash", has_text="proj power:").wait_for()
            await until(lambda: sim.state.power in ("warming", "on"), what="projector on")
            reading = page.locator("tr[data-device=proj] [data-metric=projector_power] b")
            await page.wait_for_function(
                "() => document.querySelector("
                "'tr[data-device=proj] [data-metric=projector_power] b')?.textContent === 'on'",
                timeout=15_000,
            )
            assert await reading.inner_text() == "on"
            cmd = await rec.wait_for(
                lambda m: m.topic == f"{BASE}/r301/events" and m.json().get("type") == "command"
            )
            assert cmd[-1].json()["by"] == "tech@console"

            # Run a level 1 check and open its report (the HTML `roomd check` writes).
            step = "check"
            sim.state.faults.clear()
            await page.select_option("select[name=level]", "1")
            await page.click("#run-check")
            link = page.locator("#report-link")
            await link.wait_for(timeout=60_000)
            async with page.context.expect_page() as opened:
                await link.click()
            report = await opened.value
            await report.wait_for_load_state()
            text = await report.inner_text("body")
            assert "Pre-meeting check" in text and "Signature" in text
            await report.close()

            # Incidents: the lamp alert with who acknowledged it and how fast; CSV export.
            step = "incidents"
            await page.goto(url + "incidents")
            assert "tech@console" in await page.inner_text("table.incidents")
            async with page.expect_download() as dl:
                await page.click("#csv")
            saved = await (await dl.value).path()
            csv_text = (await asyncio.to_thread(Path(saved).read_bytes)).decode("utf-8-sig")
            assert csv_text.startswith("alert,room,device")
            assert LAMP in csv_text and "tech@console" in csv_text

            # Log out; a viewer (token login, Chinese) sees but cannot command.
            step = "viewer"
            await page.click("form.who button")
            await page.wait_for_url(re.compile(r".*/login.*"))
            await page.fill("input[name=user]", "guest")
            await page.fill("input[name=password]", "viewer-token-0123456789abcdef")
            await page.click("form.login button[type=submit]")
            await page.locator(".tile[data-room=r301]").wait_for()
            assert "会议室" in await page.inner_text("nav")
            assert "只读" in await page.inner_text("#user")
            await page.goto(url + "rooms/r301")
            assert await page.locator("form.command").count() == 0
            assert await page.locator("button", has_text="确认").count() == 0
            power_before = sim.state.power
            status = await page.evaluate(
                """async () => {
                    const csrf = document.querySelector('form.who input[name=csrf]').value;
                    const body = new URLSearchParams(
                        {csrf, command: 'power', 'arg.state': 'off'});
                    const r = await fetch(
                        '/rooms/r301/devices/proj/command', {method: 'POST', body});
                    return r.status;
                }"""
            )
            assert status == 403
            await asyncio.sleep(0.5)
            assert sim.state.power == power_before
        except Exception as exc:
            where = await shot_on_failure(page, tmp_path, f"console-{step}")
            raise AssertionError(f"step {step!r} failed ({where}): {exc}") from exc


def _http(
    url: str,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], str]:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with opener.open(req, timeout=5) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read().decode()


async def test_forms_need_a_session_token_and_the_same_origin(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async with console_daemon(tmp_path, mosquitto) as (daemon, sim):
        console = daemon.console
        assert console is not None
        url = console.url

        def get(path: str, **kw: Any) -> tuple[int, dict[str, str], str]:
            return _http(url.rstrip("/") + path, **kw)

        # Nothing without a login; /events answers 401 rather than a redirect.
        status, headers, _ = await asyncio.to_thread(get, "/rooms/r301")
        assert status == 303 and headers["location"].startswith("/login?next=/rooms/r301")
        assert (await asyncio.to_thread(get, "/events"))[0] == 401
        # A script's bearer token reads pages; a wrong one is refused.
        ok = {"Authorization": "Bearer viewer-token-0123456789abcdef"}
        status, headers, body = await asyncio.to_thread(get, "/", headers=ok)
        assert status == 200 and "r301" in body
        assert "default-src 'self'" in headers["content-security-policy"]
        assert (await asyncio.to_thread(get, "/", headers={"Authorization": "Bearer x"}))[0] == 303
        # Guessing tokens is braked per address like passwords (5 failures: 429).
        for _ in range(4):
            await asyncio.to_thread(get, "/", headers={"Authorization": "Bearer y"})
        assert (await asyncio.to_thread(get, "/", headers=ok))[0] == 429
        daemon.console.gate._failures.clear()  # (the rest of the test is from this address)

        # Log in with a browser-like session.
        status, headers, body = await asyncio.to_thread(get, "/login")
        login_token = re.search(r"roomd_login=([\w-]+)", headers["set-cookie"])
        assert login_token is not None
        form = f"csrf={login_token.group(1)}&user=tech&password={TECH_PASSWORD}".encode()
        cookie = {"Cookie": f"roomd_login={login_token.group(1)}"}
        # Without the login form's token: refused before the password is looked at.
        bad = await asyncio.to_thread(get, "/login", data=b"user=tech&password=x", headers=cookie)
        assert bad[0] == 403
        status, headers, _ = await asyncio.to_thread(get, "/login", data=form, headers=cookie)
        assert status == 303
        session = re.search(r"roomd_session=([\w-]+)", headers["set-cookie"])
        assert session is not None
        assert "HttpOnly" in headers["set-cookie"] and "SameSite=Strict" in headers["set-cookie"]
        jar = {"Cookie": f"roomd_session={session.group(1)}"}
        _, _, page = await asyncio.to_thread(get, "/rooms/r301", headers=jar)
        csrf = re.search(r'name="csrf" value="([\w-]+)"', page)
        assert csrf is not None
        command = "command=power&arg.state=on"

        # A form post without the session's token, or from another origin: 403, nothing done.
        for body, extra in (
            (command, {}),
            (f"csrf=wrong&{command}", {}),
            (f"csrf={csrf.group(1)}&{command}", {"Origin": "http://evil.example"}),
        ):
            status, _, text = await asyncio.to_thread(
                get,
                "/rooms/r301/devices/proj/command",
                data=body.encode(),
                headers={**jar, **extra},
            )
            assert status == 403, text
        assert sim.state.power == "off"
        # With it: done.
        status, headers, _ = await asyncio.to_thread(
            get,
            "/rooms/r301/devices/proj/command",
            data=f"csrf={csrf.group(1)}&{command}".encode(),
            headers={**jar, "Origin": url.rstrip("/")},
        )
        assert status == 303
        await until(lambda: sim.state.power in ("warming", "on"), what="projector on")
        # An argument outside the spec is refused by the form's own check, named.
        status, _, _ = await asyncio.to_thread(
            get,
            "/rooms/r301/devices/proj/command",
            data=f"csrf={csrf.group(1)}&command=input&arg.input=hdmi9".encode(),
            headers=jar,
        )
        _, _, page = await asyncio.to_thread(get, "/rooms/r301", headers=jar)
        assert "input: one of" in page

        # Oversized bodies and header floods are refused with their status, and the console
        # goes on.
        big = await asyncio.to_thread(get, "/rooms/r301/ack", data=b"x" * 70_000, headers=jar)
        assert big[0] == 413
        flood = {f"X-H{i}": "y" * 200 for i in range(100)}
        assert (await asyncio.to_thread(get, "/", headers=flood))[0] == 431
        assert (await asyncio.to_thread(get, "/", headers=jar))[0] == 200

        # Log out: the session is gone.
        await asyncio.to_thread(get, "/logout", data=f"csrf={csrf.group(1)}".encode(), headers=jar)
        assert (await asyncio.to_thread(get, "/", headers=jar))[0] == 303
        assert json.loads(json.dumps(daemon.health()))["devices"] == 1


async def test_console_over_tls(tmp_path: Path, mosquitto: Mosquitto) -> None:
    import ssl

    import yaml

    from tests.integration.test_mqtt_tls import make_ca, make_cert

    await asyncio.to_thread(make_ca, tmp_path, "ca")
    await asyncio.to_thread(make_cert, tmp_path, "ca", "console")
    sim = await PJLinkSim(ProjectorState()).start()
    try:
        path = console_config(tmp_path, mosquitto, sim)
        raw = yaml.safe_load(path.read_text())
        raw["console"]["tls_cert_file"] = str(tmp_path / "console.crt")
        raw["console"]["tls_key_file"] = str(tmp_path / "console.key")
        write_config(path, raw)
        async with running(path) as daemon:
            assert daemon.console is not None
            url = daemon.console.url
            assert url.startswith("https://127.0.0.1:")
            ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))

            def fetch(u: str) -> tuple[int, str]:
                with urllib.request.urlopen(u, context=ctx, timeout=5) as r:
                    return r.status, r.headers["set-cookie"]

            status, cookie = await asyncio.to_thread(fetch, url + "login")
            assert status == 200 and "Secure" in cookie
            # Plain HTTP to the TLS port gets nothing usable.
            plain = url.replace("https://", "http://") + "login"
            try:
                await asyncio.to_thread(_http, plain)
                raise AssertionError("plain HTTP was answered on the TLS port")
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
    finally:
        await sim.stop()
