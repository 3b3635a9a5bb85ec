"""`chatledger forget --phone`: erase one person from the journal, PostgreSQL and Airtable (LGPD).

Order matters. Everything is looked up first, so that a store that cannot be reached stops the
erasure before anything is erased. Then the journal (so no delivery can bring the data back), then
a wait for any delivery that had already read it, then PostgreSQL, then Airtable, looked up again
(a delivery may have added records since the first look) and erased interactions and escalations
before their conversations, so that a run cut short finds the rest when run again. An
audit entry keeps the time, the counts per store, the phone's last four digits and the operator's
reference; nothing the phone could be found from (a hash would be: phone numbers are few enough to
try them all). Later messages from that phone are journaled and delivered as usual.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from daemon.journal import Journal
from daemon.recover import ids_formulas, phone_formula
from daemon.sinks.airtable import RECORDS_PER_REQUEST, AirtableClient, pages, patiently
from daemon.sinks.airtable_schema import BaseNames
from daemon.sinks.base import SinkError
from daemon.sinks.postgres_rows import PostgresRows


@dataclass
class ForgetReport:
    stores: dict[str, Any] = field(default_factory=dict)
    complete: bool = True
    error: str | None = None
    audit: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"stores": self.stores, "complete": self.complete, "error": self.error, "audit": self.audit}


async def _airtable_targets(client: AirtableClient, tables: dict[str, str], phone: str,
                            conversation_ids: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Airtable record ids to delete per table, and the conversation ids Airtable adds."""
    names = BaseNames.of(tables)
    found: dict[str, list[str]] = {kind: [] for kind in names}
    ids = list(conversation_ids)
    conversation_field = names.field("conversations", "ConversationId")
    async for page in pages(client, names["conversations"],
                            phone_formula(names.field("conversations", "CustomerPhone"), phone)):
        for record in page:
            found["conversations"].append(record["id"])
            conversation = record.get("fields", {}).get(conversation_field)
            if conversation and conversation not in ids:
                ids.append(conversation)
    for formula in ids_formulas(names.field("conversations", "ConversationId"), ids):
        async for page in pages(client, names["conversations"], formula):
            found["conversations"] += [r["id"] for r in page if r["id"] not in found["conversations"]]
    for formula in ids_formulas(names.field("interactions", "ConversationId"), ids):
        async for page in pages(client, names["interactions"], formula):
            found["interactions"] += [r["id"] for r in page]
    escalation_formulas = [phone_formula(names.field("escalations", "CustomerPhone"), phone)] + \
        ids_formulas(names.field("escalations", "ConversationId"), ids)
    for formula in escalation_formulas:
        async for page in pages(client, names["escalations"], formula):
            found["escalations"] += [r["id"] for r in page if r["id"] not in found["escalations"]]
    return found, ids


async def _airtable_delete(client: AirtableClient, tables: dict[str, str], found: dict[str, list[str]],
                           counts: dict[str, int]) -> None:
    for kind in ("interactions", "escalations", "conversations"):
        record_ids = found[kind]
        for start in range(0, len(record_ids), RECORDS_PER_REQUEST):
            chunk = record_ids[start:start + RECORDS_PER_REQUEST]
            await patiently(lambda: client.delete(tables[kind], chunk))
            counts[kind] += len(chunk)


async def forget_phone(
    phone: str, journal: Journal, *,
    postgres: Callable[[], AbstractAsyncContextManager[PostgresRows]] | None,
    airtable: tuple[AirtableClient, dict[str, str]] | None,
    quiesce: Callable[[], Awaitable[None]] | None = None, reference: str | None = None,
) -> ForgetReport:
    """Erase `phone` (digits) from every configured store; the report is also the audit entry's."""
    report = ForgetReport()
    conversation_ids = await journal.conversations_of_phone(phone)
    async with AsyncExitStack() as stack:
        pg = await stack.enter_async_context(postgres()) if postgres else None
        if pg is not None:
            conversation_ids += [c for c in await pg.conversations_of(phone) if c not in conversation_ids]
        if airtable is not None:  # what Airtable knows of the person (and that it answers)
            _, conversation_ids = await _airtable_targets(*airtable, phone, conversation_ids)
        # Every store answered: erase, the journal first.
        counts, event_keys = await journal.forget(phone, conversation_ids)
        if not await journal.checkpoint():
            logger.warning("forget: the journal's WAL stayed busy; SQLite truncates it at its next checkpoint")
        report.stores["journal"] = counts
        if quiesce is not None:
            await quiesce()
        try:
            if pg is not None:
                report.stores["postgres"] = await pg.forget(phone, conversation_ids, event_keys)
            if airtable is not None:
                # looked up again: a delivery that finished after the first look may have added records
                found, _ = await _airtable_targets(*airtable, phone, conversation_ids)
                done = report.stores["airtable"] = {kind: 0 for kind in ("conversations", "interactions",
                                                                         "escalations")}
                await _airtable_delete(*airtable, found, done)
        except SinkError as exc:
            report.complete, report.error = False, str(exc)
    if "journal" in report.stores:
        report.stores.setdefault("postgres", "not configured")
        report.stores.setdefault("airtable", "not configured")
        report.audit = await journal.audit("forget", {"stores": report.stores, "complete": report.complete},
                                           last4=phone[-4:], reference=reference)
        logger.info("forget: erased phone ...{} (reference {}): {}", phone[-4:], reference, report.stores)
    return report
