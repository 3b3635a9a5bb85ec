"""`chatledger forget --phone`: erase one person from the journal, PostgreSQL and Airtable (LGPD).

Order matters. Everything is looked up first, so that a store that cannot be reached stops the
erasure before anything is erased. Then the journal (so no delivery can bring the data back), then
a wait for any delivery that had already read it, then PostgreSQL, then Airtable, looked up again
(a delivery may have added records since the first look) and erased interactions and escalations
before their conversations, so that a run cut short finds the rest when run again. An
audit entry keeps the time, the counts per store, the phone's last four digits and the operator's
reference; nothing the phone could be found from (a hash would be: phone numbers are few enough to
try them all). Later messages from that phone are journaled and delivered as usual. A field the base
lacks (a delivery warning only) cannot be searched: that lookup is skipped and the report's notes say
what could not be found through it, rather than the whole erasure failing on a formula Airtable refuses.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from daemon.journal import Journal
from daemon.sinks.airtable_client import (
    RECORDS_PER_REQUEST,
    AirtableClient,
    ids_formulas,
    pages,
    patiently,
    phone_formula,
    read_plan,
)
from daemon.sinks.airtable_fields import FIELD_OF, KEYS, BaseNames
from daemon.sinks.airtable_schema import BasePlan
from daemon.sinks.base import SinkError
from daemon.sinks.postgres_rows import PostgresRows


@dataclass
class ForgetReport:
    stores: dict[str, Any] = field(default_factory=dict)
    complete: bool = True
    error: str | None = None
    audit: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)  # what could not be searched, and what that leaves
    dry_run: bool = False  # `stores` counts what would be erased; nothing was

    def as_dict(self) -> dict[str, Any]:
        return {
            "stores": self.stores,
            "complete": self.complete,
            "error": self.error,
            "audit": self.audit,
            "notes": self.notes,
            "dry_run": self.dry_run,
        }


Delete = Callable[[str, list[str]], Awaitable[None]]


class _Lookups:
    """Which fields of the base can be searched (its plan), and a note for each lookup that cannot. A field is
    named by the PostgreSQL column it copies (airtable_fields.FIELD_OF)."""

    def __init__(self, names: BaseNames, plan: BasePlan):
        self.names, self.plan = names, plan
        self.notes: list[str] = []

    def has(self, kind: str, column: str) -> bool:
        missing = {m.spec.name for m in self.plan.missing.get(kind, [])}
        return kind in self.plan.tables and FIELD_OF[kind][column] not in missing

    def field(self, kind: str, column: str, without: str) -> str | None:
        """The base's name for the field to search, or None (noted, with `without`: what that leaves)."""
        table, logical = self.names[kind], FIELD_OF[kind][column]
        if kind in self.plan.missing_tables:
            gap, without = f"table {table} is missing", "nothing to erase there"
        elif kind not in self.plan.tables:
            gap = f"{table}.{self.names.field(kind, KEYS[kind])} cannot be read as the table's key"
        elif logical in {m.spec.name for m in self.plan.missing.get(kind, [])}:
            gap = f"{table}.{self.names.field(kind, logical)} is missing from the base"
        else:
            return self.names.field(kind, logical)
        note = f"Airtable: {gap}: {without}"
        if note not in self.notes:
            self.notes.append(note)
        return None


async def _airtable_targets(
    client: AirtableClient, lookups: _Lookups, phone: str, conversation_ids: list[str]
) -> tuple[dict[str, list[str]], list[str]]:
    """Airtable record ids to delete per table, and the conversation ids Airtable adds."""
    names = lookups.names
    found: dict[str, list[str]] = {kind: [] for kind in names}
    ids = list(conversation_ids)
    key = lookups.field("conversations", "conversation_id", "no conversation could be looked up")
    phone_field = key and lookups.field(
        "conversations",
        "customer_phone",
        "conversations were looked up only by the ids the journal and PostgreSQL know",
    )
    if phone_field:
        async for page in pages(client, names["conversations"], phone_formula(phone_field, phone)):
            for record in page:
                found["conversations"].append(record["id"])
                conversation = record.get("fields", {}).get(key)
                if conversation and conversation not in ids:
                    ids.append(conversation)
    for formula in ids_formulas(key, ids) if key else []:
        async for page in pages(client, names["conversations"], formula):
            found["conversations"] += [r["id"] for r in page if r["id"] not in found["conversations"]]
    by_conversation = lookups.field(
        "interactions",
        "conversation_id",
        "no interaction could be found (they carry no phone): delete this person's messages there by hand",
    )
    for formula in ids_formulas(by_conversation, ids) if by_conversation else []:
        async for page in pages(client, names["interactions"], formula):
            found["interactions"] += [r["id"] for r in page]
    escalation_formulas = []
    neither = "no escalation could be found: delete this person's escalations there by hand"
    if phone_field := lookups.field(
        "escalations",
        "customer_phone",
        "escalations were looked up only by conversation" if lookups.has("escalations", "conversation_id") else neither,
    ):
        escalation_formulas.append(phone_formula(phone_field, phone))
    if by_conversation := lookups.field(
        "escalations",
        "conversation_id",
        "escalations were looked up only by phone" if lookups.has("escalations", "customer_phone") else neither,
    ):
        escalation_formulas += ids_formulas(by_conversation, ids)
    for formula in escalation_formulas:
        async for page in pages(client, names["escalations"], formula):
            found["escalations"] += [r["id"] for r in page if r["id"] not in found["escalations"]]
    return found, ids


async def _airtable_delete(
    delete: Delete, tables: dict[str, str], found: dict[str, list[str]], counts: dict[str, int]
) -> None:
    for kind in ("interactions", "escalations", "conversations"):
        record_ids = found[kind]
        for start in range(0, len(record_ids), RECORDS_PER_REQUEST):
            chunk = record_ids[start : start + RECORDS_PER_REQUEST]
            await patiently(lambda: delete(tables[kind], chunk))
            counts[kind] += len(chunk)


async def forget_phone(
    phone: str,
    journal: Journal,
    *,
    postgres: Callable[[], AbstractAsyncContextManager[PostgresRows]] | None,
    airtable: tuple[AirtableClient, dict[str, str]] | None,
    quiesce: Callable[[], Awaitable[None]] | None = None,
    reference: str | None = None,
    airtable_delete: Delete | None = None,
    dry_run: bool = False,
) -> ForgetReport:
    """Erase `phone` (digits) from every configured store; the report is also the audit entry's.
    `airtable_delete`: how a chunk of Airtable records is deleted (the daemon's sink keeps its count).
    `dry_run`: look everything up alike and count what would be erased, erasing and auditing nothing."""
    report = ForgetReport(dry_run=dry_run)
    lookups = None
    conversation_ids = await journal.conversations_of_phone(phone)
    async with AsyncExitStack() as stack:
        pg = await stack.enter_async_context(postgres()) if postgres else None
        if pg is not None:
            conversation_ids += [c for c in await pg.conversations_of(phone) if c not in conversation_ids]
        if airtable is not None:  # what Airtable knows of the person (and that it answers)
            client, names = airtable[0], BaseNames.of(airtable[1])
            lookups = _Lookups(names, await read_plan(client, names, probe=False))
            found, conversation_ids = await _airtable_targets(client, lookups, phone, conversation_ids)
            report.notes = lookups.notes
        if dry_run:
            counts, event_keys = await journal.forget_counts(phone, conversation_ids)
            report.stores["journal"] = counts
            if pg is not None:
                report.stores["postgres"] = await pg.forget_counts(phone, conversation_ids, event_keys)
            if airtable is not None:
                report.stores["airtable"] = {
                    kind: len(found[kind]) for kind in ("conversations", "interactions", "escalations")
                }
            report.stores.setdefault("postgres", "not configured")
            report.stores.setdefault("airtable", "not configured")
            logger.info("forget: dry run for phone ...{}, nothing erased: {}", phone[-4:], report.stores)
            return report
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
            if airtable is not None and lookups is not None:
                # looked up again: a delivery that finished after the first look may have added records
                found, _ = await _airtable_targets(airtable[0], lookups, phone, conversation_ids)
                done = report.stores["airtable"] = {
                    kind: 0 for kind in ("conversations", "interactions", "escalations")
                }
                await _airtable_delete(airtable_delete or airtable[0].delete, lookups.names, found, done)
        except SinkError as exc:
            report.complete, report.error = False, str(exc)
    if "journal" in report.stores:
        report.stores.setdefault("postgres", "not configured")
        report.stores.setdefault("airtable", "not configured")
        audited = {"stores": report.stores, "complete": report.complete}
        report.audit = await journal.audit(
            "forget", audited | ({"notes": report.notes} if report.notes else {}), last4=phone[-4:], reference=reference
        )
        logger.info("forget: erased phone ...{} (reference {}): {}", phone[-4:], reference, report.stores)
        for note in report.notes:
            logger.warning("forget: {}", note)
    return report
