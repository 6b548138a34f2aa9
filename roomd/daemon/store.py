"""Durable state in one SQLite file: active alerts and the MQTT outbox.

An alert transition and the messages announcing it are written in one transaction, so a crash
can neither lose a clear nor announce a raise that the restarted daemon does not know about.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .model import Alert, Transition
from .private import private_dir, private_file


@dataclass(slots=True, frozen=True)
class OutboxMessage:
    seq: int
    topic: str
    payload: bytes
    retain: bool
    qos: int


Pending = tuple[str, bytes, bool, int]  # topic, payload, retain, qos


@dataclass(slots=True, frozen=True)
class Incident:
    """One alert's life, for the incidents list and `time to acknowledge / clear`."""

    alert: str
    since: str
    room: str
    device: str
    metric: str
    severity: str
    message: str
    raised: float
    acked: float | None
    acked_by: str | None
    escalations: int
    cleared: float | None
    reason: str | None

    @property
    def to_ack(self) -> float | None:
        return None if self.acked is None else self.acked - self.raised

    @property
    def to_clear(self) -> float | None:
        return None if self.cleared is None else self.cleared - self.raised


@dataclass(slots=True, frozen=True)
class Notification:
    """A message decided for a person: which alert's life, route, tier, kind, target."""

    alert: str
    since: str
    route: str
    tier: int
    kind: str  # raised | escalated | repeat | cleared | digest
    target: str
    title: str
    body: str
    at: float


@dataclass(slots=True, frozen=True)
class QueuedNotification:
    id: int
    alert: str
    target: str
    title: str
    body: str
    attempts: int
    created: float
    kind: str


def epoch(ts: str) -> float:
    """An ISO time of ours (`2026-11-30T16:18:16.123Z`) → epoch seconds."""
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


@dataclass(slots=True, frozen=True)
class SigninRow:
    meeting: str
    room: str
    reader: str
    card: str  # HMAC of the UID, never the UID
    attendee: str | None
    ts: float
    latency: float


@dataclass(slots=True)
class UsageRow:
    """One device's use during one meeting (STANDARD §4: every use is recorded)."""

    meeting: str
    room: str
    device: str
    driver: str
    start: float
    end: float
    online_s: float = 0.0  # answered its polls
    in_use_s: float = 0.0  # projector on, mixer main open, reader reading...
    alerts: int = 0
    anomalies: list[str] = field(default_factory=list)


class Store:
    def __init__(self, state_dir: Path) -> None:
        private_dir(state_dir)
        # SQLite gives the -wal and -shm files the database file's mode: 0600 for all three.
        self.path = private_file(state_dir / "state.db")
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
            -- Sign-in records: a card is stored only as a keyed hash (HMAC-SHA256 with the
            -- site secret). `attendee` is always NULL: names stay in the roster file and are
            -- joined only by `roomd signins export` (the column is kept for old databases).
            CREATE TABLE IF NOT EXISTS signins (
                id INTEGER PRIMARY KEY, meeting TEXT NOT NULL, room TEXT NOT NULL,
                reader TEXT NOT NULL, card TEXT NOT NULL, attendee TEXT,
                ts REAL NOT NULL, latency REAL NOT NULL, UNIQUE (meeting, card));
            CREATE INDEX IF NOT EXISTS signins_ts ON signins (ts);
            -- Pre-meeting check reports (STANDARD §2) and device usage records (§4).
            CREATE TABLE IF NOT EXISTS checks (
                id INTEGER PRIMARY KEY, room TEXT NOT NULL, meeting TEXT, level INTEGER NOT NULL,
                ts REAL NOT NULL, passed INTEGER NOT NULL, report TEXT NOT NULL);
            CREATE INDEX IF NOT EXISTS checks_room ON checks (room, ts);
            CREATE TABLE IF NOT EXISTS usage (
                id INTEGER PRIMARY KEY, meeting TEXT NOT NULL, room TEXT NOT NULL,
                device TEXT NOT NULL, driver TEXT NOT NULL, start REAL NOT NULL, end REAL NOT NULL,
                online_s REAL NOT NULL, in_use_s REAL NOT NULL, alerts INTEGER NOT NULL,
                anomalies TEXT NOT NULL, UNIQUE (meeting, device));
            CREATE INDEX IF NOT EXISTS usage_start ON usage (start);
            -- What the meeting planner did per booking (checks, pre-warm, no-show, shutdown,
            -- failover): a restart must not do it again.
            -- Every alert's life (raise, acknowledgement, escalations, clear), written with its
            -- transitions: time to acknowledge and to clear (STANDARD §3: 1 and 5 minutes).
            CREATE TABLE IF NOT EXISTS incidents (
                alert TEXT NOT NULL, since TEXT NOT NULL, room TEXT NOT NULL,
                device TEXT NOT NULL, metric TEXT NOT NULL, severity TEXT NOT NULL,
                message TEXT NOT NULL, raised REAL NOT NULL, acked REAL, acked_by TEXT,
                escalations INTEGER NOT NULL DEFAULT 0, cleared REAL, reason TEXT,
                PRIMARY KEY (alert, since));
            CREATE INDEX IF NOT EXISTS incidents_raised ON incidents (raised);
            -- Notifications to people (Apprise targets): written when decided, sent by the
            -- deliverer, retried until sent; a restart neither repeats nor loses one.
            CREATE TABLE IF NOT EXISTS notifications (
                id INTEGER PRIMARY KEY, alert TEXT NOT NULL, since TEXT NOT NULL,
                route TEXT NOT NULL, tier INTEGER NOT NULL, kind TEXT NOT NULL,
                target TEXT NOT NULL, title TEXT NOT NULL, body TEXT NOT NULL,
                state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
                next_at REAL NOT NULL, created REAL NOT NULL, sent_at REAL, error TEXT,
                UNIQUE (alert, since, route, tier, kind, target));
            CREATE INDEX IF NOT EXISTS notifications_due ON notifications (state, next_at);
            CREATE TABLE IF NOT EXISTS meeting_actions (
                booking TEXT NOT NULL, action TEXT NOT NULL, ts REAL NOT NULL,
                PRIMARY KEY (booking, action));
            """
        )
        # Databases written before names were kept out of the store: scrub them once.
        self.db.execute("UPDATE signins SET attendee = NULL WHERE attendee IS NOT NULL")
        self._depth = self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def active_alerts(self) -> list[Alert]:
        rows = self.db.execute("SELECT body FROM alerts ORDER BY rowid").fetchall()
        return [Alert.from_json(json.loads(body)) for (body,) in rows]

    def commit(self, transitions: Iterable[Transition], messages: Iterable[Pending]) -> None:
        msgs = list(messages)
        with self.db:  # BEGIN ... COMMIT
            self.db.execute("BEGIN")
            for t in transitions:
                self._incident(t)
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

    def _incident(self, t: Transition) -> None:
        a, key = t.alert, (t.alert.id, t.alert.since)
        at = epoch(a.ts)
        if t.kind == "raised":
            self.db.execute(
                "INSERT OR IGNORE INTO incidents (alert, since, room, device, metric, severity,"
                " message, raised) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (*key, a.room, a.device, a.metric, a.severity, a.message, epoch(a.since)),
            )
        elif t.kind == "acknowledged":
            self.db.execute(
                "UPDATE incidents SET acked = ?, acked_by = ? WHERE alert = ? AND since = ?"
                " AND acked IS NULL",
                (at, str(a.extra.get("acknowledged_by", "")), *key),
            )
        elif t.kind == "escalated":
            self.db.execute(
                "UPDATE incidents SET escalations = ? WHERE alert = ? AND since = ?",
                (int(a.extra.get("escalations", 0)), *key),
            )
        elif t.kind == "cleared":
            self.db.execute(
                "UPDATE incidents SET cleared = ?, reason = ? WHERE alert = ? AND since = ?",
                (at, t.reason, *key),
            )

    def incidents(self, since: float = 0.0, limit: int = 1000) -> list[Incident]:
        """Alerts raised since `since` (epoch seconds), newest first."""
        rows = self.db.execute(
            "SELECT alert, since, room, device, metric, severity, message, raised, acked,"
            " acked_by, escalations, cleared, reason FROM incidents WHERE raised >= ?"
            " ORDER BY raised DESC, alert LIMIT ?",
            (since, limit),
        ).fetchall()
        return [Incident(*r) for r in rows]

    def purge_incidents(self, before: float) -> int:
        cur = self.db.execute(
            "DELETE FROM incidents WHERE cleared IS NOT NULL AND cleared < ?", (before,)
        )
        return cur.rowcount

    # ---- notifications -------------------------------------------------------------------------

    def queue_notifications(self, rows: Iterable[Notification]) -> int:
        """Queue what was decided; one already decided (same alert, route, tier, kind and
        target) is not queued twice. The number queued."""
        cur = self.db.executemany(
            "INSERT OR IGNORE INTO notifications (alert, since, route, tier, kind, target,"
            " title, body, next_at, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (n.alert, n.since, n.route, n.tier, n.kind, n.target, n.title, n.body, n.at, n.at)
                for n in rows
            ],
        )
        return cur.rowcount

    def notified(self, alert: str, since: str) -> list[tuple[str, int, str, str]]:
        """(route, tier, kind, target) already decided for one alert's life."""
        rows = self.db.execute(
            "SELECT route, tier, kind, target FROM notifications WHERE alert = ? AND since = ?",
            (alert, since),
        )
        return [(r, t, k, g) for r, t, k, g in rows]

    def last_sent(self, alert: str, since: str, route: str) -> float | None:
        row = self.db.execute(
            "SELECT MAX(created) FROM notifications WHERE alert = ? AND since = ? AND route = ?",
            (alert, since, route),
        ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def due_notifications(self, now: float, limit: int = 100) -> list[QueuedNotification]:
        rows = self.db.execute(
            "SELECT id, alert, target, title, body, attempts, created, kind FROM notifications"
            " WHERE state = 'pending' AND next_at <= ? ORDER BY id LIMIT ?",
            (now, limit),
        ).fetchall()
        return [QueuedNotification(*r) for r in rows]

    def notification_sent(self, ids: Iterable[int], at: float) -> None:
        self.db.executemany(
            "UPDATE notifications SET state = 'sent', sent_at = ?, attempts = attempts + 1,"
            " error = NULL WHERE id = ?",
            [(at, i) for i in ids],
        )

    def notification_failed(self, ids: Iterable[int], next_at: float | None, error: str) -> None:
        """A failed attempt: tried again at `next_at`, or given up (None)."""
        self.db.executemany(
            "UPDATE notifications SET attempts = attempts + 1, error = ?, next_at = ?,"
            " state = ? WHERE id = ?",
            [(error[:500], next_at or 0.0, "pending" if next_at else "failed", i) for i in ids],
        )

    def postpone_notifications(self, ids: Iterable[int], next_at: float) -> None:
        self.db.executemany(
            "UPDATE notifications SET next_at = ? WHERE id = ?", [(next_at, i) for i in ids]
        )

    def notifications_pending(self) -> int:
        row = self.db.execute("SELECT COUNT(*) FROM notifications WHERE state = 'pending'")
        return int(row.fetchone()[0])

    def notifications_log(self, since: float = 0.0) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT alert, route, tier, kind, target, state, attempts, created, sent_at, error"
            " FROM notifications WHERE created >= ? ORDER BY id",
            (since,),
        )
        keys = (
            "alert",
            "route",
            "tier",
            "kind",
            "target",
            "state",
            "attempts",
            "created",
            "sent_at",
            "error",
        )
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def purge_notifications(self, before: float) -> None:
        self.db.execute(
            "DELETE FROM notifications WHERE state != 'pending' AND created < ?", (before,)
        )

    def record_signin(self, row: SigninRow, messages: Iterable[Pending]) -> bool:
        """Store a sign-in and its event in one transaction. False: this card had already
        signed in to this meeting (nothing stored, no message queued)."""
        msgs = list(messages)
        with self.db:
            self.db.execute("BEGIN")
            cur = self.db.execute(
                "INSERT OR IGNORE INTO signins (meeting, room, reader, card, attendee, ts, latency)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (row.meeting, row.room, row.reader, row.card, row.attendee, row.ts, row.latency),
            )
            if cur.rowcount == 0:
                return False
            self.db.executemany(
                "INSERT INTO outbox (topic, payload, retain, qos) VALUES (?, ?, ?, ?)",
                [(topic, payload, int(retain), qos) for topic, payload, retain, qos in msgs],
            )
        self._depth += len(msgs)
        return True

    def meeting_cards(self, meeting: str) -> set[str]:
        rows = self.db.execute("SELECT card FROM signins WHERE meeting = ?", (meeting,))
        return {card for (card,) in rows}

    def signins(self, meeting: str) -> list[SigninRow]:
        rows = self.db.execute(
            "SELECT meeting, room, reader, card, attendee, ts, latency FROM signins"
            " WHERE meeting = ? ORDER BY ts, id",
            (meeting,),
        ).fetchall()
        return [SigninRow(*r) for r in rows]

    def purge_signins(self, before: float) -> int:
        """Delete records older than `before` (epoch seconds): the retention rule."""
        cur = self.db.execute("DELETE FROM signins WHERE ts < ?", (before,))
        return cur.rowcount

    def actions_done(self) -> set[tuple[str, str]]:
        rows = self.db.execute("SELECT booking, action FROM meeting_actions")
        return {(booking, action) for booking, action in rows}

    def mark_done(self, actions: Iterable[tuple[str, str]], ts: float) -> None:
        self.db.executemany(
            "INSERT OR IGNORE INTO meeting_actions (booking, action, ts) VALUES (?, ?, ?)",
            [(booking, action, ts) for booking, action in actions],
        )

    def forget_actions(self, before: float) -> None:
        self.db.execute("DELETE FROM meeting_actions WHERE ts < ?", (before,))

    def last_checks(self) -> dict[str, dict[str, Any]]:
        """Each room's latest check report (re-published as `checks/latest` after a restart)."""
        rows = self.db.execute(
            "SELECT room, report FROM checks WHERE id IN (SELECT MAX(id) FROM checks GROUP BY room)"
        )
        return {room: json.loads(report) for room, report in rows}

    def record_check(self, report: dict[str, Any], messages: Iterable[Pending] = ()) -> None:
        msgs = list(messages)
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute(
                "INSERT INTO checks (room, meeting, level, ts, passed, report)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    report["room"],
                    (report.get("meeting") or {}).get("id"),
                    report["level"],
                    report["at"],
                    int(report["passed"]),
                    json.dumps(report),
                ),
            )
            self.db.executemany(
                "INSERT INTO outbox (topic, payload, retain, qos) VALUES (?, ?, ?, ?)",
                [(topic, payload, int(retain), qos) for topic, payload, retain, qos in msgs],
            )
        self._depth += len(msgs)

    def checks(self, room: str, since: float = 0.0) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT report FROM checks WHERE room = ? AND ts >= ? ORDER BY ts, id", (room, since)
        ).fetchall()
        return [json.loads(r) for (r,) in rows]

    def record_usage(self, rows: Iterable[UsageRow]) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT OR REPLACE INTO usage (meeting, room, device, driver, start, end,"
                " online_s, in_use_s, alerts, anomalies) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        r.meeting,
                        r.room,
                        r.device,
                        r.driver,
                        r.start,
                        r.end,
                        r.online_s,
                        r.in_use_s,
                        r.alerts,
                        json.dumps(r.anomalies),
                    )
                    for r in rows
                ],
            )

    def usage(self, since: float = 0.0) -> list[UsageRow]:
        rows = self.db.execute(
            "SELECT meeting, room, device, driver, start, end, online_s, in_use_s, alerts,"
            " anomalies FROM usage WHERE start >= ? ORDER BY start, room, device",
            (since,),
        ).fetchall()
        return [
            UsageRow(m, room, dev, drv, start, end, online, in_use, alerts, json.loads(anomalies))
            for m, room, dev, drv, start, end, online, in_use, alerts, anomalies in rows
        ]

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
