"""PostgreSQL sink (asyncpg): versioned schema, idempotent batch delivery in one transaction."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg
from loguru import logger

from daemon.events import StoredEvent, storable_json
from daemon.records import STATUS_ORDER, InteractionRow, Records, map_events, parse_time, status_rank
from daemon.sinks.base import PermanentError, SetupError, SinkDefaults, TransientError

CONNECT_TIMEOUT = 10.0
STATEMENT_TIMEOUT = 60.0
BATCH_SIZE = 500
LOCK_NAMESPACE = "chatledger:migrate:"

# Each entry upgrades the schema by one version; never edit a shipped entry, append a new one.
# `{s}` is the quoted schema name.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE {s}.events (
        event_id    text PRIMARY KEY,
        title       text NOT NULL,
        service     text,
        bot_id      text,
        contact_id  text,
        received_at timestamptz NOT NULL,
        payload     jsonb NOT NULL
    );
    CREATE TABLE {s}.conversations (
        conversation_id text PRIMARY KEY,
        customer_phone  text,
        customer_name   text,
        status          text NOT NULL DEFAULT 'active',
        started_at      timestamptz,
        last_activity   timestamptz,
        message_count   integer NOT NULL DEFAULT 0,
        intent          text,
        sentiment       text,
        priority        text NOT NULL DEFAULT 'normal',
        assigned_agent  text,
        tags            jsonb NOT NULL DEFAULT '[]',
        metadata        jsonb NOT NULL DEFAULT '{{}}',
        created_at      timestamptz NOT NULL DEFAULT now(),
        updated_at      timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX conversations_by_phone ON {s}.conversations (customer_phone);
    CREATE INDEX conversations_by_activity ON {s}.conversations (last_activity DESC);
    CREATE TABLE {s}.interactions (
        interaction_id     text PRIMARY KEY,
        conversation_id    text NOT NULL REFERENCES {s}.conversations,
        message_id         text UNIQUE,
        direction          text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
        content            text,
        intent             text,
        response           text,
        processing_time_ms integer,
        status             text NOT NULL,
        error_message      text,
        customer_phone     text,
        occurred_at        timestamptz NOT NULL,
        created_at         timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX interactions_by_conversation ON {s}.interactions (conversation_id, occurred_at);
    CREATE INDEX interactions_by_phone ON {s}.interactions (customer_phone, occurred_at);
    CREATE TABLE {s}.escalations (
        escalation_id   text PRIMARY KEY,
        ticket_id       text NOT NULL UNIQUE,
        conversation_id text NOT NULL REFERENCES {s}.conversations,
        reason          text,
        priority        text NOT NULL DEFAULT 'normal',
        status          text NOT NULL DEFAULT 'pending',
        customer_phone  text,
        assigned_agent  text,
        created_at      timestamptz NOT NULL,
        resolved_at     timestamptz,
        notes           text
    );
    CREATE INDEX escalations_by_conversation ON {s}.escalations (conversation_id, created_at);
    CREATE INDEX escalations_open ON {s}.escalations (status) WHERE status <> 'resolved';
    """,
    # v2: a priority is one of Airtable's choices (LOW, MEDIUM, HIGH, CRITICAL), MEDIUM as the bot API's
    # escalations default. 'normal' was only ever the old column default (nothing chatledger writes takes
    # it: the API refuses it, delivery writes MEDIUM), so it means "none given" and becomes MEDIUM.
    """
    ALTER TABLE {s}.conversations ALTER COLUMN priority SET DEFAULT 'MEDIUM';
    ALTER TABLE {s}.escalations ALTER COLUMN priority SET DEFAULT 'MEDIUM';
    UPDATE {s}.conversations SET priority = 'MEDIUM' WHERE priority = 'normal';
    UPDATE {s}.escalations SET priority = 'MEDIUM' WHERE priority = 'normal';
    """,
    # v3: every row `recover --prefer airtable` replaces, before and after, with the columns it replaced, so
    # that `recover --undo RUN` can put them back.
    """
    CREATE TABLE {s}.recover_backup (
        id          bigserial PRIMARY KEY,
        run_id      text NOT NULL,
        replaced_at timestamptz NOT NULL DEFAULT now(),
        table_name  text NOT NULL,
        row_key     text NOT NULL,
        columns     text[] NOT NULL,
        old_row     jsonb NOT NULL,
        new_row     jsonb NOT NULL,
        undone_at   timestamptz
    );
    CREATE INDEX recover_backup_by_run ON {s}.recover_backup (run_id);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

CREATE_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS {s}.schema_migrations (
    version    integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
CURRENT_VERSION = "SELECT coalesce(max(version), 0) FROM {s}.schema_migrations"
RECORD_VERSION = "INSERT INTO {s}.schema_migrations (version) VALUES ($1)"

INSERT_EVENTS = """
INSERT INTO {s}.events (event_id, title, service, bot_id, contact_id, received_at, payload)
SELECT id, title, service, bot, contact, received, payload::jsonb
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::text[])
     AS t(id, title, service, bot, contact, received, payload)
ON CONFLICT (event_id) DO NOTHING
"""
# Contact details follow the newest event. Until a conversation has interactions its span is that of
# its events; from then on REFRESH_CONVERSATIONS owns it (so a replay changes nothing).
UPSERT_CONVERSATIONS = """
INSERT INTO {s}.conversations AS c
    (conversation_id, customer_phone, customer_name, started_at, last_activity, metadata)
SELECT id, phone, name, first_at, last_at,
       jsonb_strip_nulls(jsonb_build_object('bot_id', bot, 'contact_id', contact, 'service', service))
FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[],
            $6::text[], $7::text[], $8::text[]) AS t(id, phone, name, first_at, last_at, bot, contact, service)
ON CONFLICT (conversation_id) DO UPDATE SET
    customer_phone = CASE WHEN excluded.last_activity >= c.last_activity
                          THEN coalesce(excluded.customer_phone, c.customer_phone)
                          ELSE coalesce(c.customer_phone, excluded.customer_phone) END,
    customer_name  = CASE WHEN excluded.last_activity >= c.last_activity
                          THEN coalesce(excluded.customer_name, c.customer_name)
                          ELSE coalesce(c.customer_name, excluded.customer_name) END,
    started_at     = CASE WHEN c.message_count > 0 THEN c.started_at
                          ELSE least(c.started_at, excluded.started_at) END,
    last_activity  = CASE WHEN c.message_count > 0 THEN c.last_activity
                          ELSE greatest(c.last_activity, excluded.last_activity) END
"""


def _rank(status: str) -> str:
    """records.status_rank in SQL: the status's place in records.STATUS_ORDER, 0 outside it."""
    return f"coalesce(array_position(ARRAY[{', '.join(repr(s) for s in STATUS_ORDER)}]::text[], {status}), 0)"


# records.later_status: an interaction's status never moves back, whoever reports it.
LATER_STATUS = f"CASE WHEN {_rank('excluded.status')} > {_rank('i.status')} THEN excluded.status ELSE i.status END"
# A row already there is this message's (a replay), or the bot's enrichment of it that came first: the
# message's time is the interaction's, and its text fills an enrichment that gave none.
INSERT_INTERACTIONS = (
    """
INSERT INTO {s}.interactions AS i
    (interaction_id, conversation_id, message_id, direction, content, status, customer_phone, occurred_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::timestamptz[])
ON CONFLICT (interaction_id) DO UPDATE SET
    occurred_at = excluded.occurred_at, content = coalesce(i.content, excluded.content), status = LATER_STATUS
WHERE i.occurred_at IS DISTINCT FROM excluded.occurred_at OR (i.content IS NULL AND excluded.content IS NOT NULL)
   OR RANK_EXCLUDED > RANK_KNOWN
""".replace("LATER_STATUS", LATER_STATUS)
    .replace("RANK_EXCLUDED", _rank("excluded.status"))
    .replace("RANK_KNOWN", _rank("i.status"))
)
# A status SendPulse reported (reconciliation): the message's row as the API listed it when PostgreSQL has
# none yet, else only a status further along.
UPSERT_REPORTED_STATUS = """
INSERT INTO {s}.interactions AS i
    (interaction_id, conversation_id, message_id, direction, content, status, customer_phone, occurred_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::timestamptz[])
ON CONFLICT (interaction_id) DO UPDATE SET status = excluded.status WHERE RANK_EXCLUDED > RANK_KNOWN
""".replace("RANK_EXCLUDED", _rank("excluded.status")).replace("RANK_KNOWN", _rank("i.status"))
# A bot-posted interaction enriches the webhook's row of the same message (same id), whichever came first.
UPSERT_API_INTERACTIONS = """
INSERT INTO {s}.interactions AS i
    (interaction_id, conversation_id, message_id, direction, content, status, customer_phone, occurred_at,
     intent, response, processing_time_ms, error_message)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::timestamptz[], $9::text[], $10::text[], $11::integer[], $12::text[])
ON CONFLICT (interaction_id) DO UPDATE SET
    content = coalesce(excluded.content, i.content), status = LATER_STATUS,
    customer_phone = coalesce(i.customer_phone, excluded.customer_phone),
    intent = coalesce(excluded.intent, i.intent), response = coalesce(excluded.response, i.response),
    processing_time_ms = coalesce(excluded.processing_time_ms, i.processing_time_ms),
    error_message = coalesce(excluded.error_message, i.error_message)
""".replace("LATER_STATUS", LATER_STATUS)
INSERT_ESCALATIONS = """
INSERT INTO {s}.escalations
    (escalation_id, ticket_id, conversation_id, reason, priority, status, customer_phone, created_at, notes,
     assigned_agent)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::timestamptz[], $9::text[], $10::text[])
ON CONFLICT (escalation_id) DO NOTHING
"""
# Which of the escalations a batch updates PostgreSQL holds: an UPDATE of one it lacks would change nothing.
ESCALATIONS_HELD = "SELECT escalation_id FROM {s}.escalations WHERE escalation_id = ANY($1::text[])"
# PATCHes, in journal order; a field not given (NULL) is left as it is.
UPDATE_ESCALATIONS = """
UPDATE {s}.escalations SET status = coalesce($2, status), assigned_agent = coalesce($3, assigned_agent),
    resolved_at = coalesce($4, resolved_at), notes = coalesce($5, notes)
WHERE escalation_id = $1
"""
UPDATE_CONVERSATIONS = """
UPDATE {s}.conversations SET intent = coalesce($2, intent), sentiment = coalesce($3, sentiment),
    priority = coalesce($4, priority), assigned_agent = coalesce($5, assigned_agent),
    tags = coalesce($6::jsonb, tags), metadata = metadata || coalesce($7::jsonb, '{{}}'), updated_at = now()
WHERE conversation_id = $1
"""
# Only a newer status event replaces the one a conversation follows (see daemon.records).
APPLY_STATUS_EVENTS = """
UPDATE {s}.conversations AS c
SET metadata = c.metadata || jsonb_build_object('status_event', t.title, 'status_event_at', t.at,
                                                'status_key', t.key)
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[]) AS t(id, title, at, key)
WHERE c.conversation_id = t.id AND coalesce(c.metadata ->> 'status_key', '') < t.key
"""
# Aggregates are recomputed from the interactions, never incremented: replays cannot skew them.
# updated_at moves only when something did.
REFRESH_CONVERSATIONS = """
WITH agg AS (
    SELECT t.id, count(i.interaction_id)::integer AS n,
           min(i.occurred_at) AS first_at, max(i.occurred_at) AS last_at
    FROM unnest($1::text[]) AS t(id)
    LEFT JOIN {s}.interactions i ON i.conversation_id = t.id
    GROUP BY t.id
), target AS (
    SELECT c.conversation_id, agg.n,
           coalesce(agg.first_at, c.started_at) AS started_at,
           coalesce(agg.last_at, c.last_activity) AS last_activity,
           CASE WHEN c.metadata ->> 'status_event' = 'open_chat' THEN 'escalated'
                WHEN c.metadata ->> 'status_event' IN ('unsubscribe', 'bot_block')
                     AND (agg.last_at IS NULL
                          OR agg.last_at <= (c.metadata ->> 'status_event_at')::timestamptz)
                THEN 'closed'
                ELSE 'active' END AS status
    FROM {s}.conversations c JOIN agg ON agg.id = c.conversation_id
)
UPDATE {s}.conversations AS c
SET message_count = t.n, started_at = t.started_at, last_activity = t.last_activity,
    status = t.status, updated_at = now()
FROM target t
WHERE c.conversation_id = t.conversation_id
  AND (c.message_count, c.started_at, c.last_activity, c.status)
      IS DISTINCT FROM (t.n, t.started_at, t.last_activity, t.status)
"""

# SQLSTATE classes a retry cannot fix: the data is wrong (22) or breaks a constraint (23).
POISON_CLASSES = ("22", "23")


class SchemaTooNew(SetupError):
    """The database was migrated by a newer chatledger."""


def _sql(template: str, schema: str) -> str:
    return template.format(s=quote_ident(schema))


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def jsonb_text(raw: str) -> str:
    """The raw element as text jsonb accepts: intake cleans webhook elements, but not journal rows from
    before it did, and json.dumps writes an API body's NUL as \\u0000."""
    return storable_json(raw) or raw


async def connect(dsn: str) -> asyncpg.Connection:
    """Connect with a timeout; failures are transient (the server may come back)."""
    try:
        return await asyncpg.connect(
            dsn,
            timeout=CONNECT_TIMEOUT,
            command_timeout=STATEMENT_TIMEOUT,
            server_settings={"application_name": "chatledger"},
        )
    except (
        asyncpg.InvalidPasswordError,
        asyncpg.InvalidAuthorizationSpecificationError,
        asyncpg.InvalidCatalogNameError,
    ) as exc:
        raise SetupError(f"PostgreSQL refused the connection: {exc}") from exc
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise TransientError(f"cannot connect to PostgreSQL: {_describe(exc)}") from exc


async def migrate(conn: asyncpg.Connection, schema: str) -> tuple[int, int]:
    """Bring `schema` to SCHEMA_VERSION; return (before, after). Refuses a newer schema."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", LOCK_NAMESPACE + schema)
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
        await conn.execute(_sql(CREATE_VERSION_TABLE, schema))
        before = await conn.fetchval(_sql(CURRENT_VERSION, schema))
        if before > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"PostgreSQL schema {schema!r} is at version {before}, written by a newer chatledger; "
                f"this version knows up to {SCHEMA_VERSION}. Upgrade chatledger."
            )
        for version in range(before + 1, SCHEMA_VERSION + 1):
            await conn.execute(_sql(MIGRATIONS[version - 1], schema))
            await conn.execute(_sql(RECORD_VERSION, schema), version)
            logger.info("PostgreSQL schema {} migrated to version {}", schema, version)
    return before, SCHEMA_VERSION


async def migrate_database(dsn: str, schema: str) -> tuple[int, int]:
    """Connect, migrate `schema`, disconnect: `chatledger migrate`."""
    conn = await connect(dsn)
    try:
        return await migrate(conn, schema)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise TransientError(f"migration failed: {_describe(exc)}") from exc
    finally:
        if not conn.is_closed():
            conn.terminate()


class PostgresSink(SinkDefaults):
    """Delivers batches in one transaction each; reconnects (and re-checks the schema) after errors."""

    name = "postgres"
    batch_size = BATCH_SIZE

    def __init__(self, dsn: str, schema: str):
        self._dsn = dsn
        self.schema = schema
        self._conn: asyncpg.Connection | None = None
        self._statements = {
            key: _sql(template, schema)
            for key, template in {
                "events": INSERT_EVENTS,
                "conversations": UPSERT_CONVERSATIONS,
                "interactions": INSERT_INTERACTIONS,
                "escalations": INSERT_ESCALATIONS,
                "api_interactions": UPSERT_API_INTERACTIONS,
                "escalation_updates": UPDATE_ESCALATIONS,
                "escalations_held": ESCALATIONS_HELD,
                "reported": UPSERT_REPORTED_STATUS,
                "conversation_updates": UPDATE_CONVERSATIONS,
                "status": APPLY_STATUS_EVENTS,
                "refresh": REFRESH_CONVERSATIONS,
            }.items()
        }

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        conn = await connect(self._dsn)
        try:
            await migrate(conn, self.schema)
        except SetupError:
            await conn.close()
            raise
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            conn.terminate()
            raise TransientError(f"PostgreSQL schema check failed: {_describe(exc)}") from exc
        self._conn = conn
        return conn

    async def check(self) -> None:
        conn = await self._connection()
        try:
            await conn.fetchval("SELECT 1")
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            await self._drop()
            raise TransientError(_describe(exc)) from exc

    async def deliver(self, events: Sequence[StoredEvent]) -> None:
        conn = await self._connection()
        try:
            async with conn.transaction():
                await self._write(conn, events, map_events(events))
        except asyncpg.PostgresError as exc:
            if (exc.sqlstate or "")[:2] in POISON_CLASSES:
                raise PermanentError(_describe(exc)) from exc
            await self._drop()
            raise TransientError(_describe(exc)) from exc
        except (TimeoutError, OSError, asyncpg.InterfaceError) as exc:
            await self._drop()
            raise TransientError(_describe(exc)) from exc

    async def _write(self, conn: asyncpg.Connection, events: Sequence[StoredEvent], records: Records) -> None:
        sql = self._statements
        await conn.execute(
            sql["events"],
            *_columns(
                [
                    (
                        e.dedup_key,
                        e.title,
                        e.service,
                        e.bot_id,
                        e.contact_id,
                        parse_time(e.received_at),
                        jsonb_text(e.raw),
                    )
                    for e in events
                ],
                7,
            ),
        )
        if records.conversations:
            await self._write_conversations(conn, records)
        if records.escalation_updates:  # after the escalations they may follow in the same batch
            await _refuse_orphan_updates(conn, sql["escalations_held"], records)
            await conn.executemany(
                sql["escalation_updates"],
                [
                    (u.escalation_id, u.status, u.assigned_agent, u.resolved_at, u.notes)
                    for u in records.escalation_updates
                ],
            )

    async def _write_conversations(self, conn: asyncpg.Connection, records: Records) -> None:
        sql = self._statements
        await conn.execute(
            sql["conversations"],
            *_columns(
                [
                    (
                        c.conversation_id,
                        c.customer_phone,
                        c.customer_name,
                        c.first_at,
                        c.last_at,
                        c.bot_id,
                        c.contact_id,
                        c.service,
                    )
                    for c in records.conversations
                ],
                8,
            ),
        )
        # once each: an upsert may not touch a row twice in one statement
        webhook = list(
            {i.interaction_id: i for i in records.interactions if not i.from_api and not i.reported}.values()
        )
        if webhook:
            await conn.execute(sql["interactions"], *_columns(_interaction_values(webhook), 8))
        reported: dict[str, InteractionRow] = {}  # once each, the furthest status of the batch
        for i in records.interactions:
            if i.reported and (
                i.interaction_id not in reported
                or status_rank(i.status) > status_rank(reported[i.interaction_id].status)
            ):
                reported[i.interaction_id] = i
        if reported:
            await conn.execute(sql["reported"], *_columns(_interaction_values(reported.values()), 8))
        for i in records.interactions:  # one by one: a batch may enrich the same row twice
            if i.from_api:
                await conn.execute(
                    sql["api_interactions"],
                    *_columns([(*_message_values(i), i.intent, i.response, i.processing_time_ms, i.error_message)], 12),
                )
        if records.escalations:
            await conn.execute(
                sql["escalations"],
                *_columns(
                    [
                        (
                            x.escalation_id,
                            x.ticket_id,
                            x.conversation_id,
                            x.reason,
                            x.priority,
                            x.status,
                            x.customer_phone,
                            x.created_at,
                            x.notes,
                            x.assigned_agent,
                        )
                        for x in records.escalations
                    ],
                    10,
                ),
            )
        if records.conversation_updates:
            await conn.executemany(
                sql["conversation_updates"],
                [
                    (
                        u.conversation_id,
                        u.intent,
                        u.sentiment,
                        u.priority,
                        u.assigned_agent,
                        json.dumps(list(u.tags)) if u.tags is not None else None,
                        json.dumps(u.metadata) if u.metadata is not None else None,
                    )
                    for u in records.conversation_updates
                ],
            )
        if records.status_changes:
            await conn.execute(
                sql["status"], *_columns([(s.conversation_id, s.title, s.at, s.key) for s in records.status_changes], 4)
            )
        await conn.execute(sql["refresh"], [c.conversation_id for c in records.conversations])

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 5)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                conn.terminate()


def _message_values(i: InteractionRow) -> tuple[Any, ...]:
    """The eight columns every interaction row writes (the bot API's add their own after them)."""
    return (
        i.interaction_id,
        i.conversation_id,
        i.message_id,
        i.direction,
        i.content,
        i.status,
        i.customer_phone,
        i.occurred_at,
    )


def _interaction_values(rows: Iterable[InteractionRow]) -> list[tuple[Any, ...]]:
    return [_message_values(i) for i in rows]


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows -> one list per column, the shape `unnest($1::type[], ...)` takes."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows)]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncpg.PostgresError) and exc.sqlstate:
        return f"{type(exc).__name__} [{exc.sqlstate}]: {exc}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _refuse_orphan_updates(conn: asyncpg.Connection, held_sql: str, records: Records) -> None:
    """An update of an escalation PostgreSQL does not hold (its creation a dead letter, or lost with the
    database) would change nothing yet count as delivered: refused instead, so that it waits, as a dead letter
    saying why, for the escalation."""
    ids = list(dict.fromkeys(update.escalation_id for update in records.escalation_updates))
    held = {row[0] for row in await conn.fetch(held_sql, ids)}
    missing = [escalation_id for escalation_id in ids if escalation_id not in held]
    if missing:
        raise PermanentError(
            f"escalation {missing[0]!r} is not in PostgreSQL, so its update would change nothing: deliver the "
            "escalation (chatledger dead, replay --dead) or recover it from Airtable, then replay this"
        )
