"""Home Assistant MQTT discovery: a config for every room and device the site has now, a
removal for every one published before that is gone; sent again when Home Assistant restarts."""

from __future__ import annotations

import asyncio
from typing import Any

from .sinks.homeassistant import DeviceInfo, PublishedTopics, discovery_configs
from .site import Poller, Site


class HomeAssistantDiscovery:
    def __init__(self, site: Site) -> None:
        self.site = site
        self.published = PublishedTopics(site.config.state_dir)
        ha = site.config.homeassistant
        self._again: asyncio.TimerHandle | None = None
        if ha.enabled:
            site.mqtt.extra_topics[f"{ha.prefix}/status"] = self.on_ha_status
            site.info_listeners.append(self._device_identified)

    def _device_identified(self, _poller: Poller) -> None:
        """A device said what it is: its HA device gets make, model and firmware. Devices
        answer their first polls together, so once a second at most."""
        if self._again is None:
            loop = asyncio.get_running_loop()
            self._again = loop.call_later(1.0, self._publish_again)

    def _publish_again(self) -> None:
        self._again = None
        self.publish()

    def publish(self) -> None:
        """Home Assistant discovery configs for what the config has; removals for the rest."""
        ha = self.site.config.homeassistant
        previous = self.published.load()
        current: dict[str, dict[str, Any]] = {}
        if ha.enabled:
            rooms = {r.id: r.config.name for r in self.site.config.rooms}
            devices = [
                DeviceInfo(
                    p.room.id,
                    p.room.config.name,
                    p.config.id,
                    p.config.name,
                    p.driver.kind,
                    p.driver.model_name,
                    tuple(p.driver.metrics),
                    dict(p.driver.info),
                    tuple(sorted({c.name for c in p.driver.command_specs()})),
                )
                for p in self.site.pollers.values()
            ]
            current = discovery_configs(
                ha.prefix,
                self.site.mqtt.base,
                self.site.config.site,
                rooms,
                devices,
                ha.login,
                self.site.mqtt.availability_topic,
                self.site.config.language,
            )
        for topic, payload in current.items():
            self.site.mqtt.publish_state(topic, payload)
        for topic in previous - current.keys():
            self.site.mqtt.unpublish(topic)
        if current.keys() != previous:
            self.published.save(set(current))

    def on_ha_status(self, payload: bytes) -> None:
        if payload.strip() == b"online":  # Home Assistant restarted: send the configs again
            self.publish()
