"""Row-level reads and writes on chatledger's PostgreSQL schema outside delivery: `recover` and `forget`.

Rows travel as JSON objects keyed by column name (jsonb_populate_recordset does the typing), so the
callers build plain dicts and never know asyncpg.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import asyncpg

from daemon.sinks.base import PermanentError, TransientError
from daemon.sinks.postgres import POISON_CLASSES, REFRESH_CONVERSATIONS, _describe, connect, migrate, quote_ident

KEYS = {"conversations": "conversation_id", "interactions": "interaction_id", "escalations": "escalation_id"}

EXISTING = "SELECT to_jsonb(t) FROM {s}.{table} AS t WHERE t.{key} = ANY($1::text[])"
INSERT_ROWS = """
INSERT INTO {s}.{table} ({columns})
SELECT {columns} FROM jsonb_populate_recordset(NULL::{s}.{table}, $1::jsonb)
ON CONFLICT DO NOTHING
RETURNING {key}
"""
UPDATE_ROWS = """
UPDATE {s}.{table} AS t SET {assignments}
FROM jsonb_populate_recordset(NULL::{s}.{table}, $1::jsonb) AS r
WHERE t.{key} = r.{key}
"""
# Airtable's interactions carry no phone: a recovered one takes its conversation's.
FILL_INTERACTION_PHONES = """
UPDATE {s}.interactions AS i SET customer_phone = c.customer_phone
FROM {s}.conversations AS c
WHERE i.interaction_id = ANY($1::text[]) AND i.customer_phone IS NULL AND c.conversation_id = i.conversation_id
"""
INTERACTIONS_OF = """
SELECT to_jsonb(i) FROM {s}.interactions AS i WHERE i.conversation_id = $1 ORDER BY i.occurred_at, i.interaction_id LIMIT $2
"""
ESCALATIONS_OF = """
SELECT to_jsonb(e) FROM {s}.escalations AS e WHERE e.conversation_id = $1 ORDER BY e.created_at, e.escalation_id LIMIT $2
"""
CONVERSATIONS_OF_PHONE = "SELECT conversation_id FROM {s}.conversations WHERE customer_phone = $1"
# One person's rows: their conversations, everything attached to them, and any interaction, escalation or
# raw event that carries the phone (a raw event by its contact or its contact.phone, never by its text).
FORGET_PHONE = """
WITH targets AS (
    SELECT conversation_id, metadata ->> 'contact_id' AS contact_id FROM {s}.conversations
    WHERE customer_phone = $1 OR conversation_id = ANY($2::text[])
), interactions AS (
    DELETE FROM {s}.interactions
    WHERE customer_phone = $1 OR conversation_id IN (SELECT conversation_id FROM targets)
    RETURNING 1
), escalations AS (
    DELETE FROM {s}.escalations
    WHERE customer_phone = $1 OR conversation_id IN (SELECT conversation_id FROM targets)
    RETURNING 1
), events AS (
    DELETE FROM {s}.events
    WHERE event_id = ANY($3::text[])
       OR contact_id IN (SELECT contact_id FROM targets)
       OR regexp_replace(payload #>> '{{contact,phone}}', '\\D', '', 'g') = $1
    RETURNING 1
)
SELECT (SELECT count(*) FROM targets) AS conversations,
       (SELECT count(*) FROM interactions) AS interactions,
       (SELECT count(*) FROM escalations) AS escalations,
       (SELECT count(*) FROM events) AS events
"""
DELETE_CONVERSATIONS = """
DELETE FROM {s}.conversations WHERE customer_phone = $1 OR conversation_id = ANY($2::text[])
"""


class PostgresRows:
    """One connection to the schema (migrated first) for an operator's command."""

    def __init__(self, conn: asyncpg.Connection, schema: str):
        self._conn = conn
        self.schema = schema

    @classmethod
    @asynccontextmanager
    async def open(cls, dsn: str, schema: str, migrate_schema: bool = True) -> AsyncIterator["PostgresRows"]:
        """A session; migrate_schema=False for reads beside a daemon whose sink already migrated it."""
        conn = await connect(dsn)
        try:
            if migrate_schema:
                await migrate(conn, schema)
            await conn.execute("SET TIME ZONE 'UTC'")
            yield cls(conn, schema)
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise TransientError(f"PostgreSQL: {_describe(exc)}") from exc
        finally:
            if not conn.is_closed():
                conn.terminate()

    def _sql(self, template: str, table: str = "", columns: Sequence[str] = ()) -> str:
        return template.format(s=quote_ident(self.schema), table=quote_ident(table) if table else "",
                               key=KEYS.get(table, ""), columns=", ".join(columns),
                               assignments=", ".join(f"{c} = r.{c}" for c in columns))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """A transaction; rows PostgreSQL refuses for their data roll it back and raise PermanentError."""
        try:
            async with self._conn.transaction():
                yield
        except asyncpg.PostgresError as exc:
            if (exc.sqlstate or "")[:2] in POISON_CLASSES:
                raise PermanentError(_describe(exc)) from exc
            raise

    async def existing(self, table: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The rows of `table` with these ids, as JSON objects (timestamps as ISO text in UTC)."""
        rows = await self._conn.fetch(self._sql(EXISTING, table), list(ids))
        return {row[KEYS[table]]: row for row in (json.loads(r[0]) for r in rows)}

    async def insert(self, table: str, rows: Sequence[dict[str, Any]]) -> set[str]:
        """Insert the rows no unique key already holds; the ids inserted."""
        if not rows:
            return set()
        columns = list(rows[0])
        inserted = await self._conn.fetch(self._sql(INSERT_ROWS, table, columns), json.dumps(list(rows)))
        return {r[0] for r in inserted}

    async def update(self, table: str, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
        if rows and columns:
            await self._conn.execute(self._sql(UPDATE_ROWS, table, columns), json.dumps(list(rows)))

    async def refresh(self, conversation_ids: Sequence[str]) -> None:
        """Recompute message counts, spans and status from the interactions (as delivery does)."""
        if conversation_ids:
            await self._conn.execute(self._sql(REFRESH_CONVERSATIONS), list(conversation_ids))

    async def fill_interaction_phones(self, interaction_ids: Sequence[str]) -> None:
        if interaction_ids:
            await self._conn.execute(self._sql(FILL_INTERACTION_PHONES), list(interaction_ids))

    async def interactions_of(self, conversation_id: str, limit: int) -> list[dict[str, Any]]:
        return [json.loads(r[0]) for r in await self._conn.fetch(self._sql(INTERACTIONS_OF), conversation_id, limit)]

    async def escalations_of(self, conversation_id: str, limit: int) -> list[dict[str, Any]]:
        return [json.loads(r[0]) for r in await self._conn.fetch(self._sql(ESCALATIONS_OF), conversation_id, limit)]

    async def conversations_of(self, phone: str) -> list[str]:
        return [r[0] for r in await self._conn.fetch(self._sql(CONVERSATIONS_OF_PHONE), phone)]

    async def forget(self, phone: str, conversation_ids: Sequence[str], event_ids: Sequence[str]) -> dict[str, int]:
        """Delete every row of this phone (and of these conversations and events); counts per table."""
        try:
            async with self._conn.transaction():
                counts = dict(await self._conn.fetchrow(self._sql(FORGET_PHONE), phone, list(conversation_ids),
                                                        list(event_ids)))
                await self._conn.execute(self._sql(DELETE_CONVERSATIONS), phone, list(conversation_ids))
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise TransientError(f"PostgreSQL: {_describe(exc)}; nothing was erased there") from exc
        return counts
