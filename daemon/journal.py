"""The SQLite journal: events, per-sink delivery state, quarantine; one writer with group commit.

Every write goes through one writer task that owns the write connection. Requests that arrive while
a commit is running wait in a queue and are committed together by the next transaction, so many
concurrent webhooks share one fsync (WAL, synchronous=FULL).
"""

from __future__ import annotations

import asyncio
import bisect
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
from loguru import logger

from daemon import journal_files
from daemon.events import WAMID_PREFIX, Event, Rejected, StoredEvent, has_control, mentions_phone
from daemon.records import ConversationState, conversation_id_for, iso, later_status

MAX_EVENTS_PER_COMMIT = 5000
GATHER_YIELDS = 2  # event-loop turns the writer gives concurrent requests to join a commit
COMMIT_DELAY_SECONDS = 0.0015
COMMIT_DELAY_EVENTS = 24  # a batch smaller than this, with company, waits COMMIT_DELAY_SECONDS
DELIVERY_STATES = ("pending", "delivered", "dead", "discarded")
# At open every page is read once (PRAGMA quick_check), within a budget so that a huge journal on a
# slow disk cannot hold the start past systemd's TimeoutStartSec (1M events, 850 MiB: 3-5 s).
QUICK_CHECK_SECONDS = 20.0
QUICK_CHECK_ERRORS = 10
QUICK_CHECK_STEPS = 10000  # SQLite VM steps between looks at the clock
SQLITE_INTERRUPT, SQLITE_CORRUPT, SQLITE_NOTADB = 9, 11, 26

# Each entry upgrades the schema by one version; never edit a shipped entry, append a new one: each is
# the text it shipped as (tests/integration/data/journal_schema.json holds them), the SQL once generated
# from constants included. v2 and v3 restate conversation rules of daemon.events and daemon.records in
# the events_conversation trigger, which folds each new event into its conversation's record.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE events (
        id                  INTEGER PRIMARY KEY AUTOINCREMENT,
        dedup_key           TEXT NOT NULL UNIQUE,
        received_at         TEXT NOT NULL,
        occurred_at         TEXT NOT NULL,
        title               TEXT NOT NULL,
        service             TEXT,
        bot_id              TEXT,
        contact_id          TEXT,
        phone               TEXT,
        contact_name        TEXT,
        message_id          TEXT,
        platform_message_id TEXT,
        direction           TEXT,
        message_type        TEXT,
        text                TEXT,
        raw                 TEXT NOT NULL
    );
    CREATE INDEX events_phone ON events (phone);
    CREATE TABLE deliveries (
        sink            TEXT NOT NULL,
        event_id        INTEGER NOT NULL REFERENCES events (id) ON DELETE CASCADE,
        state           TEXT NOT NULL DEFAULT 'pending'
                        CHECK (state IN ('pending', 'delivered', 'dead')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        last_error      TEXT,
        updated_at      REAL,
        PRIMARY KEY (sink, event_id)
    ) WITHOUT ROWID;
    CREATE INDEX deliveries_by_state ON deliveries (sink, state, event_id);
    CREATE TABLE quarantine (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        received_at TEXT NOT NULL,
        reason      TEXT NOT NULL,
        raw         TEXT NOT NULL
    );
    CREATE TABLE counters (
        name  TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    );
    INSERT INTO counters (name, value) VALUES ('accepted', 0), ('duplicates', 0), ('rejected', 0);
    -- The sinks enabled in the running config; rewritten at every start.
    CREATE TABLE sinks (
        name TEXT PRIMARY KEY
    );
    -- Fan-out inside the insert itself: no event can exist without a delivery row per enabled sink.
    CREATE TRIGGER events_fan_out AFTER INSERT ON events
    BEGIN
        INSERT INTO deliveries (sink, event_id, state, attempts, next_attempt_at, updated_at)
        SELECT name, NEW.id, 'pending', 0, 0, (julianday('now') - 2440587.5) * 86400.0 FROM sinks;
        UPDATE counters SET value = value + 1 WHERE name = 'accepted';
    END;
    CREATE TRIGGER quarantine_count AFTER INSERT ON quarantine
    BEGIN
        UPDATE counters SET value = value + 1 WHERE name = 'rejected';
    END;
    """,
    # v2: the journal's own record of each conversation, kept by the insert itself, so that a sink
    # (Airtable) can write the right MessageCount / StartedAt / LastActivity / Status while
    # PostgreSQL is down and after old events are purged. Every event is inserted once (dedup key),
    # so counting on insert is exact. Titles: daemon.events MESSAGE_TITLES, daemon.records STATUS_TITLES.
    """
    ALTER TABLE events ADD COLUMN conversation_id TEXT;
    CREATE INDEX events_conversation ON events (conversation_id);
    CREATE TABLE conversations (
        conversation_id  TEXT PRIMARY KEY,
        bot_id           TEXT,
        contact_id       TEXT,
        service          TEXT,
        phone            TEXT,
        name             TEXT,
        contact_at       TEXT NOT NULL,
        first_event_at   TEXT NOT NULL,
        last_event_at    TEXT NOT NULL,
        first_message_at TEXT,
        last_message_at  TEXT,
        message_count    INTEGER NOT NULL,
        status_title     TEXT,
        status_at        TEXT,
        status_key       TEXT,
        updated_at       TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TRIGGER events_conversation AFTER INSERT ON events WHEN NEW.conversation_id IS NOT NULL
    BEGIN
"""
    "        \n"  # as shipped: a line of eight spaces before the fold
    """INSERT INTO conversations (conversation_id, bot_id, contact_id, service, phone, name, contact_at,
    first_event_at, last_event_at, first_message_at, last_message_at, message_count,
    status_title, status_at, status_key, updated_at)
SELECT NEW.conversation_id, NEW.bot_id, NEW.contact_id, NEW.service, NEW.phone, NEW.contact_name,
    NEW.occurred_at, NEW.occurred_at, NEW.occurred_at,
    CASE WHEN NEW.title IN ('incoming_message', 'outgoing_message') THEN NEW.occurred_at END, CASE WHEN NEW.title IN ('incoming_message', 'outgoing_message') THEN NEW.occurred_at END,
    CASE WHEN NEW.title IN ('incoming_message', 'outgoing_message') THEN 1 ELSE 0 END,
    CASE WHEN NEW.title IN ('open_chat', 'unsubscribe', 'bot_block') THEN NEW.title END, CASE WHEN NEW.title IN ('open_chat', 'unsubscribe', 'bot_block') THEN NEW.occurred_at END,
    CASE WHEN NEW.title IN ('open_chat', 'unsubscribe', 'bot_block') THEN NEW.occurred_at || '|' || NEW.dedup_key END,
    strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
WHERE true
ON CONFLICT (conversation_id) DO UPDATE SET
    bot_id           = coalesce(bot_id, excluded.bot_id),
    contact_id       = coalesce(contact_id, excluded.contact_id),
    service          = coalesce(service, excluded.service),
    phone            = CASE WHEN excluded.contact_at >= contact_at THEN coalesce(excluded.phone, phone)
                            ELSE coalesce(phone, excluded.phone) END,
    name             = CASE WHEN excluded.contact_at >= contact_at THEN coalesce(excluded.name, name)
                            ELSE coalesce(name, excluded.name) END,
    contact_at       = max(contact_at, excluded.contact_at),
    first_event_at   = min(first_event_at, excluded.first_event_at),
    last_event_at    = max(last_event_at, excluded.last_event_at),
    first_message_at = coalesce(min(first_message_at, excluded.first_message_at),
                                first_message_at, excluded.first_message_at),
    last_message_at  = coalesce(max(last_message_at, excluded.last_message_at),
                                last_message_at, excluded.last_message_at),
    message_count    = message_count + excluded.message_count,
    status_title     = CASE WHEN excluded.status_key > coalesce(status_key, '')
                            THEN excluded.status_title ELSE status_title END,
    status_at        = CASE WHEN excluded.status_key > coalesce(status_key, '')
                            THEN excluded.status_at ELSE status_at END,
    status_key       = max(coalesce(status_key, ''), coalesce(excluded.status_key, '')),
    updated_at       = excluded.updated_at
;
    END;
    """,
    # v3: the record of erasures (`chatledger forget`): who, as a salted hash only; when; how much.
    # And the conversation record learns the bot API's events (daemon.events API_TITLES): an interaction
    # the bot posts counts as a message unless it names a SendPulse message (whose webhook counts it); a
    # conversation PATCH with a status acts as the status event that explains it (records.STATUS_AS_TITLE).
    """
    CREATE TABLE audit (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        at           TEXT NOT NULL,
        action       TEXT NOT NULL,
        subject_hash TEXT NOT NULL,
        report       TEXT NOT NULL
    );
    INSERT OR IGNORE INTO meta (key, value) VALUES ('audit_salt', lower(hex(randomblob(16))));
    DROP TRIGGER events_conversation;
    CREATE TRIGGER events_conversation AFTER INSERT ON events WHEN NEW.conversation_id IS NOT NULL
    BEGIN
"""
    "        \n"  # as shipped: a line of eight spaces before the fold
    """INSERT INTO conversations (conversation_id, bot_id, contact_id, service, phone, name, contact_at,
    first_event_at, last_event_at, first_message_at, last_message_at, message_count,
    status_title, status_at, status_key, updated_at)
SELECT NEW.conversation_id, NEW.bot_id, NEW.contact_id, NEW.service, NEW.phone, NEW.contact_name,
    NEW.occurred_at, NEW.occurred_at, NEW.occurred_at,
    CASE WHEN (NEW.title IN ('incoming_message', 'outgoing_message') OR (NEW.title = 'api_interaction' AND NEW.message_id IS NULL)) THEN NEW.occurred_at END, CASE WHEN (NEW.title IN ('incoming_message', 'outgoing_message') OR (NEW.title = 'api_interaction' AND NEW.message_id IS NULL)) THEN NEW.occurred_at END,
    CASE WHEN (NEW.title IN ('incoming_message', 'outgoing_message') OR (NEW.title = 'api_interaction' AND NEW.message_id IS NULL)) THEN 1 ELSE 0 END,
    CASE WHEN NEW.title IN ('open_chat', 'unsubscribe', 'bot_block') THEN NEW.title WHEN (NEW.title = 'api_conversation_update' AND json_extract(NEW.raw, '$.status') IN ('escalated', 'closed', 'active')) THEN CASE json_extract(NEW.raw, '$.status') WHEN 'escalated' THEN 'open_chat' WHEN 'closed' THEN 'unsubscribe' WHEN 'active' THEN 'api_active' END END, CASE WHEN (NEW.title IN ('open_chat', 'unsubscribe', 'bot_block') OR (NEW.title = 'api_conversation_update' AND json_extract(NEW.raw, '$.status') IN ('escalated', 'closed', 'active'))) THEN NEW.occurred_at END,
    CASE WHEN (NEW.title IN ('open_chat', 'unsubscribe', 'bot_block') OR (NEW.title = 'api_conversation_update' AND json_extract(NEW.raw, '$.status') IN ('escalated', 'closed', 'active'))) THEN NEW.occurred_at || '|' || NEW.dedup_key END,
    strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
WHERE true
ON CONFLICT (conversation_id) DO UPDATE SET
    bot_id           = coalesce(bot_id, excluded.bot_id),
    contact_id       = coalesce(contact_id, excluded.contact_id),
    service          = coalesce(service, excluded.service),
    phone            = CASE WHEN excluded.contact_at >= contact_at THEN coalesce(excluded.phone, phone)
                            ELSE coalesce(phone, excluded.phone) END,
    name             = CASE WHEN excluded.contact_at >= contact_at THEN coalesce(excluded.name, name)
                            ELSE coalesce(name, excluded.name) END,
    contact_at       = max(contact_at, excluded.contact_at),
    first_event_at   = min(first_event_at, excluded.first_event_at),
    last_event_at    = max(last_event_at, excluded.last_event_at),
    first_message_at = coalesce(min(first_message_at, excluded.first_message_at),
                                first_message_at, excluded.first_message_at),
    last_message_at  = coalesce(max(last_message_at, excluded.last_message_at),
                                last_message_at, excluded.last_message_at),
    message_count    = message_count + excluded.message_count,
    status_title     = CASE WHEN excluded.status_key > coalesce(status_key, '')
                            THEN excluded.status_title ELSE status_title END,
    status_at        = CASE WHEN excluded.status_key > coalesce(status_key, '')
                            THEN excluded.status_at ELSE status_at END,
    status_key       = max(coalesce(status_key, ''), coalesce(excluded.status_key, '')),
    updated_at       = excluded.updated_at
;
    END;
    """,
    # v4: an element no store could take as received (a NUL, a lone surrogate, a number out of range)
    # is delivered cleaned (`raw`); the element as received stays beside it, for inspection.
    # And the audit keeps no hash of the phone: with its salt in the same file, the number came back
    # in a fraction of a second. The last four digits and an operator's reference instead.
    """
    ALTER TABLE events ADD COLUMN original TEXT;
    CREATE TABLE audit_v4 (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        at        TEXT NOT NULL,
        action    TEXT NOT NULL,
        last4     TEXT,
        reference TEXT,
        report    TEXT NOT NULL
    );
    INSERT INTO audit_v4 (id, at, action, report) SELECT id, at, action, report FROM audit;
    DROP TABLE audit;
    ALTER TABLE audit_v4 RENAME TO audit;
    DELETE FROM meta WHERE key = 'audit_salt';
    """,
    # v5: a dead letter the operator gives up on is `discarded` (`chatledger dead --discard`): no longer
    # counted as dead, never re-queued by `replay --dead`, and kept with who, when and why. SQLite cannot
    # widen a CHECK in place, so the table is copied (the fan-out trigger names it: dropped meanwhile).
    """
    DROP TRIGGER events_fan_out;
    CREATE TABLE deliveries_v5 (
        sink            TEXT NOT NULL,
        event_id        INTEGER NOT NULL REFERENCES events (id) ON DELETE CASCADE,
        state           TEXT NOT NULL DEFAULT 'pending'
                        CHECK (state IN ('pending', 'delivered', 'dead', 'discarded')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        last_error      TEXT,
        updated_at      REAL,
        PRIMARY KEY (sink, event_id)
    ) WITHOUT ROWID;
    INSERT INTO deliveries_v5 (sink, event_id, state, attempts, next_attempt_at, last_error, updated_at)
    SELECT sink, event_id, state, attempts, next_attempt_at, last_error, updated_at FROM deliveries
    ORDER BY sink, event_id;
    DROP TABLE deliveries;
    ALTER TABLE deliveries_v5 RENAME TO deliveries;
    CREATE INDEX deliveries_by_state ON deliveries (sink, state, event_id);
    CREATE TRIGGER events_fan_out AFTER INSERT ON events
    BEGIN
        INSERT INTO deliveries (sink, event_id, state, attempts, next_attempt_at, updated_at)
        SELECT name, NEW.id, 'pending', 0, 0, (julianday('now') - 2440587.5) * 86400.0 FROM sinks;
        UPDATE counters SET value = value + 1 WHERE name = 'accepted';
    END;
    CREATE TABLE discards (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        at         TEXT NOT NULL,
        sink       TEXT NOT NULL,
        event_id   INTEGER NOT NULL REFERENCES events (id) ON DELETE CASCADE,
        reason     TEXT NOT NULL,
        operator   TEXT NOT NULL,
        last_error TEXT
    );
    CREATE INDEX discards_of_event ON discards (event_id, sink);
    """,
    # v6: a quarantined element the operator has looked at can be discarded (`chatledger quarantine
    # --discard`): kept with who, when and why, no longer listed or counted as open. Adding columns is
    # instant (no copy); the partial index counts the open ones without reading the elements.
    """
    ALTER TABLE quarantine ADD COLUMN discarded_at TEXT;
    ALTER TABLE quarantine ADD COLUMN discarded_by TEXT;
    ALTER TABLE quarantine ADD COLUMN discard_reason TEXT;
    CREATE INDEX quarantine_open ON quarantine (discarded_at) WHERE discarded_at IS NULL;
    """,
    # v7: intake looks a message's wamid up (a webhook whose SendPulse id differs from the one
    # reconciliation journaled its message under is still a duplicate): one indexed read per group.
    """
    CREATE INDEX events_platform_message_id ON events (platform_message_id, title);
    """,
    # v8: the statuses the bot API and reconciliation report, by the SendPulse message they are about: an
    # Airtable write of a message takes the furthest (daemon.records STATUS_ORDER). Partial: intake of
    # webhooks never touches it.
    """
    CREATE INDEX events_status_reports ON events (message_id)
    WHERE title IN ('api_interaction', 'delivery_status');
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
# v4 erases the audit's hashes: secure_delete zeroes their pages in the WAL, and a checkpoint right
# after migrating copies them over the file's (the old pages would otherwise stay there for a while).
ERASING_MIGRATION = 4
# v1 -> v2: the conversations of the events already journaled, folded as v2's trigger did then.
REBUILD_CONVERSATIONS = """DELETE FROM conversations;

INSERT INTO conversations (conversation_id, bot_id, contact_id, service, phone, name, contact_at,
    first_event_at, last_event_at, first_message_at, last_message_at, message_count,
    status_title, status_at, status_key, updated_at)
SELECT e.conversation_id, e.bot_id, e.contact_id, e.service, e.phone, e.contact_name,
    e.occurred_at, e.occurred_at, e.occurred_at,
    CASE WHEN e.title IN ('incoming_message', 'outgoing_message') THEN e.occurred_at END, CASE WHEN e.title IN ('incoming_message', 'outgoing_message') THEN e.occurred_at END,
    CASE WHEN e.title IN ('incoming_message', 'outgoing_message') THEN 1 ELSE 0 END,
    CASE WHEN e.title IN ('open_chat', 'unsubscribe', 'bot_block') THEN e.title END, CASE WHEN e.title IN ('open_chat', 'unsubscribe', 'bot_block') THEN e.occurred_at END,
    CASE WHEN e.title IN ('open_chat', 'unsubscribe', 'bot_block') THEN e.occurred_at || '|' || e.dedup_key END,
    strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
FROM events e WHERE e.conversation_id IS NOT NULL ORDER BY e.id
ON CONFLICT (conversation_id) DO UPDATE SET
    bot_id           = coalesce(bot_id, excluded.bot_id),
    contact_id       = coalesce(contact_id, excluded.contact_id),
    service          = coalesce(service, excluded.service),
    phone            = CASE WHEN excluded.contact_at >= contact_at THEN coalesce(excluded.phone, phone)
                            ELSE coalesce(phone, excluded.phone) END,
    name             = CASE WHEN excluded.contact_at >= contact_at THEN coalesce(excluded.name, name)
                            ELSE coalesce(name, excluded.name) END,
    contact_at       = max(contact_at, excluded.contact_at),
    first_event_at   = min(first_event_at, excluded.first_event_at),
    last_event_at    = max(last_event_at, excluded.last_event_at),
    first_message_at = coalesce(min(first_message_at, excluded.first_message_at),
                                first_message_at, excluded.first_message_at),
    last_message_at  = coalesce(max(last_message_at, excluded.last_message_at),
                                last_message_at, excluded.last_message_at),
    message_count    = message_count + excluded.message_count,
    status_title     = CASE WHEN excluded.status_key > coalesce(status_key, '')
                            THEN excluded.status_title ELSE status_title END,
    status_at        = CASE WHEN excluded.status_key > coalesce(status_key, '')
                            THEN excluded.status_at ELSE status_at END,
    status_key       = max(coalesce(status_key, ''), coalesce(excluded.status_key, '')),
    updated_at       = excluded.updated_at
"""

EVENT_COLUMNS = (
    "dedup_key", "received_at", "occurred_at", "title", "service", "bot_id", "contact_id", "phone",
    "contact_name", "message_id", "platform_message_id", "direction", "message_type", "text", "raw",
    "conversation_id",
)
INSERT_COLUMNS = (*EVENT_COLUMNS, "original")
# One multi-row statement per chunk: a single trip to the SQLite thread however many events.
ROWS_PER_INSERT = 32766 // len(INSERT_COLUMNS) // 100 * 100  # SQLite's bound-variable limit
_ROW = "(" + ", ".join("?" * len(INSERT_COLUMNS)) + ")"


def insert_events_sql(rows: int) -> str:
    return (
        f"INSERT INTO events ({', '.join(INSERT_COLUMNS)}) VALUES {', '.join([_ROW] * rows)} "
        "ON CONFLICT (dedup_key) DO NOTHING RETURNING id, dedup_key"
    )


HELD_WAMIDS = "SELECT title, platform_message_id FROM events WHERE platform_message_id IN ({marks})"
INSERT_QUARANTINE = "INSERT INTO quarantine (received_at, reason, raw) VALUES (?, ?, ?)"
ADD_DUPLICATES = "UPDATE counters SET value = value + ? WHERE name = 'duplicates'"
SET_SINKS = "INSERT INTO sinks (name) VALUES (?)"
GET_META = "SELECT value FROM meta WHERE key = ?"
SET_META = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
WRITE_PROBE = """
INSERT INTO meta (key, value) VALUES ('last_write_probe', ?)
ON CONFLICT (key) DO UPDATE SET value = excluded.value
"""
COUNT_EVENTS = "SELECT count(*) FROM events"
COUNT_QUARANTINE = "SELECT count(*) FROM quarantine WHERE discarded_at IS NULL"  # the open ones
QUARANTINE_COUNTS = f"SELECT ({COUNT_QUARANTINE}), (SELECT count(*) FROM quarantine)"  # one snapshot
SELECT_COUNTERS = "SELECT name, value FROM counters"
SINK_STATE_COUNTS = """
SELECT sink, state, count(*), strftime('%Y-%m-%dT%H:%M:%fZ', max(updated_at), 'unixepoch')
FROM deliveries GROUP BY sink, state
"""
OLDEST_PENDING = """
SELECT e.received_at FROM deliveries d JOIN events e ON e.id = d.event_id
WHERE d.sink = ? AND d.state = 'pending' ORDER BY d.event_id LIMIT 1
"""

PENDING_PAGE = f"""
SELECT e.id, {', '.join('e.' + c for c in EVENT_COLUMNS)}
FROM deliveries d JOIN events e ON e.id = d.event_id
WHERE d.sink = ? AND d.state = 'pending' AND d.event_id > ?
ORDER BY d.event_id LIMIT ?
"""
CONVERSATION_EVENTS = f"""
SELECT e.id, {', '.join('e.' + c for c in EVENT_COLUMNS)}
FROM events e WHERE e.conversation_id = ? ORDER BY e.id LIMIT ?
"""
HAS_EVENT = "SELECT 1 FROM events WHERE dedup_key = ?"
EVENT_TIMES = "SELECT dedup_key, occurred_at, received_at FROM events WHERE dedup_key IN ({marks})"
# The same title condition as the v8 index's, for the planner to use it.
STATUS_REPORTS = """
SELECT message_id, json_extract(raw, '$.status') FROM events
WHERE title IN ('api_interaction', 'delivery_status') AND message_id IN ({marks})
"""
EVENTS_BY_KEY_RANGE = f"""
SELECT e.id, {', '.join('e.' + c for c in EVENT_COLUMNS)}
FROM events e WHERE e.dedup_key >= ? AND e.dedup_key < ? ORDER BY e.id
"""
# An event may go once every enabled sink holds it and nothing about it is pending or dead.
PURGE_EVENTS = """
DELETE FROM events WHERE id IN (
    SELECT e.id FROM events e
    WHERE e.received_at < ?
      AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.state != 'delivered')
      AND (SELECT count(*) FROM deliveries d
           WHERE d.event_id = e.id AND d.state = 'delivered' AND d.sink IN ({sinks})) = {n}
    ORDER BY e.id LIMIT ?
)
"""
SELECT_CONVERSATIONS = """
SELECT conversation_id, bot_id, contact_id, service, phone, name, first_event_at, last_event_at,
       first_message_at, last_message_at, message_count, status_title, status_at, updated_at
FROM conversations WHERE conversation_id IN ({marks})
"""
MARK_DELIVERED = """
UPDATE deliveries SET state = 'delivered', attempts = attempts + 1, last_error = NULL, updated_at = ?
WHERE sink = ? AND event_id = ? AND state = 'pending'
"""
MARK_DEAD = """
UPDATE deliveries SET state = 'dead', attempts = attempts + 1, last_error = ?, updated_at = ?
WHERE sink = ? AND event_id = ? AND state = 'pending'
"""
NOTE_FAILURE = """
UPDATE deliveries SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?, updated_at = ?
WHERE sink = ? AND event_id = ? AND state = 'pending'
"""
# The events an operator names: by journal id, dedup key or SendPulse message id (read before writing:
# message ids are not indexed, and a scan must not hold the writer).
EVENTS_NAMED = "SELECT id FROM events WHERE id = ? OR dedup_key = ? OR message_id = ? ORDER BY id"
DELIVERIES_OF_EVENTS = """
SELECT d.sink, d.event_id, e.dedup_key, e.title, d.state, d.last_error
FROM deliveries d JOIN events e ON e.id = d.event_id
WHERE d.sink IN ({sinks}) AND d.event_id IN ({ids}) ORDER BY d.event_id, d.sink
"""
OPEN_DEAD_LETTERS = """
SELECT d.sink, d.event_id, e.dedup_key, e.title, d.state, d.last_error
FROM deliveries d JOIN events e ON e.id = d.event_id
WHERE d.sink IN ({sinks}) AND d.state = 'dead' ORDER BY d.event_id, d.sink
"""
MARK_DISCARDED = """
UPDATE deliveries SET state = 'discarded', updated_at = ? WHERE sink = ? AND event_id = ? AND state = 'dead'
"""
INSERT_DISCARD = "INSERT INTO discards (at, sink, event_id, reason, operator, last_error) VALUES (?, ?, ?, ?, ?, ?)"
REQUEUE = """
UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = 0, last_error = NULL, updated_at = ?
WHERE sink = ? AND state IN ({states})
  AND (? IS NULL OR event_id IN (SELECT id FROM events WHERE received_at >= ?))
  AND (? IS NULL OR event_id IN (SELECT id FROM events WHERE CAST(id AS TEXT) = ? OR dedup_key = ?
                                                            OR message_id = ?))
"""
# `replay --since/--event` also selects events that have no row for the sink (journaled before it was
# enabled): they get one, pending.
REQUEUE_MISSING = """
INSERT INTO deliveries (sink, event_id, state, attempts, next_attempt_at, updated_at)
SELECT ?, e.id, 'pending', 0, 0, ? FROM events e
WHERE (? IS NULL OR e.received_at >= ?)
  AND (? IS NULL OR CAST(e.id AS TEXT) = ? OR e.dedup_key = ? OR e.message_id = ?)
  AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.sink = ? AND d.event_id = e.id)
"""
# Events journaled before a sink was enabled have no row for it (the insert fans out to the sinks
# enabled then): daemon.backfill makes them pending, a page of ids at a time.
# One statement, one snapshot: an intake committed between two would add an event and its row.
COUNT_EVENTS_AND_ROWS = "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM deliveries WHERE sink = ?)"
COUNT_MISSING = """
SELECT count(*) FROM events e WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.sink = ? AND d.event_id = e.id)
"""
MISSING_PAGE = """
SELECT e.id FROM events e
WHERE e.id > ? AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.sink = ? AND d.event_id = e.id)
ORDER BY e.id LIMIT ?
"""
ADD_MISSING = """
INSERT INTO deliveries (sink, event_id, state, attempts, next_attempt_at, updated_at)
SELECT ?, e.id, 'pending', 0, 0, ? FROM events e
WHERE e.id IN (SELECT value FROM json_each(?))
  AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.sink = ? AND d.event_id = e.id)
"""


@dataclass(frozen=True)
class Requeue:
    """Which deliveries `replay` makes pending again: dead letters only, or every state; all
    events, or those received since a moment, or one event (journal id, dedup key or SendPulse
    message id)."""

    dead_only: bool = True
    since: str | None = None  # journal time text (UTC ISO 8601, ms, Z)
    event: str | None = None

    @property
    def states(self) -> str:
        """The states re-queued: a discarded dead letter only when its event is named (undoing a discard)."""
        if self.dead_only:
            return "'dead'"
        return "'dead', 'delivered', 'discarded'" if self.event is not None else "'dead', 'delivered'"

    def describe(self) -> str:
        what = "dead letters" if self.dead_only else "deliveries"
        if self.event is not None:
            what += f" of event {self.event}"
        if self.since is not None:
            what += f" received since {self.since}"
        return what


@dataclass(frozen=True)
class Discard:
    """What `dead --discard` did: the dead letters now discarded, and when an event was named, its
    deliveries in another state (`others`) and whether the journal holds it at all (`found`)."""

    at: str
    by: str
    reason: str
    discarded: list[dict[str, Any]]
    others: list[dict[str, Any]] = field(default_factory=list)
    found: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at, "by": self.by, "reason": self.reason, "discarded": self.discarded,
                "others": self.others, "found": self.found}


# One person's events: by phone, or by a conversation of that phone. A dry run counts with the same terms.
OF_PERSON = "phone = ? OR conversation_id IN (SELECT value FROM json_each(?))"
NAMING_PHONE = "mentions_phone(raw, ?)"  # daemon.events.mentions_phone
FORGET_EVENTS = f"DELETE FROM events WHERE {OF_PERSON} RETURNING dedup_key"
FORGET_CONVERSATIONS = f"DELETE FROM conversations WHERE {OF_PERSON}"
FORGET_QUARANTINE = f"DELETE FROM quarantine WHERE {NAMING_PHONE}"
EVENTS_OF_PERSON = f"SELECT dedup_key FROM events WHERE {OF_PERSON}"
COUNT_CONVERSATIONS_OF_PERSON = f"SELECT count(*) FROM conversations WHERE {OF_PERSON}"
COUNT_QUARANTINE_NAMING = f"SELECT count(*) FROM quarantine WHERE {NAMING_PHONE}"
CONVERSATIONS_OF_PHONE = "SELECT conversation_id FROM conversations WHERE phone = ?"
INSERT_AUDIT = "INSERT INTO audit (at, action, last4, reference, report) VALUES (?, ?, ?, ?, ?)"
AUDIT_ENTRIES = "SELECT id, at, action, last4, reference, report FROM audit ORDER BY id"
AUDIT_KEYS = ("id", "at", "action", "last4", "reference", "report")
REFERENCE_MAX = 100


def reference_problem(reference: str, phone: str) -> str | None:
    """Why an operator's reference (a ticket id) cannot go into the audit entry of erasing `phone`."""
    if not reference.strip():
        return "is empty"
    if len(reference) > REFERENCE_MAX:
        return f"must be at most {REFERENCE_MAX} characters"
    if has_control(reference):
        return "must not hold a control character"
    if mentions_phone(reference, phone):
        return "must not hold the phone number: the audit keeps nothing it could be found from"
    return None


DEAD_LETTERS = """
SELECT d.event_id, e.dedup_key, e.title, d.attempts, d.last_error, strftime('%Y-%m-%dT%H:%M:%fZ', d.updated_at, 'unixepoch'), d.state
FROM deliveries d JOIN events e ON e.id = d.event_id
WHERE d.sink = ? AND d.state = 'dead' ORDER BY d.event_id LIMIT ?
"""
DISCARDED_LETTERS = """
SELECT d.event_id, e.dedup_key, e.title, d.attempts, d.last_error, strftime('%Y-%m-%dT%H:%M:%fZ', d.updated_at, 'unixepoch'), d.state,
       x.at, x.operator, x.reason
FROM deliveries d JOIN events e ON e.id = d.event_id
JOIN discards x ON x.id = (SELECT max(id) FROM discards WHERE event_id = d.event_id AND sink = d.sink)
WHERE d.sink = ? AND d.state = 'discarded' ORDER BY d.event_id LIMIT ?
"""
DISCARDS_SINCE = 5  # the schema version that has them


DEAD_LETTER_KEYS = ("event_id", "dedup_key", "title", "attempts", "last_error", "updated_at", "state")
DISCARDED_KEYS = (*DEAD_LETTER_KEYS, "discarded_at", "discarded_by", "reason")


_T = TypeVar("_T")


def read_only(path: Path, read: Callable[[sqlite3.Connection], _T]) -> _T:
    """`read` on a read-only connection to the journal: safe beside a running daemon (WAL lets readers in)
    and without one; any SQLite error is a JournalError."""
    problem = journal_files.unreadable(path)
    if problem:
        raise JournalError(problem)
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as exc:
        raise JournalError(f"journal {path}: cannot open it read-only: {exc}") from None
    try:
        return read(conn)
    except sqlite3.Error as exc:
        raise JournalError(f"journal {path}: {exc}") from None
    finally:
        conn.close()


def read_dead_letters(path: Path, sinks: Sequence[str], limit: int,
                      discarded: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Dead letters per sink (or the discarded ones), without the daemon's help (read_only)."""
    def read(conn: sqlite3.Connection) -> dict[str, list[dict[str, Any]]]:
        if discarded and conn.execute("PRAGMA user_version").fetchone()[0] < DISCARDS_SINCE:
            return {sink: [] for sink in sinks}  # not migrated yet: nothing was ever discarded
        sql, keys = (DISCARDED_LETTERS, DISCARDED_KEYS) if discarded else (DEAD_LETTERS, DEAD_LETTER_KEYS)
        return {sink: [dict(zip(keys, row)) for row in conn.execute(sql, (sink, limit))] for sink in sinks}
    return read_only(path, read)


class JournalError(Exception):
    """The journal cannot be opened or used (newer schema, in use, corrupt)."""


class JournalUnavailable(Exception):
    """A write could not be made durable (disk full, read-only, I/O error); nothing was committed."""


@dataclass(frozen=True)
class AppendResult:
    accepted: int
    duplicates: int
    rejected: int
    event_ids: tuple[int, ...]


@dataclass
class _Intake:
    events: Sequence[Event]
    rejected: Sequence[Rejected]
    done: asyncio.Future[AppendResult]


@dataclass
class _Op:
    """A write of another kind (delivery state, probes) run inside the shared transaction."""

    run: Callable[[aiosqlite.Connection], Awaitable[Any]]
    done: asyncio.Future[Any]


@dataclass
class _Ping:
    done: asyncio.Future[None]


_STOP = object()

# A write that failed on its own data rather than on the journal's ability to write (a lone surrogate,
# an integer too large for SQLite, a constraint): the rest of its group is committed without it.
DATA_ERRORS = (ValueError, TypeError, OverflowError, sqlite3.InterfaceError, sqlite3.ProgrammingError,
               sqlite3.IntegrityError, sqlite3.DataError)


# Upper bounds (seconds) of the commit-latency histogram's buckets; the last one is +Inf.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class CommitStats:
    commits: int = 0
    events: int = 0
    failures: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    last_commit_seconds: float = 0.0
    commit_seconds_total: float = 0.0
    commit_buckets: list[int] = field(default_factory=lambda: [0] * (len(COMMIT_BUCKETS) + 1))

    def observe(self, seconds: float) -> None:
        self.last_commit_seconds = seconds
        self.commit_seconds_total += seconds
        self.commit_buckets[bisect.bisect_left(COMMIT_BUCKETS, seconds)] += 1


class Journal:
    """The durable journal; open with `await Journal.open(...)`, close with `await close()`."""

    def __init__(self, path: Path, sinks: Sequence[str], writer: aiosqlite.Connection,
                 reader: aiosqlite.Connection, lock_fd: int, last_id: int):
        self.path = path
        self.sinks = tuple(sinks)
        self._writer = writer
        self._reader = reader
        self._lock_fd = lock_fd
        self._last_id = last_id
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.writable = True
        self.stats = CommitStats()
        self._listeners: list[Callable[[int], None]] = []

    @classmethod
    async def open(cls, path: Path, sinks: Sequence[str], *, page_limit: int | None = None) -> "Journal":
        """Open (creating if needed), check and migrate the journal, and start its writer task."""
        path = Path(path)
        try:
            journal_files.make_folder(path.parent)
        except OSError as exc:
            raise JournalError(f"journal folder {path.parent}: {exc.strerror or exc}") from None
        lock_fd = _lock(path)
        writer = reader = None
        try:
            _, initialised = journal_files.read_lock(lock_fd)
            lost = journal_files.lost_journal(path, initialised)
            if lost:
                raise JournalError(lost)
            try:
                journal_files.make_private(path)
            except OSError as exc:
                raise JournalError(f"journal {path}: {exc.strerror or exc}") from None
            writer = await aiosqlite.connect(str(path), isolation_level=None)
            await _configure(writer, path)
            await _quick_check(writer, path)
            await _refuse_unversioned(writer, path)
            await _migrate(writer, path)
            if initialised is None:
                journal_files.mark_initialised(lock_fd)
            await _record_sinks(writer, sinks)
            writer.isolation_level = "IMMEDIATE"
            reader = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
            await reader.execute("PRAGMA busy_timeout = 5000")
            await reader.create_function("mentions_phone", 2, mentions_phone, deterministic=True)  # forget's dry run
            (last_id,) = await (await writer.execute("SELECT coalesce(max(id), 0) FROM events")).fetchone()
            # two statements: together, max() and count(*) lose their shortcuts and read the whole table
            (events,) = await (await writer.execute(COUNT_EVENTS)).fetchone()
        except BaseException as exc:
            for conn in (reader, writer):
                if conn is not None:
                    await conn.close()
            os.close(lock_fd)
            if _is_damage(exc):  # met past the check (a budget run out) or by the check itself
                raise JournalError(journal_files.damaged(path, str(exc))) from None
            raise
        journal = cls(path, sinks, writer, reader, lock_fd, last_id)
        if page_limit is not None:
            await journal.set_page_limit(page_limit)
        journal._task = asyncio.create_task(journal._write_loop(), name="journal-writer")
        logger.info("journal {} open (schema v{}, {} events, sinks: {})", path, SCHEMA_VERSION,
                    events, ", ".join(sinks) or "none")
        return journal

    # -- writing ---------------------------------------------------------------------------------

    async def append(self, events: Sequence[Event], rejected: Sequence[Rejected] = ()) -> AppendResult:
        """Commit events (deduplicated) and quarantined elements durably; return what happened."""
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._submit(_Intake(events, rejected, future))
        return await future

    async def write(self, run: Callable[[aiosqlite.Connection], Awaitable[Any]]) -> Any:
        """Run `run(conn)` inside the next group-commit transaction; return its result once durable."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._submit(_Op(run, future))
        return await future

    async def meta(self, key: str) -> str | None:
        """A value the daemon keeps between runs (the journal's meta table)."""
        rows = await self.query(GET_META, (key,))
        return rows[0][0] if rows else None

    async def set_meta(self, key: str, value: str) -> None:
        async def run(conn: aiosqlite.Connection) -> None:
            await conn.execute(SET_META, (key, value))

        await self.write(run)

    async def probe(self) -> None:
        """Make a tiny durable write; raise JournalUnavailable if the journal cannot write."""

        async def run(conn: aiosqlite.Connection) -> None:
            await conn.execute(WRITE_PROBE, (iso(datetime.now(timezone.utc)),))

        await self.write(run)

    async def ping(self) -> None:
        """Return once the writer task has gone round its loop: it is alive and not stuck."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._submit(_Ping(future))
        await future

    async def set_page_limit(self, pages: int | None) -> int:
        """Cap the database size in pages (None: no cap): the disk-full drill used by the tests."""
        limit = 0xFFFFFFFE if pages is None else int(pages)  # SQLite's own maximum
        cursor = await self._writer.execute(f"PRAGMA max_page_count = {limit}")
        (effective,) = await cursor.fetchone()
        return int(effective)

    async def page_count(self) -> int:
        (pages,) = await (await self._writer.execute("PRAGMA page_count")).fetchone()
        return int(pages)

    def add_listener(self, listener: Callable[[int], None]) -> None:
        """Call `listener(last_event_id)` after every commit that added events or made old ones pending."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[int], None]) -> None:
        self._listeners.remove(listener)

    @property
    def writer_alive(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def writer_task(self) -> asyncio.Task[None] | None:
        return self._task

    @property
    def last_event_id(self) -> int:
        return self._last_id

    def _submit(self, request: Any) -> None:
        if self._closing or not self.writer_alive:
            raise JournalUnavailable("journal is closed")
        self._queue.put_nowait(request)

    async def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            for _ in range(GATHER_YIELDS):
                # Let handlers that are already runnable reach the queue: they share this commit.
                await asyncio.sleep(0)
                stopping = self._drain(batch)
                if stopping:
                    break
            if not stopping and 1 < len(batch) and _events_in(batch) < COMMIT_DELAY_EVENTS:
                # Requests are arriving together: wait a moment for more to join, as PostgreSQL's
                # commit_delay does. A lone request never waits.
                await asyncio.sleep(COMMIT_DELAY_SECONDS)
                stopping = self._drain(batch)
            await self._commit(batch)

    def _drain(self, batch: list[Any]) -> bool:
        """Move queued requests into the batch; True when the stop sentinel was reached."""
        events = _events_in(batch)
        while events < MAX_EVENTS_PER_COMMIT and not self._queue.empty():
            item = self._queue.get_nowait()
            if item is _STOP:
                return True  # commit what came before the stop, then leave
            batch.append(item)
            events += len(getattr(item, "events", ()))
        return False

    async def _commit(self, batch: list[Any]) -> None:
        intakes = [item for item in batch if isinstance(item, _Intake)]
        ops = [item for item in batch if isinstance(item, _Op)]
        pings = [item for item in batch if isinstance(item, _Ping)]
        outcomes: list[tuple[bool, Any]] = []  # per op: (succeeded, its result or its exception)
        started = time.monotonic()
        new_ids: list[tuple[int, str]] = []
        if intakes or ops:
            try:
                try:
                    # isolation_level IMMEDIATE: the first write opens the transaction, saving a trip
                    try:
                        new_ids = await self._write_intakes(intakes)
                        outcomes = [(True, await op.run(self._writer)) for op in ops]
                        await self._writer.commit()
                    except BaseException:
                        await _rollback(self._writer)
                        raise
                except DATA_ERRORS as exc:
                    # One request's data, not the journal: commit the others without it.
                    logger.warning("journal: a write in a group of {} failed on its data ({}: {}); committing "
                                   "the group again with that write set apart", len(intakes) + len(ops),
                                   type(exc).__name__, exc)
                    new_ids, outcomes = await self._commit_isolated(intakes, ops)
            except (sqlite3.Error, OSError) as exc:
                self._fail(batch, exc)
                return
            except Exception as exc:  # a bug: fail this group loudly, keep the writer alive
                logger.exception("journal commit failed unexpectedly")
                self._fail(batch, exc)
                return
        elapsed = time.monotonic() - started
        self._succeed(intakes, new_ids, elapsed, wrote=bool(intakes or ops))
        for op, (succeeded, outcome) in zip(ops, outcomes):
            if not op.done.done():
                if succeeded:
                    op.done.set_result(outcome)
                else:
                    op.done.set_exception(outcome)
        for ping in pings:
            if not ping.done.done():
                ping.done.set_result(None)

    async def _commit_isolated(self, intakes: list[_Intake],
                               ops: list[_Op]) -> tuple[list[tuple[int, str]], list[tuple[bool, Any]]]:
        """The group again in one transaction, each write in a savepoint: a request whose data the
        journal refuses is retried event by event, and what still fails is quarantined with the reason
        (its request answers with it as rejected); an op that fails gets its exception. One fsync."""
        conn = self._writer
        new_ids: list[tuple[int, str]] = []
        outcomes: list[tuple[bool, Any]] = []
        try:
            await conn.execute("BEGIN IMMEDIATE")
            for intake in intakes:
                succeeded, outcome = await self._savepoint(lambda: self._write_intakes([intake]))
                if succeeded:
                    new_ids += outcome
                    continue
                kept, refused = [], list(intake.rejected)
                for event in intake.events:
                    succeeded, outcome = await self._savepoint(
                        lambda: self._write_intakes([_Intake([event], (), intake.done)]))
                    if succeeded:
                        kept.append(event)
                        new_ids += outcome
                    else:
                        logger.error("journal: event {} cannot be stored ({}: {}); quarantined instead",
                                     event.dedup_key[:80], type(outcome).__name__, outcome)
                        refused.append(Rejected(f"the journal could not store it: {type(outcome).__name__}: "
                                                f"{outcome}"[:300], event.original or event.raw, event.received_at))
                intake.events, intake.rejected = kept, refused
                await self._write_intakes([_Intake((), refused, intake.done)])
            for op in ops:
                outcomes.append(await self._savepoint(lambda: op.run(conn)))
            await conn.commit()
        except BaseException:
            await _rollback(conn)
            raise
        new_ids.sort()
        return new_ids, outcomes

    async def _savepoint(self, work: Callable[[], Awaitable[Any]]) -> tuple[bool, Any]:
        """Run `work()` inside a savepoint; on a data error undo just it: (False, the error)."""
        await self._writer.execute("SAVEPOINT isolated")
        try:
            result = await work()
        except DATA_ERRORS as exc:
            await self._writer.execute("ROLLBACK TO isolated")
            await self._writer.execute("RELEASE isolated")
            return False, exc
        await self._writer.execute("RELEASE isolated")
        return True, result

    async def _write_intakes(self, intakes: list[_Intake]) -> list[tuple[int, str]]:
        if not intakes:
            return []
        stamps: dict[datetime, str] = {}  # a request's events share one receive time
        events = [event for intake in intakes for event in intake.events]
        fresh = await self._without_held_wamids(events)
        rows = [_event_row(event, stamps) for event in fresh]
        quarantined = [
            (iso(item.received_at), _sql_text(item.reason), _sql_text(item.raw))
            for intake in intakes for item in intake.rejected
        ]
        new_ids: list[tuple[int, str]] = []
        for start in range(0, len(rows), ROWS_PER_INSERT):
            chunk = rows[start:start + ROWS_PER_INSERT]
            params = [value for row in chunk for value in row]
            new_ids.extend(await self._writer.execute_fetchall(insert_events_sql(len(chunk)), params))
        if quarantined:
            await self._writer.executemany(INSERT_QUARANTINE, quarantined)
        if len(events) > len(new_ids):  # accepted and rejected are counted by triggers
            await self._writer.execute(ADD_DUPLICATES, (len(events) - len(new_ids),))
        new_ids.sort()
        return [(event_id, key) for event_id, key in new_ids]

    async def _without_held_wamids(self, events: list[Event]) -> list[Event]:
        """The events less the messages whose wamid the journal, or an earlier event here, holds for that title."""
        wamids = list({event.platform_message_id for event in events if _wamid(event)})
        if not wamids:
            return events
        held: set[tuple[str, str]] = set()
        for start in range(0, len(wamids), 500):
            chunk = wamids[start:start + 500]
            found = await self._writer.execute_fetchall(HELD_WAMIDS.format(marks=", ".join("?" * len(chunk))), chunk)
            held.update((title, wamid) for title, wamid in found)
        fresh = []
        for event in events:
            if _wamid(event):
                mark = (event.title, event.platform_message_id)
                if mark in held:
                    continue
                held.add(mark)
            fresh.append(event)
        return fresh

    def _succeed(self, intakes: list[_Intake], new_ids: list[tuple[int, str]], elapsed: float,
                 wrote: bool) -> None:
        if not wrote:
            return
        if not self.writable:
            logger.success("journal writes again; intake resumed")
        self.writable = True
        if intakes:
            unclaimed = {key: event_id for event_id, key in new_ids}
            for intake in intakes:
                ids = []
                for event in intake.events:
                    event_id = unclaimed.pop(event.dedup_key, None)
                    if event_id is not None:
                        ids.append(event_id)
                result = AppendResult(
                    accepted=len(ids),
                    duplicates=len(intake.events) - len(ids),
                    rejected=len(intake.rejected),
                    event_ids=tuple(ids),
                )
                if not intake.done.done():
                    intake.done.set_result(result)
        self.stats.commits += 1
        self.stats.events += len(new_ids)
        self.stats.observe(elapsed)
        if new_ids:
            self._last_id = new_ids[-1][0]
            self._notify()

    def _notify(self) -> None:
        for listener in self._listeners:
            try:
                listener(self._last_id)
            except Exception:
                logger.exception("journal listener failed")

    def _fail(self, batch: list[Any], exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        if self.writable:
            logger.error("journal write failed, intake answers 503 until it recovers: {}", reason)
        self.writable = False
        self.stats.failures += 1
        self.stats.last_error = reason
        self.stats.last_error_at = time.time()
        for item in batch:
            if not item.done.done():
                if isinstance(item, _Ping):
                    item.done.set_result(None)  # the writer is alive, even if the disk is not
                else:
                    item.done.set_exception(JournalUnavailable(reason))

    # -- reading ---------------------------------------------------------------------------------

    async def counts(self) -> dict[str, Any]:
        """Events, quarantine, webhook counters and per-sink delivery counts, from the read connection."""
        reader = self._reader
        (events,) = await (await reader.execute(COUNT_EVENTS)).fetchone()
        quarantined, quarantine_all = await (await reader.execute(QUARANTINE_COUNTS)).fetchone()
        counters = dict(await (await reader.execute(SELECT_COUNTERS)).fetchall())
        sinks: dict[str, dict[str, Any]] = {}
        for sink, state, count, latest in await (await reader.execute(SINK_STATE_COUNTS)).fetchall():
            entry = sinks.setdefault(sink, {**{s: 0 for s in DELIVERY_STATES}, "dead_last_at": None})
            entry[state] = count
            if state == "dead":
                entry["dead_last_at"] = latest  # when the latest open dead letter died
        for sink in sinks:
            row = await (await reader.execute(OLDEST_PENDING, (sink,))).fetchone()
            sinks[sink]["oldest_pending_at"] = row[0] if row else None
        return {"events": events, "quarantined": quarantined, "quarantine_discarded": quarantine_all - quarantined,
                "counters": counters, "sinks": sinks}

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query on the reader connection."""
        cursor = await self._reader.execute(sql, params)
        return list(await cursor.fetchall())

    # -- delivery state --------------------------------------------------------------------------

    async def pending(self, sink: str, after_id: int, limit: int) -> list[StoredEvent]:
        """The next `limit` events `sink` has not acknowledged, in id order, after `after_id`."""
        rows = await self.query(PENDING_PAGE, (sink, after_id, limit))
        return [StoredEvent(*row) for row in rows]

    async def conversations(self, conversation_ids: Sequence[str]) -> dict[str, ConversationState]:
        """The journal's record of these conversations (those it knows)."""
        found: dict[str, ConversationState] = {}
        ids = list(dict.fromkeys(conversation_ids))
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            rows = await self.query(SELECT_CONVERSATIONS.format(marks=", ".join("?" * len(chunk))), chunk)
            found.update((row[0], ConversationState(*row)) for row in rows)
        return found

    async def mark_delivered(self, sink: str, event_ids: Sequence[int]) -> None:
        """Record that `sink` holds these events (durable with the next group commit)."""
        now = time.time()
        rows = [(now, sink, event_id) for event_id in event_ids]

        async def run(conn: aiosqlite.Connection) -> None:
            await conn.executemany(MARK_DELIVERED, rows)

        await self.write(run)

    async def mark_dead(self, sink: str, event_id: int, error: str) -> None:
        """Park an event `sink` can never take (a data error): kept, counted, replayable on demand."""
        params = (error, time.time(), sink, event_id)

        async def run(conn: aiosqlite.Connection) -> None:
            await conn.execute(MARK_DEAD, params)

        await self.write(run)

    async def note_failure(self, sink: str, event_ids: Sequence[int], error: str, retry_at: float) -> None:
        """Count a failed attempt on events that stay pending, with the error and the next try."""
        now = time.time()
        rows = [(error, retry_at, now, sink, event_id) for event_id in event_ids]

        async def run(conn: aiosqlite.Connection) -> None:
            await conn.executemany(NOTE_FAILURE, rows)

        await self.write(run)

    async def purge(self, received_before: datetime, sinks: Sequence[str], limit: int = 500) -> int:
        """Delete up to `limit` events received before that moment that every one of `sinks` holds
        (their delivery rows go with them); return how many. With no sink, the journal is the only
        copy: nothing is purged. The journal's record of each conversation stays."""
        if not sinks:
            return 0
        sql = PURGE_EVENTS.format(sinks=", ".join("?" * len(sinks)), n=len(sinks))
        params = (iso(received_before), *sinks, limit)

        async def run(conn: aiosqlite.Connection) -> int:
            cursor = await conn.execute(sql, params)
            return cursor.rowcount

        return int(await self.write(run))

    async def requeue_dead(self, sink: str) -> int:
        """Make every dead letter of `sink` pending again; return how many."""
        return await self.requeue(sink, Requeue())

    async def requeue(self, sink: str, selection: Requeue) -> int:
        """Make the selected deliveries of `sink` pending again (a replay), and give the selected events
        that have no row for it one (unless dead letters only); return how many became pending."""
        now = time.time()
        selected = (selection.since, selection.since, *[selection.event] * 4)

        async def run(conn: aiosqlite.Connection) -> int:
            count = (await conn.execute(REQUEUE.format(states=selection.states), (now, sink, *selected))).rowcount
            if not selection.dead_only:
                count += (await conn.execute(REQUEUE_MISSING, (sink, now, *selected, sink))).rowcount
            return count

        return int(await self.write(run))

    async def missing_deliveries(self, sink: str) -> int:
        """How many events have no delivery row for `sink` (journaled before it was enabled)."""
        [(events, rows)] = await self.query(COUNT_EVENTS_AND_ROWS, (sink,))
        # Rows cannot outlive their event (foreign keys cascade; `journal check` finds any that did), so
        # as many rows as events means none is missing: the exact count would read every event.
        if rows >= events:
            return 0
        [(missing,)] = await self.query(COUNT_MISSING, (sink,))
        return int(missing)

    async def add_missing_deliveries(self, sink: str, after_id: int, limit: int) -> tuple[int, int | None]:
        """Make pending for `sink`, in one transaction, the next `limit` events after `after_id` that have
        no row for it: (how many, the last id taken), or (0, None) once there are none."""
        ids = [row[0] for row in await self.query(MISSING_PAGE, (after_id, sink, limit))]
        if not ids:
            return 0, None
        params = (sink, time.time(), json.dumps(ids), sink)

        async def run(conn: aiosqlite.Connection) -> int:
            return (await conn.execute(ADD_MISSING, params)).rowcount

        added = int(await self.write(run))
        if added:
            self._notify()  # the delivery workers wake as for new events
        return added, ids[-1]

    async def discard(self, sinks: Sequence[str], event: str | None, reason: str, by: str) -> Discard:
        """Give up on the dead letters of `sinks` (those of one event, named as `replay --event` names it, or
        all with None): their state becomes `discarded`, each with a record of who, when and why."""
        at = iso(datetime.now(timezone.utc))
        marks = ", ".join("?" * len(sinks))
        ids: list[int] = []
        if event is not None:
            ids = [row[0] for row in await self.query(EVENTS_NAMED, (_int_or_none(event), event, event))]
            if not ids:
                return Discard(at, by, reason, [], found=False)

        async def run(conn: aiosqlite.Connection) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            if event is None:
                cursor = await conn.execute(OPEN_DEAD_LETTERS.format(sinks=marks), tuple(sinks))
            else:
                cursor = await conn.execute(DELIVERIES_OF_EVENTS.format(sinks=marks, ids=", ".join("?" * len(ids))),
                                            (*sinks, *ids))
            discarded, others = [], []
            for sink, event_id, dedup_key, title, state, last_error in await cursor.fetchall():
                if state == "dead":
                    discarded.append({"sink": sink, "event_id": event_id, "dedup_key": dedup_key, "title": title,
                                      "last_error": last_error})
                else:
                    others.append({"sink": sink, "event_id": event_id, "state": state})
            now = time.time()
            await conn.executemany(MARK_DISCARDED, [(now, d["sink"], d["event_id"]) for d in discarded])
            await conn.executemany(INSERT_DISCARD, [(at, d["sink"], d["event_id"], reason, by, d["last_error"])
                                                    for d in discarded])
            return discarded, others

        discarded, others = await self.write(run) if sinks else ([], [])
        return Discard(at, by, reason, discarded, others)

    async def events_of_conversation(self, conversation_id: str, limit: int) -> list[StoredEvent]:
        return [StoredEvent(*row) for row in await self.query(CONVERSATION_EVENTS, (conversation_id, limit))]

    async def has_event(self, dedup_key: str) -> bool:
        return bool(await self.query(HAS_EVENT, (dedup_key,)))

    async def event_times(self, dedup_keys: Sequence[str]) -> dict[str, tuple[str, str]]:
        """(occurred_at, received_at) of the events the journal holds under these keys."""
        keys = list(dict.fromkeys(dedup_keys))
        found: dict[str, tuple[str, str]] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            rows = await self.query(EVENT_TIMES.format(marks=", ".join("?" * len(chunk))), chunk)
            found.update((key, (occurred, received)) for key, occurred, received in rows)
        return found

    async def reported_statuses(self, message_ids: Sequence[str]) -> dict[str, str]:
        """The furthest status (records.later_status) the bot API or reconciliation reported per message id."""
        ids = list(dict.fromkeys(message_ids))
        found: dict[str, str] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            for message_id, status in await self.query(STATUS_REPORTS.format(marks=", ".join("?" * len(chunk))), chunk):
                furthest = later_status(found.get(message_id), status if isinstance(status, str) else None)
                if furthest:
                    found[message_id] = furthest
        return found

    async def conversations_of_phone(self, phone: str) -> list[str]:
        return [row[0] for row in await self.query(CONVERSATIONS_OF_PHONE, (phone,))]

    async def events_keyed(self, prefix: str) -> list[StoredEvent]:
        """The events whose dedup key starts with `prefix` (non-empty), in id order, through the key's index."""
        after = prefix[:-1] + chr(ord(prefix[-1]) + 1)  # keys compare as UTF-8 bytes, in code point order
        return [StoredEvent(*row) for row in await self.query(EVENTS_BY_KEY_RANGE, (prefix, after))]

    async def forget(self, phone: str, conversation_ids: Sequence[str]) -> tuple[dict[str, int], list[str]]:
        """Erase one person: their events (delivery rows go with them), their conversations' records and
        quarantined elements naming the phone. Counts per table, and the erased events' dedup keys."""
        params = (phone, json.dumps(list(conversation_ids)))

        async def run(conn: aiosqlite.Connection) -> tuple[dict[str, int], list[str]]:
            await conn.create_function("mentions_phone", 2, mentions_phone, deterministic=True)
            keys = [row[0] for row in await (await conn.execute(FORGET_EVENTS, params)).fetchall()]
            conversations = (await conn.execute(FORGET_CONVERSATIONS, params)).rowcount
            quarantined = (await conn.execute(FORGET_QUARANTINE, (phone,))).rowcount
            return {"events": len(keys), "conversations": conversations, "quarantined": quarantined}, keys

        return await self.write(run)

    async def forget_counts(self, phone: str, conversation_ids: Sequence[str]) -> tuple[dict[str, int], list[str]]:
        """What `forget` would erase (a dry run): the same counts and dedup keys, read without writing."""
        params = (phone, json.dumps(list(conversation_ids)))
        keys = [row[0] for row in await self.query(EVENTS_OF_PERSON, params)]
        [(conversations,)] = await self.query(COUNT_CONVERSATIONS_OF_PERSON, params)
        [(quarantined,)] = await self.query(COUNT_QUARANTINE_NAMING, (phone,))
        return {"events": len(keys), "conversations": conversations, "quarantined": quarantined}, keys

    async def checkpoint(self, attempts: int = 20) -> bool:
        """Copy the WAL into the database and truncate it (after an erasure, no old page stays in the
        WAL); False if readers kept it busy every time."""
        for _ in range(attempts):
            try:
                (busy, _, _) = await (await self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")).fetchone()
            except sqlite3.OperationalError:  # the writer was inside a group commit just then
                busy = 1
            if not busy:
                return True
            await asyncio.sleep(0.05)
        return False

    async def audit(self, action: str, report: dict[str, Any], *, last4: str | None = None,
                    reference: str | None = None) -> dict[str, Any]:
        """Record an erasure: when, what, how much, and nothing the subject could be found from; returns it."""
        entry = {"at": iso(datetime.now(timezone.utc)), "action": action, "last4": last4, "reference": reference,
                 "report": report}
        params = (entry["at"], action, last4, reference, json.dumps(report, sort_keys=True))

        async def run(conn: aiosqlite.Connection) -> None:
            await conn.execute(INSERT_AUDIT, params)

        await self.write(run)
        return entry

    async def audit_entries(self) -> list[dict[str, Any]]:
        rows = await self.query(AUDIT_ENTRIES)
        return [{**dict(zip(AUDIT_KEYS, row)), "report": json.loads(row[-1])} for row in rows]

    async def dead_letters(self, sink: str, limit: int = 100) -> list[dict[str, Any]]:
        """The first dead letters of `sink`, with their errors."""
        rows = await self.query(DEAD_LETTERS, (sink, limit))
        return [dict(zip(DEAD_LETTER_KEYS, row)) for row in rows]

    # -- lifecycle -------------------------------------------------------------------------------

    async def close(self) -> None:
        """Commit everything already submitted, stop the writer, close both connections."""
        if self._closing:
            return
        self._closing = True
        if self._task is not None and not self._task.done():
            self._queue.put_nowait(_STOP)
            try:
                await self._task
            except Exception:
                logger.exception("journal writer ended with an error")
        while not self._queue.empty():  # anything the writer never reached
            item = self._queue.get_nowait()
            if item is not _STOP and not item.done.done():
                item.done.set_exception(JournalUnavailable("journal is closed"))
        for conn in (self._reader, self._writer):
            try:
                await conn.close()
            except Exception:
                logger.exception("closing a journal connection failed")
        os.close(self._lock_fd)
        logger.info("journal {} closed", self.path)


class JournalReader:
    """The journal's reads through a read-only connection, for a command beside a running daemon (WAL
    lets readers in) or without one: no lock taken, nothing migrated or written."""

    def __init__(self, path: Path, conn: aiosqlite.Connection):
        self.path = path
        self._conn = conn

    @classmethod
    async def open(cls, path: Path) -> "JournalReader":
        path = Path(path)
        problem = journal_files.unreadable(path)
        if problem:
            raise JournalError(problem)
        try:
            conn = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        except sqlite3.Error as exc:
            raise JournalError(f"journal {path}: cannot open it read-only: {exc}") from None
        try:
            await conn.execute("PRAGMA busy_timeout = 5000")
            (version,) = await (await conn.execute("PRAGMA user_version")).fetchone()
        except sqlite3.Error as exc:
            await conn.close()
            raise JournalError(f"journal {path}: {exc}") from None
        if version != SCHEMA_VERSION:
            await conn.close()
            raise JournalError(f"journal {path} is at schema v{version}, this chatledger reads v{SCHEMA_VERSION}: "
                               "start the daemon once to bring it up to date")
        return cls(path, conn)

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cursor = await self._conn.execute(sql, params)
        return list(await cursor.fetchall())

    conversations = Journal.conversations
    events_of_conversation = Journal.events_of_conversation
    conversations_of_phone = Journal.conversations_of_phone
    events_keyed = Journal.events_keyed
    event_times = Journal.event_times

    async def close(self) -> None:
        await self._conn.close()


def _sql_text(text: str) -> str:
    """Text SQLite takes: a lone surrogate (only our own bugs can bring one here) backslash-escaped."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _int_or_none(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else None


def _events_in(batch: list[Any]) -> int:
    return sum(len(getattr(item, "events", ())) for item in batch)


def _wamid(event: Event) -> bool:
    return (event.direction is not None and event.platform_message_id is not None
            and event.platform_message_id.startswith(WAMID_PREFIX))


def _event_row(event: Event, stamps: dict[datetime, str]) -> tuple[Any, ...]:
    received = stamps.get(event.received_at)
    if received is None:
        received = stamps[event.received_at] = iso(event.received_at)
    occurred = received if event.occurred_at is event.received_at else iso(event.occurred_at)
    return (
        event.dedup_key, received, occurred, event.title, event.service,
        event.bot_id, event.contact_id, event.phone, event.contact_name, event.message_id,
        event.platform_message_id, event.direction, event.message_type, event.text, event.raw,
        event.conversation_id or conversation_id_for(event.bot_id, event.contact_id, event.phone),
        event.original,
    )


def _lock(path: Path) -> int:
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise JournalError(f"journal lock {lock_path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = journal_files.read_lock(fd)[0] or "another process"
        os.close(fd)
        raise JournalError(f"journal {path} is in use by another chatledger (pid {holder})") from None
    journal_files.write_lock(fd, journal_files.read_lock(fd)[1])
    return fd


async def _configure(conn: aiosqlite.Connection, path: Path) -> None:
    try:
        cursor = await conn.execute("PRAGMA journal_mode = WAL")
        (mode,) = await cursor.fetchone()
        if str(mode).lower() != "wal":
            raise JournalError(f"journal {path}: cannot switch to WAL mode (got {mode})")
        await conn.execute("PRAGMA synchronous = FULL")
        await conn.execute("PRAGMA foreign_keys = ON")
        await conn.execute("PRAGMA secure_delete = ON")  # erased data is overwritten, not left in free pages
        await conn.execute("PRAGMA busy_timeout = 5000")
        await conn.execute("PRAGMA cache_size = -32768")  # 32 MiB: index pages stay in memory
    except sqlite3.DatabaseError as exc:
        if _is_damage(exc):
            raise JournalError(journal_files.damaged(path, f"not a usable SQLite database: {exc}")) from None
        raise JournalError(f"journal {path}: not a usable SQLite database: {exc}") from None


async def _quick_check(conn: aiosqlite.Connection, path: Path) -> None:
    """Read every page once (PRAGMA quick_check) and refuse a damaged journal; past the time budget,
    warn and go on (the damage, if any, is then met when its page is read)."""
    started = time.monotonic()
    deadline = started + QUICK_CHECK_SECONDS
    await asyncio.to_thread(journal_files.preread, path, deadline)
    await conn.set_progress_handler(lambda: time.monotonic() > deadline, QUICK_CHECK_STEPS)
    check = asyncio.ensure_future(_fetch_all(conn, f"PRAGMA quick_check({QUICK_CHECK_ERRORS})"))
    try:
        if not (await asyncio.wait({check}, timeout=max(0.0, deadline - time.monotonic())))[0]:
            await conn.interrupt()  # the b-tree walk is one VM step the progress handler never sees
        found = [row[0] for row in await check]
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorcode", None) != SQLITE_INTERRUPT:
            raise
        logger.warning("journal {}: integrity check stopped after {:.0f} s, the budget at start; the part "
                       "read was sound. `chatledger journal check` checks it whole", path, QUICK_CHECK_SECONDS)
        return
    finally:
        if not check.done():
            check.cancel()
        await conn.set_progress_handler(None, 0)
    if found != ["ok"]:
        raise JournalError(journal_files.damaged(path, "; ".join(found[:3])))
    logger.debug("journal {}: integrity quick check ok in {:.1f} s", path, time.monotonic() - started)


async def _fetch_all(conn: aiosqlite.Connection, sql: str) -> list[Any]:
    return list(await (await conn.execute(sql)).fetchall())


async def _refuse_unversioned(conn: aiosqlite.Connection, path: Path) -> None:
    """Tables without a schema version (a journal restored from `.dump`): migrating would fail half-way."""
    (version,) = await (await conn.execute("PRAGMA user_version")).fetchone()
    (tables,) = await (await conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'events'")).fetchone()
    if version == 0 and tables:
        raise JournalError(
            f"journal {path} has chatledger's tables but no schema version (restored from a .dump?): set it "
            f"from the journal it came from: sqlite3 {path} \"PRAGMA user_version = N\", N being what "
            "sqlite3 OLD \"PRAGMA user_version\" says (README, \"When the journal is damaged\")"
        )


def _is_damage(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None) if isinstance(exc, sqlite3.DatabaseError) else None
    return code is not None and code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)


async def _migrate(conn: aiosqlite.Connection, path: Path) -> None:
    (version,) = await (await conn.execute("PRAGMA user_version")).fetchone()
    if version > SCHEMA_VERSION:
        raise JournalError(
            f"journal {path} has schema v{version}, written by a newer chatledger; this version "
            f"knows up to v{SCHEMA_VERSION}. Upgrade chatledger (the journal is untouched)."
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        await conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(MIGRATIONS[target - 1]):
                await conn.execute(statement)
            if target == 2:
                await _backfill_conversations(conn)
            await conn.execute(f"PRAGMA user_version = {target}")
            await conn.execute("COMMIT")
        except BaseException:
            await _rollback(conn)
            raise
        logger.info("journal {} migrated to schema v{}", path, target)
    if version < ERASING_MIGRATION <= SCHEMA_VERSION:
        await conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


async def _backfill_conversations(conn: aiosqlite.Connection) -> None:
    """v1 -> v2: give the events already journaled their conversation id, then fold them."""
    after = 0
    while True:
        rows = await (await conn.execute(
            "SELECT id, bot_id, contact_id, phone FROM events WHERE id > ? ORDER BY id LIMIT 5000", (after,)
        )).fetchall()
        if not rows:
            break
        after = rows[-1][0]
        await conn.executemany("UPDATE events SET conversation_id = ? WHERE id = ?",
                               [(conversation_id_for(bot, contact, phone), event_id)
                                for event_id, bot, contact, phone in rows])
    for statement in _statements(REBUILD_CONVERSATIONS):
        await conn.execute(statement)


async def _record_sinks(conn: aiosqlite.Connection, sinks: Sequence[str]) -> None:
    await conn.execute("BEGIN IMMEDIATE")
    try:
        await conn.execute("DELETE FROM sinks")
        await conn.executemany(SET_SINKS, [(sink,) for sink in sinks])
        await conn.execute("COMMIT")
    except BaseException:
        await _rollback(conn)
        raise


def _statements(script: str) -> list[str]:
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements


async def _rollback(conn: aiosqlite.Connection) -> None:
    try:
        if conn.in_transaction:
            await conn.rollback()
    except sqlite3.Error:
        pass  # SQLite already rolled back (SQLITE_FULL and I/O errors do that themselves)
