"""Dashboards and rules proven against a real Prometheus scraping a running roomd."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from roomd.daemon.config import load_config
from roomd.daemon.supervisor import Daemon
from roomd.simulators.site import SimulatedSite
from tests.conftest import Mosquitto, free_port

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "dashboards" / "grafana").glob("*.json"))
RULES = ROOT / "dashboards" / "prometheus" / "rules.yml"
# Contract §4 names that Prometheus's naming lint dislikes; the contract forbids renaming.
CONTRACT_NAMES = {"roomd_lamp_hours", "roomd_filter_hours", "roomd_signin_latency_s"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: ./scripts/test installs Debian's prometheus")
    return path


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def panel_queries() -> list[tuple[str, str, str]]:
    out = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                out.append((path.stem, panel["title"], target["expr"]))
    return out


def test_dashboards_are_valid_grafana_models() -> None:
    assert {p.stem for p in DASHBOARDS} == {"fleet", "room", "maintenance"}
    uids = set()
    for path in DASHBOARDS:
        model = json.loads(path.read_text())
        assert model["title"] and model["uid"] not in uids
        uids.add(model["uid"])
        names = [v["name"] for v in model["templating"]["list"]]
        assert names[0] == "datasource"  # the data source is a variable, never a fixed uid
        ids = [p["id"] for p in model["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in model["panels"]:
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert set(panel["gridPos"]) == {"x", "y", "w", "h"} and panel["targets"]
        text = path.read_text()
        assert '"uid": "prometheus"' not in text


def test_rules_pass_promtool() -> None:
    out = subprocess.run(
        [tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 9 rules found" in out.stdout


async def test_every_panel_query_returns_data(tmp_path: Path, mosquitto: Mosquitto) -> None:
    site = await SimulatedSite(2, "normal", tap_period=0.3).start()
    cfg_path = tmp_path / "roomd.yaml"
    http_port = free_port()
    site.write_config(
        cfg_path,
        mqtt_url=mosquitto.url,
        http_listen=f"127.0.0.1:{http_port}",
        state_dir=str(tmp_path / "state"),
        poll="1s",
    )
    # A room's own limit (an override) is what its panels draw.
    raw = yaml.safe_load(cfg_path.read_text())
    raw["rooms"][1].setdefault("thresholds", {})["co2_ppm"] = {"max": 800}
    cfg_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    daemon = Daemon(load_config(cfg_path))
    task = asyncio.create_task(daemon.run())
    prom_port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {
                        "job_name": "roomd",
                        "static_configs": [{"targets": [f"127.0.0.1:{http_port}"]}],
                    }
                ],
            }
        )
    )
    prom = subprocess.Popen(
        [
            tool("prometheus"),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{prom_port}/api/v1/query?query="

    async def query(expr: str) -> dict[str, Any]:
        return await asyncio.to_thread(get, api + urllib.parse.quote(expr))

    try:
        await asyncio.wait_for(daemon.ready.wait(), 10)
        # Data: every device polled, sign-ins made, several scrapes and rule evaluations.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                # Every room has had sign-ins (the tap scripts are random).
                r = await query("count(roomd_attendees >= 1)")
                if r["data"]["result"] and float(r["data"]["result"][0]["value"][1]) >= 2:
                    break
            except OSError:
                pass
            await asyncio.sleep(0.5)
        report = await daemon.check_room("r301", 1)  # the check panels need one check
        assert report["passed"], report["failed"]
        await asyncio.sleep(4)
        empty, failed = [], []
        for board, title, expr in panel_queries():
            expr = (
                expr.replace("$site", "hq")
                .replace("$room", "r301")
                .replace("$__rate_interval", "1m")
            )
            r = await query(expr)
            if r["status"] != "success":
                failed.append((board, title, r))
            elif not r["data"]["result"]:
                empty.append((board, title, expr))
        assert not failed, failed
        assert not empty, empty
        limits = await query('roomd_limit{metric="co2_ppm", bound="max"}')
        by_room = {r["metric"]["room"]: r["value"][1] for r in limits["data"]["result"]}
        assert by_room == {"r301": "1000", "r302": "800"}
        states = await query("roomd_room_state")
        assert {r["metric"]["room"] for r in states["data"]["result"]} == {"r301", "r302"}
        # /metrics passes promtool's lint, but for the contract's own names.
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics").read()
        )
        lint = subprocess.run(
            [tool("promtool"), "check", "metrics"], input=body, capture_output=True, timeout=60
        )
        problems = [
            line
            for line in (lint.stdout + lint.stderr).decode().splitlines()
            if line.strip() and line.split()[0] not in CONTRACT_NAMES
        ]
        assert not problems, problems
    finally:
        prom.terminate()
        prom.wait(10)
        daemon.stop()
        await asyncio.wait_for(task, 10)
        await site.stop()
