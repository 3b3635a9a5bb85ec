"""[airtable] retention_days: room in the base (a plan caps its records) by deleting what is old there
and that PostgreSQL holds.

Interactions older than the cutoff (their Timestamp) go first, then escalations (CreatedAt), then
conversations whose LastActivity is older too. A record is deleted only when PostgreSQL holds the
row it copies (looked up by its key), so Airtable's copy is never the last one. The cutoff is taken
at the start of its UTC day, which a date field without time compares alike. Ids are gathered a
table at a time before anything of that table is deleted (deleting under a listing's offset could
skip records), and every request waits for `spare()`: deliveries go first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timezone

from loguru import logger
from pyairtable.formulas import LT, Field, to_formula_str

from daemon.sinks.airtable import RECORDS_PER_REQUEST, AirtableClient, pages, patiently
from daemon.sinks.airtable_schema import KEYS, BaseNames
from daemon.sinks.postgres_rows import PostgresRows

ORDER = ("interactions", "escalations", "conversations")  # a conversation goes after what refers to it
OLD_BY = {"interactions": "Timestamp", "escalations": "CreatedAt", "conversations": "LastActivity"}


def day_start(moment: datetime) -> datetime:
    moment = moment.astimezone(timezone.utc)
    return datetime(moment.year, moment.month, moment.day, tzinfo=timezone.utc)


async def purge_airtable(client: AirtableClient, names: BaseNames,
                         postgres: Callable[[], AbstractAsyncContextManager[PostgresRows]], cutoff: datetime,
                         spare: Callable[[], Awaitable[None]]) -> dict[str, int]:
    """Delete the records older than `cutoff` that PostgreSQL holds; how many, per table."""
    before = day_start(cutoff)
    deleted = {kind: 0 for kind in ORDER}
    for kind in ORDER:
        table, key = names[kind], names.field(kind, KEYS[kind])
        formula = to_formula_str(LT(Field(names.field(kind, OLD_BY[kind])), before))
        found: dict[str, str] = {}  # record id -> its key
        async for page in pages(client, table, formula, fields=[key], before_each=spare):
            found.update((record["id"], record.get("fields", {}).get(key)) for record in page
                         if record.get("fields", {}).get(key))
        if not found:
            continue
        async with postgres() as pg:
            held = await pg.existing(kind, list(set(found.values())))
        doomed = [record_id for record_id, value in found.items() if value in held]
        for start in range(0, len(doomed), RECORDS_PER_REQUEST):
            chunk = doomed[start:start + RECORDS_PER_REQUEST]
            await spare()
            await patiently(lambda: client.delete(table, chunk))
            deleted[kind] += len(chunk)
        kept = len(found) - len(doomed)
        logger.info("airtable retention: {} {} older than {} deleted{}", deleted[kind], table, before.date(),
                    f", {kept} kept (PostgreSQL does not hold them)" if kept else "")
    return deleted
