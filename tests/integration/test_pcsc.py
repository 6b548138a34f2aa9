"""PC/SC readers against a real pcscd: the vsmartcard `vpcd` reader driver and a simulated card."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from smartcard.System import readers

from roomd.drivers.base import DeviceUnreachable, DriverContext
from roomd.drivers.pcsc import PcscConfig, PcscReaderDriver
from roomd.simulators.pcsc import VirtualCard
from tests.conftest import Mosquitto, free_port, until, write_config
from tests.integration.test_daemon import BASE, running

VPCD = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so"


def free_port_pair() -> int:
    """A port p with p + 1 free too: vpcd opens a second slot on the next port, and pcscd drops
    the whole reader when that one is taken (seen when a test before left sockets open)."""
    for _ in range(200):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("no two consecutive free ports")


@pytest.fixture
def pcscd(tmp_path: Path) -> Iterator[int]:
    """A pcscd of the test's own with one virtual reader on a free port; yields the port."""
    binary = shutil.which("pcscd") or "/usr/sbin/pcscd"
    if not Path(binary).exists() or not Path(VPCD).exists():
        pytest.fail("pcscd and vsmartcard-vpcd are missing: ./scripts/test installs them")
    if subprocess.run(["pgrep", "-x", "pcscd"], capture_output=True).returncode == 0:
        pytest.fail("another pcscd is running; the test needs its own (its socket is global)")
    port = free_port_pair()
    conf = tmp_path / "reader.conf.d"
    conf.mkdir()
    (conf / "vpcd").write_text(
        f'FRIENDLYNAME "Virtual PCD"\nDEVICENAME /dev/null:0x{port:X}\n'
        f"LIBPATH {VPCD}\nCHANNELID 0x{port:X}\n"
    )
    proc = subprocess.Popen(
        [binary, "-f", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # vpcd listens once pcscd has loaded it
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.05)
    # pcscd opens its own socket after loading the driver; wait until a context and the
    # reader are really there, or a loaded CI machine sees "Service not available".
    deadline = time.monotonic() + 20
    while True:
        try:
            if any(str(r).startswith("Virtual PCD") for r in readers()):
                break
        except Exception:  # pcscd not yet answering: any failure means "wait"
            pass
        if time.monotonic() > deadline:
            proc.terminate()
            pytest.fail("pcscd did not offer the virtual reader within 20 s")
        time.sleep(0.1)
    yield port
    proc.terminate()
    proc.wait(10)


def driver(**kw: Any) -> PcscReaderDriver:
    cfg = PcscConfig.model_validate(
        {"id": "pcsc", "driver": "nfc-pcsc", "reader": "Virtual PCD", **kw}
    )
    return PcscReaderDriver(cfg, DriverContext())


async def test_uid_by_apdu_once_per_presence(pcscd: int) -> None:
    card = VirtualCard(pcscd)
    d = driver()
    seen: list[str] = []
    d.on_card = lambda uid, at: seen.append(uid)
    assert await d.poll() == {"cards_read": 0}
    assert d.reader_name.startswith("Virtual PCD")
    await card.tap("04A1B2C3D4E5F6")
    for _ in range(20):
        await d.poll()  # the card stays on the reader: reported once
        await asyncio.sleep(0.05)
    assert seen == ["04A1B2C3D4E5F6"]
    await card.remove()
    await until(lambda: asyncio.get_event_loop() is not None, 1)
    for _ in range(5):
        await d.poll()
        await asyncio.sleep(0.1)
    await card.tap("04DEADBEEF0001")
    for _ in range(10):
        await d.poll()
        await asyncio.sleep(0.05)
    assert seen == ["04A1B2C3D4E5F6", "04DEADBEEF0001"]
    await card.remove()


async def test_missing_reader_is_unreachable(pcscd: int) -> None:
    with pytest.raises(DeviceUnreachable, match="no PC/SC reader matching 'ACR122'"):
        await driver(reader="ACR122").poll()


async def test_pcsc_sign_in_through_the_daemon(
    tmp_path: Path, pcscd: int, mosquitto: Mosquitto, recorder_factory: Any
) -> None:
    roster = tmp_path / "roster.csv"
    roster.write_text("uid,name\n04A1B2C3D4E5F6,Ada Lovelace\n")
    cfg = write_config(
        tmp_path / "roomd.yaml",
        {
            "site": "hq",
            "mqtt": {"url": mosquitto.url},
            "http": {"listen": f"127.0.0.1:{free_port()}"},
            "state_dir": str(tmp_path / "state"),
            "signins": {"publish_names": True},  # the explicit opt-in (STANDARD §5)
            "rooms": [
                {
                    "id": "r301",
                    "area_m2": 60,
                    "roster": str(roster),
                    "devices": [
                        {
                            "id": "pcsc",
                            "driver": "nfc-pcsc",
                            "reader": "Virtual PCD",
                            "poll": "100ms",
                        }
                    ],
                }
            ],
        },
    )
    rec = recorder_factory(mosquitto.port, topic="roomd/#")
    card = VirtualCard(pcscd)
    async with running(cfg) as daemon:
        await until(lambda: daemon.pollers[("r301", "pcsc")].online is True, 30, "reader")
        await card.tap("04A1B2C3D4E5F6")
        event = (
            await rec.wait_for(
                lambda m: m.topic == f"{BASE}/r301/events" and m.json()["type"] == "signin"
            )
        )[0].json()
        assert event["attendee"] == "Ada Lovelace" and event["reader"] == "pcsc"
        await card.remove()
