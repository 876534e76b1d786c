"""Deployment history in SQLite under DEPLOY_STATE_DIR: one record per signed request that reached validation.

Embedded (no server to run), WAL mode, and versioned with `PRAGMA user_version`: a newer release adds a
migration to MIGRATIONS and older databases are brought up to date when the service starts.
"""

from __future__ import annotations

import builtins
import json
import math
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypedDict, Unpack, cast

# Migration N brings a database from user_version N to N + 1. Never edit one that has shipped.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE deployments (
        id TEXT PRIMARY KEY,
        action TEXT NOT NULL,
        service TEXT,
        image TEXT,
        outcome TEXT NOT NULL,
        old_image TEXT,
        old_image_id TEXT,
        new_image TEXT,
        new_image_id TEXT,
        repository TEXT,
        commit_id TEXT,
        message TEXT,
        source TEXT,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        current_step TEXT,
        steps TEXT NOT NULL DEFAULT '[]',
        error TEXT,
        logs TEXT,
        http_status INTEGER,
        running_image TEXT,
        running_image_id TEXT,
        running_state TEXT
    );
    CREATE INDEX deployments_by_start ON deployments (started_at DESC, id DESC);
    CREATE INDEX deployments_by_service ON deployments (service, started_at DESC);
    CREATE INDEX deployments_by_outcome ON deployments (outcome, started_at DESC);
    """,
    # 2: interrupted records whose service is still to be inspected (a deploy stopped by a shutdown).
    """
    ALTER TABLE deployments ADD COLUMN to_inspect INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: the signed requests already received (replay protection), until their timestamp leaves the window.
    """
    CREATE TABLE received_requests (digest TEXT PRIMARY KEY, expires_at REAL NOT NULL);
    CREATE INDEX received_requests_by_expiry ON received_requests (expires_at);
    """,
    # 4: the environment (inventory group) deployed to, and the outcome on each of its hosts.
    """
    ALTER TABLE deployments ADD COLUMN environment TEXT;
    ALTER TABLE deployments ADD COLUMN hosts TEXT NOT NULL DEFAULT '{}';
    CREATE INDEX deployments_by_environment ON deployments (environment, started_at DESC);
    """,
    # 5: what crash recovery found and did, in fields of their own beside the deploy's error.
    """
    ALTER TABLE deployments ADD COLUMN recovery TEXT;
    ALTER TABLE deployments ADD COLUMN recovery_action TEXT;
    ALTER TABLE deployments ADD COLUMN recovered_by TEXT;
    """,
    # 6: reconciliation while the API runs (to_inspect = 1 now means "awaiting reconciliation"): the hosts a run was
    # for, when the record began to wait, how many checks it had, when it ended; what a running deploy waits for.
    """
    ALTER TABLE deployments ADD COLUMN targets TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE deployments ADD COLUMN awaiting_since TEXT;
    ALTER TABLE deployments ADD COLUMN reconcile_checks INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE deployments ADD COLUMN reconciled_at TEXT;
    ALTER TABLE deployments ADD COLUMN reconciliation TEXT;
    ALTER TABLE deployments ADD COLUMN waiting TEXT;
    ALTER TABLE deployments ADD COLUMN waiting_since TEXT;
    CREATE INDEX deployments_awaiting ON deployments (to_inspect) WHERE to_inspect = 1;
    """,
    # 6 -> 7: how the service's container was replaced (recreate, blue_green); null for older records and refusals.
    """
    ALTER TABLE deployments ADD COLUMN strategy TEXT;
    """,
    # 7 -> 8: what started a deployment (reconciliation's own are those from the source `recovery`); for a planned
    # deploy, when it is to run and the names of the secret sets that signed it (checked again when it runs).
    """
    ALTER TABLE deployments ADD COLUMN triggered_by TEXT NOT NULL DEFAULT 'webhook';
    UPDATE deployments SET triggered_by = 'recovery' WHERE source = 'recovery';
    ALTER TABLE deployments ADD COLUMN planned_at TEXT;
    ALTER TABLE deployments ADD COLUMN signers TEXT NOT NULL DEFAULT '[]';
    CREATE INDEX deployments_planned ON deployments (planned_at) WHERE outcome = 'scheduled';
    """,
    # 8 -> 9: the recurring schedules (deploy_services.<name>.schedule) as last seen, and their latest tick recorded;
    # one record per service and tick, whoever creates it.
    """
    CREATE TABLE schedules (
        service TEXT PRIMARY KEY,
        cron TEXT NOT NULL,
        timezone TEXT NOT NULL,
        last_tick TEXT NOT NULL
    );
    CREATE UNIQUE INDEX deployments_schedule_ticks ON deployments (service, planned_at) WHERE triggered_by = 'schedule';
    """,
    # 9 -> 10: a schedule is a cron expression or a registry watch (api/schedules.py, Schedule.rule); a watch's
    # deploys are ticks too, one per service and tick.
    """
    ALTER TABLE schedules RENAME COLUMN cron TO rule;
    DROP INDEX deployments_schedule_ticks;
    CREATE UNIQUE INDEX deployments_schedule_ticks ON deployments (service, planned_at)
        WHERE triggered_by IN ('schedule', 'watch');
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

# Record keys and their columns, where the two differ.
_COLUMNS = {"commit": "commit_id", "trigger": "triggered_by"}
_FIELDS = (
    "id",
    "action",
    "service",
    "image",
    "outcome",
    "trigger",
    "planned_at",
    "environment",
    "strategy",
    "hosts",
    "old_image",
    "old_image_id",
    "new_image",
    "new_image_id",
    "repository",
    "commit",
    "message",
    "source",
    "started_at",
    "finished_at",
    "current_step",
    "steps",
    "error",
    "logs",
    "http_status",
    "running_image",
    "running_image_id",
    "running_state",
    "recovery",
    "recovery_action",
    "recovered_by",
    "reconciled_at",
    "reconciliation",
    "waiting",
    "to_inspect",
    "targets",
    "awaiting_since",
    "reconcile_checks",
    "waiting_since",
    "signers",
)
# Kept for the service's own use, not part of a record's public form (which says `awaiting_reconciliation` instead of
# to_inspect, and in `waiting` how long it has waited).
_INTERNAL = ("to_inspect", "targets", "awaiting_since", "reconcile_checks", "waiting_since", "signers")
_JSON_FIELDS = {"steps": "[]", "hosts": "{}", "targets": "[]", "signers": "[]"}


class RecordFields(TypedDict, total=False):
    """The fields of a deployment record, as create() and update() take them (api/models.py, DeploymentRecord, is its
    public form)."""

    id: str
    action: str
    service: str | None
    image: str | None
    outcome: str
    trigger: str
    planned_at: str | None
    environment: str | None
    strategy: str | None
    hosts: dict[str, dict[str, Any]]
    old_image: str | None
    old_image_id: str | None
    new_image: str | None
    new_image_id: str | None
    repository: str | None
    commit: str | None
    message: str | None
    source: str | None
    started_at: str
    finished_at: str | None
    current_step: str | None
    steps: builtins.list[dict[str, Any]]
    error: str | None
    logs: str | None
    http_status: int | None
    running_image: str | None
    running_image_id: str | None
    running_state: str | None
    recovery: str | None
    recovery_action: str | None
    recovered_by: str | None
    reconciled_at: str | None
    reconciliation: str | None
    waiting: str | None
    to_inspect: int
    targets: builtins.list[str]
    awaiting_since: str | None
    reconcile_checks: int
    waiting_since: str | None
    signers: builtins.list[str]


class Record(RecordFields, total=False):
    """A record as get(), list() and unfinished() return it. `awaiting_reconciliation` is to_inspect as a truth value;
    `waiting` adds how many seconds the deploy has waited so far (since waiting_since)."""

    duration_seconds: float | None
    awaiting_reconciliation: bool


@dataclass(frozen=True)
class Retention:
    """How much history is kept: records younger than `days`, at most `records` of them (None: no bound). Records
    of deploys still running, or to inspect after a crash, are always kept."""

    days: int | None = None
    records: int | None = None


# Pruning runs at most this often, when a record is written.
PRUNE_INTERVAL_SECONDS = 60


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _column(field: str) -> str:
    return _COLUMNS.get(field, field)


class History:
    """The deployment records. Thread-safe: one connection, one lock; every write is one short transaction."""

    def __init__(self, path: Path, retention: Retention = Retention()):
        self.path = path
        self.retention = retention
        self._pruned_at = -math.inf
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        path.chmod(0o600)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._migrate()

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path} has schema version {version}, newer than this release knows ({SCHEMA_VERSION})"
            )
        for number in range(version, SCHEMA_VERSION):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {number + 1}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create(self, **record: Unpack[RecordFields]) -> None:
        record.setdefault("started_at", now())
        record.setdefault("steps", [])
        fields = [field for field in _FIELDS if field in record]
        values = [_encode(field, record[field]) for field in fields]  # type: ignore[literal-required]
        columns = ", ".join(_column(field) for field in fields)
        with self._lock:
            self._db.execute(
                f"INSERT INTO deployments ({columns}) VALUES ({', '.join('?' * len(fields))})",
                values,
            )
        if time.monotonic() - self._pruned_at >= PRUNE_INTERVAL_SECONDS:
            self.prune()

    def prune(self) -> int:
        """Delete the finished records beyond the retention; how many went."""
        self._pruned_at = time.monotonic()
        conditions: builtins.list[str] = []
        parameters: builtins.list[str | int] = []
        if self.retention.days is not None:
            cutoff = datetime.now(UTC) - timedelta(days=self.retention.days)
            conditions.append("started_at < ?")
            parameters.append(cutoff.isoformat(timespec="milliseconds").replace("+00:00", "Z"))
        if self.retention.records is not None:
            conditions.append(
                "rowid NOT IN (SELECT rowid FROM deployments ORDER BY started_at DESC, rowid DESC LIMIT ?)"
            )
            parameters.append(self.retention.records)
        if not conditions:
            return 0
        finished = "outcome NOT IN ('running', 'scheduled') AND to_inspect = 0"
        with self._lock:
            return self._db.execute(
                f"DELETE FROM deployments WHERE {finished} AND ({' OR '.join(conditions)})", parameters
            ).rowcount

    def update(self, deployment_id: str, **changes: Unpack[RecordFields]) -> None:
        if not changes:
            return
        assignments, values = _assignments(changes)
        with self._lock:
            self._db.execute(f"UPDATE deployments SET {assignments} WHERE id = ?", [*values, deployment_id])

    def get(self, deployment_id: str, *, internal: bool = False) -> Record | None:
        """One record; with `internal`, its internal fields too (those the service keeps for itself)."""
        with self._lock:
            row = self._db.execute("SELECT * FROM deployments WHERE id = ?", (deployment_id,)).fetchone()
        return _decode(row, internal) if row else None

    def list(
        self,
        *,
        service: str | None = None,
        outcome: str | None = None,
        environment: str | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> tuple[builtins.list[Record], int]:
        """Records newest first, and how many match in all."""
        conditions: builtins.list[str] = []
        parameters: builtins.list[str] = []
        if environment is not None:
            conditions.append("environment = ?")
            parameters.append(environment)
        if service is not None:
            conditions.append("service = ?")
            parameters.append(service)
        if outcome is not None:
            conditions.append("outcome = ?")
            parameters.append(outcome)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        with self._lock:
            total = self._db.execute(f"SELECT count(*) FROM deployments {where}", parameters).fetchone()[0]
            rows = self._db.execute(
                f"SELECT * FROM deployments {where} ORDER BY started_at DESC, rowid DESC LIMIT ? OFFSET ?",
                [*parameters, limit, offset],
            ).fetchall()
        return [_decode(row) for row in rows], total

    def unfinished(self) -> builtins.list[Record]:
        """Records a stopped process left behind: still running, or interrupted and not yet inspected."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM deployments WHERE outcome = 'running' OR to_inspect = 1 ORDER BY started_at"
            ).fetchall()
        return [_decode(row, internal=True) for row in rows]

    def scheduled(self) -> builtins.list[Record]:
        """The planned deploys waiting for their time, earliest first, with their internal fields."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM deployments WHERE outcome = 'scheduled' ORDER BY planned_at, rowid"
            ).fetchall()
        return [_decode(row, internal=True) for row in rows]

    def scheduled_by_service(self) -> dict[str, int]:
        """How many planned deploys of each service wait for their time."""
        with self._lock:
            rows = self._db.execute(
                "SELECT service, count(*) FROM deployments WHERE outcome = 'scheduled' GROUP BY service"
            ).fetchall()
        return {service: count for service, count in rows}

    def leave_scheduled(self, deployment_id: str, **changes: Unpack[RecordFields]) -> bool:
        """Apply `changes` (a new outcome) to a record only while it is `scheduled`; whether it was. The one way a
        planned deploy leaves that state, so that of a start, a cancel and a refusal at the same moment only one
        wins: a planned deploy runs at most once, even across a crash (a claimed record that never finished stays
        `running`, and recovery marks it interrupted at the next start)."""
        assignments, values = _assignments(changes)
        with self._lock:
            return (
                self._db.execute(
                    f"UPDATE deployments SET {assignments} WHERE id = ? AND outcome = 'scheduled'",
                    [*values, deployment_id],
                ).rowcount
                == 1
            )

    def schedule_state(self, service: str) -> tuple[str, str, str] | None:
        """A recurring schedule as last seen: its rule (Schedule.rule), its zone, and its latest tick recorded
        (UTC)."""
        with self._lock:
            row = self._db.execute(
                "SELECT rule, timezone, last_tick FROM schedules WHERE service = ?", (service,)
            ).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def remember_schedule(self, service: str, rule: str, timezone: str, last_tick: str) -> None:
        """A schedule seen for the first time, or changed: its ticks up to `last_tick` do not count."""
        with self._lock:
            self._db.execute(
                "INSERT INTO schedules (service, rule, timezone, last_tick) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (service) DO UPDATE SET rule = excluded.rule, timezone = excluded.timezone, "
                "last_tick = excluded.last_tick",
                (service, rule, timezone, last_tick),
            )

    def pass_tick(self, service: str, tick: str) -> bool:
        """Make `tick` the schedule's latest without a record (a tick skipped, or a watch's look at the registry);
        False when it was already (two passes, a restart)."""
        with self._lock:
            return (
                self._db.execute(
                    "UPDATE schedules SET last_tick = ? WHERE service = ? AND last_tick < ?", (tick, service, tick)
                ).rowcount
                == 1
            )

    def last_watch_deploy(self, service: str) -> Record | None:
        """The latest deploy of `service` a registry watch started that has finished, if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM deployments WHERE service = ? AND triggered_by = 'watch'"
                " AND outcome NOT IN ('scheduled', 'running') ORDER BY started_at DESC, rowid DESC LIMIT 1",
                (service,),
            ).fetchone()
        return None if row is None else _decode(row)

    def record_tick(self, **record: Unpack[RecordFields]) -> bool:
        """Create the planned deploy of a schedule's tick (`planned_at`) and make it the schedule's latest, in one
        transaction; False when the tick has its record already (two passes, a restart), which is left alone."""
        record.setdefault("started_at", now())
        fields = [field for field in _FIELDS if field in record]
        values = [_encode(field, record[field]) for field in fields]  # type: ignore[literal-required]
        columns = ", ".join(_column(field) for field in fields)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                created = self._db.execute(
                    f"INSERT OR IGNORE INTO deployments ({columns}) VALUES ({', '.join('?' * len(fields))})", values
                ).rowcount
                self._db.execute(
                    "UPDATE schedules SET last_tick = ? WHERE service = ? AND last_tick < ?",
                    (record.get("planned_at"), record.get("service"), record.get("planned_at")),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return created == 1

    def awaiting(self) -> builtins.list[Record]:
        """The records awaiting reconciliation, oldest first, with their internal fields."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM deployments WHERE to_inspect = 1 ORDER BY started_at, rowid"
            ).fetchall()
        return [_decode(row, internal=True) for row in rows]

    def started_after(self, service: str, started_at: str) -> builtins.list[Record]:
        """The records of `service` started after `started_at` that ran (not refused), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM deployments WHERE service = ? AND started_at > ?"
                " AND outcome NOT IN ('rejected', 'scheduled', 'cancelled', 'missed')"
                " ORDER BY started_at, rowid",
                (service, started_at),
            ).fetchall()
        return [_decode(row, internal=True) for row in rows]

    def awaiting_by_service(self) -> dict[str, int]:
        """How many records of each service await reconciliation."""
        with self._lock:
            rows = self._db.execute(
                "SELECT service, count(*) FROM deployments WHERE to_inspect = 1 GROUP BY service"
            ).fetchall()
        return {service: count for service, count in rows}

    def first_receipt(self, digest: str, expires_at: float | None, now: float) -> bool:
        """Remember a signed request until `expires_at` (None: for good); False when it was received before (a
        replay). `now` is the reading of the clock the request's window was checked with, so that a record is never
        dropped while a request carrying it could still pass the window."""
        expires_at = math.inf if expires_at is None else expires_at
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM received_requests WHERE expires_at < ?", (now,))
                inserted = self._db.execute(
                    "INSERT OR IGNORE INTO received_requests (digest, expires_at) VALUES (?, ?)", (digest, expires_at)
                ).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return inserted == 1

    def running_by_service(self) -> dict[str, int]:
        """How many deploys and rollbacks of each service are running."""
        with self._lock:
            rows = self._db.execute(
                "SELECT service, count(*) FROM deployments WHERE outcome = 'running' GROUP BY service"
            ).fetchall()
        return {service: count for service, count in rows}

    def last_successes(self) -> dict[str, float]:
        """When each service's last successful deploy finished, in Unix seconds."""
        with self._lock:
            rows = self._db.execute(
                "SELECT service, max(finished_at) FROM deployments"
                " WHERE outcome = 'succeeded' AND action = 'deploy' GROUP BY service"
            ).fetchall()
        return {service: datetime.fromisoformat(finished).timestamp() for service, finished in rows}


def _assignments(changes: RecordFields) -> tuple[str, builtins.list[Any]]:
    """The SET clause of an update and its values; ValueError for a field no record has."""
    unknown = set(changes) - set(_FIELDS)
    if unknown:
        raise ValueError(f"unknown record fields: {sorted(unknown)}")
    assignments = ", ".join(f"{_column(field)} = ?" for field in changes)
    return assignments, [_encode(field, value) for field, value in changes.items()]


def _encode(field: str, value: Any) -> Any:
    if field in ("steps", "targets", "signers"):
        return json.dumps(list(value))
    if field == "hosts":
        return json.dumps(dict(value))
    return value


def _decode(row: sqlite3.Row, internal: bool = False) -> Record:
    record = cast(Record, {field: row[_column(field)] for field in _FIELDS if internal or field not in _INTERNAL})
    for field, empty in _JSON_FIELDS.items():
        if field in record:
            record[field] = json.loads(row[field] or empty)  # type: ignore[literal-required]
    record["duration_seconds"] = _duration(record["started_at"], record["finished_at"])
    record["awaiting_reconciliation"] = bool(row["to_inspect"])
    if not internal and row["waiting"] and row["waiting_since"]:
        record["waiting"] = f"{row['waiting']}, {waited_seconds(row['waiting_since']):.0f} s"
    return record


def waited_seconds(since: str) -> float:
    """Seconds from `since` (a time as now() writes it) until now."""
    return max(0.0, (datetime.now(UTC) - datetime.fromisoformat(since)).total_seconds())


def _duration(started: str | None, finished: str | None) -> float | None:
    if not started or not finished:
        return None
    parse = datetime.fromisoformat
    return round((parse(finished) - parse(started)).total_seconds(), 3)
