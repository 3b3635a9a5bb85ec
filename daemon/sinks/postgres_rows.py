"""Row-level reads and writes on chatledger's PostgreSQL schema outside delivery: `recover` and `forget`.

Rows travel as JSON objects keyed by column name (jsonb_populate_recordset does the typing), so the
callers build plain dicts and never know asyncpg.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

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
# Rows recover replaces, each only in the columns $2 names for it ({key: [column, ...]}), never with a NULL;
# kept whole before and after in recover_backup under the run's id. One statement, so one snapshot: `old` reads
# the rows as they were before `new` changed them.
REPLACE_ROWS = """
WITH given AS (
    SELECT r.*, c.value AS replaced
    FROM jsonb_populate_recordset(NULL::{s}.{table}, $1::jsonb) AS r
    JOIN jsonb_each($2::jsonb) AS c ON c.key = r.{key}
), old AS (
    SELECT t.{key} AS k, to_jsonb(t) AS row FROM {s}.{table} AS t WHERE t.{key} IN (SELECT {key} FROM given)
), new AS (
    UPDATE {s}.{table} AS t SET {assignments}
    FROM given AS r WHERE t.{key} = r.{key}
    RETURNING t.{key} AS k, to_jsonb(t) AS row
)
INSERT INTO {s}.recover_backup (run_id, table_name, row_key, columns, old_row, new_row)
SELECT $3, $4, new.k, ARRAY(SELECT jsonb_array_elements_text(g.replaced)), old.row, new.row
FROM new JOIN old USING (k) JOIN given AS g ON g.{key} = new.k
"""
BACKUP_OF_RUN = """
SELECT id, table_name, row_key, columns, old_row, new_row, undone_at FROM {s}.recover_backup
WHERE run_id = $1 ORDER BY id DESC
"""
CURRENT_ROW = "SELECT to_jsonb(t) FROM {s}.{table} AS t WHERE t.{key} = $1 FOR UPDATE"
RESTORE_ROW = """
UPDATE {s}.{table} AS t SET {restore} FROM jsonb_populate_record(NULL::{s}.{table}, $1::jsonb) AS r
WHERE t.{key} = $2
"""
MARK_UNDONE = "UPDATE {s}.recover_backup SET undone_at = now() WHERE run_id = $1 AND undone_at IS NULL"
# Airtable's interactions carry no phone: a recovered one takes its conversation's.
FILL_INTERACTION_PHONES = """
UPDATE {s}.interactions AS i SET customer_phone = c.customer_phone
FROM {s}.conversations AS c
WHERE i.interaction_id = ANY($1::text[]) AND i.customer_phone IS NULL AND c.conversation_id = i.conversation_id
"""
INTERACTIONS_OF = """
SELECT to_jsonb(i) FROM {s}.interactions AS i WHERE i.conversation_id = $1
ORDER BY i.occurred_at, i.interaction_id LIMIT $2
"""
ESCALATIONS_OF = """
SELECT to_jsonb(e) FROM {s}.escalations AS e WHERE e.conversation_id = $1
ORDER BY e.created_at, e.escalation_id LIMIT $2
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
# What FORGET_PHONE and DELETE_CONVERSATIONS would delete (`forget --dry-run`): the same terms, counted.
COUNT_PHONE = """
WITH targets AS (
    SELECT conversation_id, metadata ->> 'contact_id' AS contact_id FROM {s}.conversations
    WHERE customer_phone = $1 OR conversation_id = ANY($2::text[])
)
SELECT (SELECT count(*) FROM targets) AS conversations,
       (SELECT count(*) FROM {s}.interactions
        WHERE customer_phone = $1 OR conversation_id IN (SELECT conversation_id FROM targets)) AS interactions,
       (SELECT count(*) FROM {s}.escalations
        WHERE customer_phone = $1 OR conversation_id IN (SELECT conversation_id FROM targets)) AS escalations,
       (SELECT count(*) FROM {s}.events
        WHERE event_id = ANY($3::text[])
           OR contact_id IN (SELECT contact_id FROM targets)
           OR regexp_replace(payload #>> '{{contact,phone}}', '\\D', '', 'g') = $1) AS events
"""


class PostgresRows:
    """One connection to the schema (migrated first) for an operator's command."""

    def __init__(self, conn: asyncpg.Connection, schema: str):
        self._conn = conn
        self.schema = schema

    @classmethod
    @asynccontextmanager
    async def open(cls, dsn: str, schema: str, migrate_schema: bool = True) -> AsyncIterator[PostgresRows]:
        """A session; migrate_schema=False for reads beside a daemon whose sink already migrated it."""
        conn = await connect(dsn)
        try:
            if migrate_schema:
                await migrate(conn, schema)
            await conn.execute("SET TIME ZONE 'UTC'")
            yield cls(conn, schema)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise TransientError(f"PostgreSQL: {_describe(exc)}") from exc
        finally:
            if not conn.is_closed():
                conn.terminate()

    def _sql(self, template: str, table: str = "", columns: Sequence[str] = ()) -> str:
        names = [quote_ident(c) for c in columns]
        return template.format(
            s=quote_ident(self.schema),
            table=quote_ident(table) if table else "",
            key=KEYS.get(table, ""),
            columns=", ".join(names),
            assignments=", ".join(f"{c} = coalesce(r.{c}, t.{c})" for c in names),
            restore=", ".join(f"{c} = r.{c}" for c in names),
        )

    @asynccontextmanager
    async def transaction(self, rollback: bool = False) -> AsyncIterator[None]:
        """A transaction (rolled back at its end when `rollback`: a dry run); rows PostgreSQL refuses for their
        data roll it back and raise PermanentError."""
        transaction = self._conn.transaction()
        await transaction.start()
        try:
            yield
        except BaseException as exc:
            await transaction.rollback()
            if isinstance(exc, asyncpg.PostgresError) and (exc.sqlstate or "")[:2] in POISON_CLASSES:
                raise PermanentError(_describe(exc)) from exc
            raise
        if rollback:
            await transaction.rollback()
        else:
            await transaction.commit()

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

    async def replace(
        self, table: str, rows: Sequence[dict[str, Any]], columns: dict[str, Sequence[str]], run_id: str
    ) -> None:
        """Replace, in each row, the columns named for its key (a NULL given never replaces a value); the rows
        are kept before and after in recover_backup under `run_id`."""
        if not rows:
            return
        key = KEYS[table]
        given = [{key: row[key], **{c: row[c] for c in columns[row[key]]}} for row in rows]
        names = list(dict.fromkeys(c for row in rows for c in columns[row[key]]))
        await self._conn.execute(
            self._sql(REPLACE_ROWS, table, names),
            json.dumps(given),
            json.dumps({row[key]: list(columns[row[key]]) for row in rows}),
            run_id,
            table,
        )

    async def undo(self, run_id: str) -> dict[str, Any] | None:
        """Put back what recover run `run_id` replaced, column by column, where the row still holds what the run
        wrote (a value changed since is left as it is, and said); None when there is no such run."""
        entries = await self._conn.fetch(self._sql(BACKUP_OF_RUN), run_id)
        if not entries:
            return None
        undone_at = max((e["undone_at"] for e in entries if e["undone_at"]), default=None)
        out: dict[str, Any] = {
            "run_id": run_id,
            "restored": {t: 0 for t in KEYS},
            "left": [],
            "undone_at": undone_at.isoformat() if undone_at else None,
        }
        if undone_at:
            return out
        conversations: list[str] = []
        async with self._conn.transaction():
            for entry in entries:  # newest first: a row replaced twice ends as it was first
                table, key = entry["table_name"], entry["row_key"]
                old, new = json.loads(entry["old_row"]), json.loads(entry["new_row"])
                current = await self._conn.fetchval(self._sql(CURRENT_ROW, table), key) if table in KEYS else None
                if current is None:
                    out["left"].append(
                        {"table": table, "key": key, "columns": list(entry["columns"]), "why": "the row is gone"}
                    )
                    continue
                current = json.loads(current)
                columns = [c for c in entry["columns"] if c in old]  # a column name never reaches SQL unchecked
                back = [c for c in columns if current.get(c) == new.get(c)]
                changed = [c for c in columns if c not in back]
                if changed:
                    out["left"].append({"table": table, "key": key, "columns": changed, "why": "changed since"})
                if back:
                    await self._conn.execute(self._sql(RESTORE_ROW, table, back), json.dumps(old), key)
                    out["restored"][table] += 1
                    conversations += [old["conversation_id"], new["conversation_id"]]
            await self.refresh(list(dict.fromkeys(conversations)))
            if any(out["restored"].values()):  # an undo that put nothing back may be tried again later
                await self._conn.execute(self._sql(MARK_UNDONE), run_id)
        return out

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
                counts = dict(
                    await self._conn.fetchrow(self._sql(FORGET_PHONE), phone, list(conversation_ids), list(event_ids))
                )
                await self._conn.execute(self._sql(DELETE_CONVERSATIONS), phone, list(conversation_ids))
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise TransientError(f"PostgreSQL: {_describe(exc)}; nothing was erased there") from exc
        return counts

    async def forget_counts(
        self, phone: str, conversation_ids: Sequence[str], event_ids: Sequence[str]
    ) -> dict[str, int]:
        """What forget() would delete, per table, deleting nothing."""
        try:
            return dict(
                await self._conn.fetchrow(self._sql(COUNT_PHONE), phone, list(conversation_ids), list(event_ids))
            )
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise TransientError(f"PostgreSQL: {_describe(exc)}") from exc
