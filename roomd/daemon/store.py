"""Durable state in one SQLite file: active alerts and the MQTT outbox.

An alert transition and the messages announcing it are written in one transaction, so a crash
can neither lose a clear nor announce a raise that the restarted daemon does not know about.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .model import Alert, Transition


@dataclass(slots=True, frozen=True)
class OutboxMessage:
    seq: int
    topic: str
    payload: bytes
    retain: bool
    qos: int


Pending = tuple[str, bytes, bool, int]  # topic, payload, retain, qos


class Store:
    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / "state.db"
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (the failure we design for); a power cut
        # may lose the last transactions. FULL costs an fsync per alert transition.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS alerts (id TEXT PRIMARY KEY, body TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS outbox (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                topic TEXT NOT NULL, payload BLOB NOT NULL,
                retain INTEGER NOT NULL, qos INTEGER NOT NULL);
            """
        )
        self._depth = self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def active_alerts(self) -> list[Alert]:
        rows = self.db.execute("SELECT body FROM alerts ORDER BY rowid").fetchall()
        return [Alert.from_json(json.loads(body)) for (body,) in rows]

    def commit(self, transitions: Iterable[Transition], messages: Iterable[Pending]) -> None:
        msgs = list(messages)
        with self.db:  # BEGIN ... COMMIT
            self.db.execute("BEGIN")
            for t in transitions:
                if t.kind == "cleared":
                    self.db.execute("DELETE FROM alerts WHERE id = ?", (t.alert.id,))
                else:
                    self.db.execute(
                        "INSERT OR REPLACE INTO alerts (id, body) VALUES (?, ?)",
                        (t.alert.id, json.dumps(t.alert.to_json())),
                    )
            self.db.executemany(
                "INSERT INTO outbox (topic, payload, retain, qos) VALUES (?, ?, ?, ?)",
                [(topic, payload, int(retain), qos) for topic, payload, retain, qos in msgs],
            )
        self._depth += len(msgs)

    def outbox_after(self, seq: int, limit: int = 200) -> list[OutboxMessage]:
        rows = self.db.execute(
            "SELECT seq, topic, payload, retain, qos FROM outbox"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        ).fetchall()
        return [OutboxMessage(s, t, bytes(p), bool(r), q) for s, t, p, r, q in rows]

    def outbox_done(self, upto_seq: int) -> None:
        """Forget every message up to and including `upto_seq` (the broker has them)."""
        cur = self.db.execute("DELETE FROM outbox WHERE seq <= ?", (upto_seq,))
        self._depth = max(0, self._depth - cur.rowcount)

    @property
    def outbox_depth(self) -> int:
        return self._depth

    def close(self) -> None:
        self.db.close()
