"""The operations when no daemon answers: open the journal (under its lock, or read-only beside a
daemon that may start meanwhile) and the sinks from the config, run one operation, close them.

Airtable gets a sink of its own, reached through its access, whose budget starts empty: a daemon just
stopped may have spent this second's requests. JournalError (the journal cannot be opened) is the caller's to report."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from daemon import operations
from daemon.config import Config
from daemon.journal import Journal, JournalError, Requeue

if TYPE_CHECKING:
    from daemon.sinks.airtable import BaseAccess


@asynccontextmanager
async def _journal(config: Config) -> AsyncIterator[Journal]:
    journal = await Journal.open(config.journal.path, config.enabled_sinks)
    try:
        yield journal
    finally:
        await journal.close()


@asynccontextmanager
async def _airtable(config: Config) -> AsyncIterator[BaseAccess | None]:
    """The base through an Airtable sink with a budget of its own, or None when Airtable is not configured."""
    if not config.airtable.enabled:
        yield None
        return
    from daemon.sinks.airtable import AirtableSink

    sink = AirtableSink.from_config(config.airtable, None)
    try:
        yield sink.access()
    finally:
        await sink.close()


async def requeue(config: Config, sink: str | None, selection: Requeue) -> dict[str, int]:
    async with _journal(config) as journal:
        return await operations.requeue(journal, config.enabled_sinks, sink, selection)


async def discard_dead(config: Config, sink: str | None, event: str | None, reason: str, by: str) -> dict[str, Any]:
    async with _journal(config) as journal:
        return await operations.discard_dead(journal, config.enabled_sinks, sink, event, reason, by)


async def discard_quarantine(config: Config, element: int | None, reason: str, by: str) -> dict[str, Any]:
    async with _journal(config) as journal:
        return await operations.discard_quarantine(journal, element, reason, by)


async def recover(
    config: Config, selection: Any, options: dict[str, Any], progress: Callable[[dict[str, Any]], Any] | None
) -> dict[str, Any]:
    async with _airtable(config) as airtable:
        if airtable is None:  # the command checks the config first
            return {"error": "recover needs [airtable] configured"}
        return await operations.recover(airtable, operations.postgres_rows(config), selection, options, progress)


async def forget(config: Config, phone: str, reference: str | None, dry_run: bool) -> dict[str, Any]:
    async with _airtable(config) as airtable, _journal(config) as journal:
        return await operations.forget(journal, config, airtable, phone, reference, dry_run)


async def show(config: Config, conversation: str | None, phone: str | None, limit: int) -> dict[str, Any]:
    """The reads with the journal read-only (no lock: a daemon may start meanwhile); a journal that cannot
    be opened is a store that did not answer."""
    from daemon.journal import JournalReader

    down: dict[str, str] = {}
    journal = None
    try:
        journal = await JournalReader.open(config.journal.path)
    except JournalError as exc:
        down["journal"] = f"journal: {exc}"
    try:
        async with _airtable(config) as airtable:
            return await operations.show(journal, config, airtable, conversation, phone, limit, down)
    finally:
        if journal is not None:
            await journal.close()


async def airtable_base(config: Config, action: str) -> dict[str, Any]:
    async with _airtable(config) as airtable:
        if airtable is None:  # the command checks the config first
            return {"error": "Airtable is not configured"}
        return await operations.airtable_base(airtable, action)


async def reconcile(config: Config, since: datetime, bot_ids: Sequence[str], progress: Any) -> Any:
    """A reconciliation with a SendPulse client of its own: the report (daemon.reconcile.Report)."""
    from daemon.ratelimit import RequestBudget
    from daemon.reconcile import reconcile as run
    from daemon.sendpulse import SendPulseClient

    settings = config.sendpulse
    async with _journal(config) as journal:
        budget = RequestBudget(settings.requests_per_second, start_empty=True)
        async with SendPulseClient(
            settings.api_url, settings.client_id, settings.client_secret.get_secret_value(), budget
        ) as client:
            return await run(client, journal, since, bot_ids=bot_ids, progress=progress)
