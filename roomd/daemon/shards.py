"""Past one process and one machine: instances that own disjoint sets of rooms.

A site's rooms are split into n shards: a room pinned in the config's `shard_map` goes to its
shard; every other room by a stable hash of its id (BLAKE2b: the same on every machine and
Python; CRC-32's low bits split r0001, r0002... badly). `roomd run --shard i/n` polls shard i
only, with its own instance id, state folder (`state_dir/shard-i-of-n`: its own store and
outbox), MQTT client and availability topic; `roomd run --workers n` runs the n shards as
worker processes of one service (workers.py). A room is never polled by two instances that
agree on n; instances that disagree are caught by the instance announcements
(`instance_conflict`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping

from .config import SiteConfig

_SHARD = re.compile(r"^(\d+)/(\d+)$")


class ShardError(ValueError):
    pass


def parse_shard(text: str) -> tuple[int, int]:
    """`i/n`, 1 ≤ i ≤ n ≤ 1024."""
    m = _SHARD.match(text.strip())
    if not m:
        raise ShardError(f"--shard {text!r}: expected i/n, e.g. 1/4")
    i, n = int(m.group(1)), int(m.group(2))
    if not 1 <= i <= n <= 1024:
        raise ShardError(f"--shard {text}: need 1 ≤ i ≤ n ≤ 1024")
    return i, n


def shard_of(room_id: str, n: int, shard_map: Mapping[str, int]) -> int:
    pinned = shard_map.get(room_id)
    if pinned is not None:
        return pinned
    digest = hashlib.blake2b(room_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n + 1


def for_shard(cfg: SiteConfig, i: int, n: int) -> SiteConfig:
    """The config as shard i of n sees it: its rooms only, its own state folder."""
    for room_id, pinned in cfg.shard_map.items():
        if not 1 <= pinned <= n:
            raise ShardError(f"shard_map: room {room_id} is pinned to shard {pinned} of {n}")
    if n == 1:
        return dataclasses.replace(cfg, shard=None)
    rooms = tuple(r for r in cfg.rooms if shard_of(r.id, n, cfg.shard_map) == i)
    console = cfg.console
    if console.enabled and console.port:
        # One console per shard, showing its rooms: shard i on the configured port + i − 1.
        listen = f"{console.listen.rpartition(':')[0]}:{console.port + i - 1}"
        console = console.model_copy(update={"listen": listen})
    return dataclasses.replace(
        cfg,
        rooms=rooms,
        state_dir=cfg.state_dir / f"shard-{i}-of-{n}",
        shard=(i, n),
        console=console,
    )


def shard_label(shard: tuple[int, int] | None) -> str | None:
    return None if shard is None else f"{shard[0]}/{shard[1]}"
