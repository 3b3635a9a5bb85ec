"""The journal's schema: its migrations, frozen as the text each release shipped, and the runner.

Each entry upgrades the schema by one version; never edit a shipped entry, append a new one (a test
holds every shipped entry to the text captured when it shipped: tests/integration/data/journal_schema.json).
v2 and v3 restate conversation rules of daemon.events and daemon.records in SQL (the conversation fold);
tests/integration/test_journal_schema.py checks that the fold a fresh journal runs agrees with them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite
from loguru import logger

from daemon.journal.errors import JournalError, rollback
from daemon.journal.files import fetch_one
from daemon.records import conversation_id_for

# The journal's record of a conversation (v2's table) was folded in one event at a time by the
# events_conversation trigger (v2, v3), and over all events in id order by the v2 backfill
# (REBUILD_CONVERSATIONS); since v10 intake folds each group's events in id order (daemon.journal.intake FOLD).
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
    # v9: a message whose WhatsApp wamid the journal already holds under its title (daemon.events
    # WAMID_PREFIX) is skipped by the insert itself, as one inserted before it in the same statement is:
    # intake no longer reads the wamids back before each group commit.
    """
    CREATE TRIGGER events_wamid_once BEFORE INSERT ON events
    WHEN NEW.direction IS NOT NULL AND NEW.platform_message_id GLOB 'wamid.*'
    BEGIN
        SELECT RAISE(IGNORE) WHERE EXISTS (SELECT 1 FROM events
            WHERE platform_message_id = NEW.platform_message_id AND title = NEW.title);
    END;
    """,
    # v10: the fan-out to the sinks' delivery rows, the accepted counter and the conversation fold run once
    # per group commit, as statements in the insert's own transaction (daemon.journal.intake), not once per
    # event as triggers: the same rows, at half the SQLite time per event.
    """
    DROP TRIGGER events_fan_out;
    DROP TRIGGER events_conversation;
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

# The columns of an event as daemon.events.StoredEvent reads them, after its journal id.
EVENT_COLUMNS = (
    "dedup_key",
    "received_at",
    "occurred_at",
    "title",
    "service",
    "bot_id",
    "contact_id",
    "phone",
    "contact_name",
    "message_id",
    "platform_message_id",
    "direction",
    "message_type",
    "text",
    "raw",
    "conversation_id",
)


async def refuse_unversioned(conn: aiosqlite.Connection, path: Path) -> None:
    """Tables without a schema version (a journal restored from `.dump`): migrating would fail half-way."""
    (version,) = await fetch_one(conn, "PRAGMA user_version")
    (tables,) = await fetch_one(conn, "SELECT count(*) FROM sqlite_master WHERE name = 'events'")
    if version == 0 and tables:
        raise JournalError(
            f"journal {path} has chatledger's tables but no schema version (restored from a .dump?): set it "
            f'from the journal it came from: sqlite3 {path} "PRAGMA user_version = N", N being what '
            'sqlite3 OLD "PRAGMA user_version" says (README, "When the journal is damaged")'
        )


async def migrate(conn: aiosqlite.Connection, path: Path) -> None:
    (version,) = await fetch_one(conn, "PRAGMA user_version")
    if version > SCHEMA_VERSION:
        raise JournalError(
            f"journal {path} has schema v{version}, written by a newer chatledger; this version "
            f"knows up to v{SCHEMA_VERSION}. Upgrade chatledger (the journal is untouched)."
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        await conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in statements(MIGRATIONS[target - 1]):
                await conn.execute(statement)
            if target == 2:
                await _backfill_conversations(conn)
            await conn.execute(f"PRAGMA user_version = {target}")
            await conn.execute("COMMIT")
        except BaseException:
            await rollback(conn)
            raise
        logger.info("journal {} migrated to schema v{}", path, target)
    if version < ERASING_MIGRATION <= SCHEMA_VERSION:
        await conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


async def _backfill_conversations(conn: aiosqlite.Connection) -> None:
    """v1 -> v2: give the events already journaled their conversation id, then fold them."""
    after = 0
    while True:
        rows = list(
            await (
                await conn.execute(
                    "SELECT id, bot_id, contact_id, phone FROM events WHERE id > ? ORDER BY id LIMIT 5000", (after,)
                )
            ).fetchall()
        )
        if not rows:
            break
        after = rows[-1][0]
        await conn.executemany(
            "UPDATE events SET conversation_id = ? WHERE id = ?",
            [(conversation_id_for(bot, contact, phone), event_id) for event_id, bot, contact, phone in rows],
        )
    for statement in statements(REBUILD_CONVERSATIONS):
        await conn.execute(statement)


def statements(script: str) -> list[str]:
    """A script's statements, one by one (a trigger's body stays whole)."""
    found, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            found.append(current.strip())
            current = ""
    if current.strip():
        found.append(current.strip())
    return found
