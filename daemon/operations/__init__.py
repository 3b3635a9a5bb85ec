"""The operator commands' work, written once, on collaborators the caller gives.

The daemon runs each operation with its own journal, sinks and budgets when asked over the status
socket; `chatledger` runs the same one with collaborators it opens itself when no daemon answers
(daemon.operations.offline). Callers only translate: status.py from HTTP, daemon.cli into text and
exit codes. `airtable` is the base as reached through an Airtable sink (AirtableSink.access: its
client, table names and deletions), or None when Airtable is not configured.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from loguru import logger

from daemon import params
from daemon.config import Config
from daemon.journal import Journal, Requeue

if TYPE_CHECKING:
    from daemon.recover import Selection
    from daemon.sinks.airtable import BaseAccess
    from daemon.sinks.airtable_client import AirtableClient
    from daemon.sinks.airtable_fields import BaseNames

Emit = Callable[[dict[str, Any]], Awaitable[None]]  # one line of a streamed answer


def postgres_rows(config: Config, migrate_schema: bool = True) -> Any:
    """A factory of one-connection PostgresRows sessions (an async context manager), or None."""
    if not config.postgres.enabled:
        return None
    from functools import partial

    from daemon.sinks.postgres_rows import PostgresRows

    return partial(
        PostgresRows.open,
        config.postgres.dsn.get_secret_value(),
        config.postgres.schema_,
        migrate_schema=migrate_schema,
    )


def airtable_reads(airtable: BaseAccess | None) -> Callable[[], tuple[AirtableClient, BaseNames] | None]:
    """How a read reaches the base through `airtable` (None: not configured)."""
    return lambda: airtable.reads() if airtable is not None else None


# -- replay and dead letters ---------------------------------------------------------------------


async def requeue(journal: Journal, enabled: Sequence[str], sink: str | None, selection: Requeue) -> dict[str, int]:
    """Make the selected deliveries of `sink` (None: each enabled one) pending again; how many, per sink."""
    counts: dict[str, int] = {}
    for name in [sink] if sink else enabled:
        counts[name] = await journal.requeue(name, selection)
        if counts[name]:
            logger.info("{} {} of {} re-queued on request", counts[name], selection.describe(), name)
    return counts


async def discard_dead(
    journal: Journal, enabled: Sequence[str], sink: str | None, event: str | None, reason: str, by: str
) -> dict[str, Any]:
    """Give up dead letters (one event's, or all with None) of `sink` (None: each enabled one), recorded
    with who, when and why."""
    result = await journal.discard([sink] if sink else list(enabled), event, reason, by)
    if result.discarded:
        logger.info(
            "{} dead letter(s) discarded on request of {} ({}): {}",
            len(result.discarded),
            by,
            ", ".join(f"{d['sink']} event {d['event_id']}" for d in result.discarded[:20]),
            reason,
        )
    return result.as_dict()


async def discard_quarantine(journal: Journal, element: int | None, reason: str, by: str) -> dict[str, Any]:
    """Give up one quarantined element (or every open one with None), recorded with who, when and why."""
    from daemon.quarantine import discard_quarantined

    result = await discard_quarantined(journal, element, reason, by)
    if result["discarded"]:
        logger.info(
            "{} quarantined element(s) discarded on request of {} ({}): {}",
            len(result["discarded"]),
            by,
            ", ".join(map(str, result["discarded"][:20])),
            reason,
        )
    return result


# -- recover -------------------------------------------------------------------------------------


def recover_selection(conversation: str | None, phone: str | None, since: str | None, everything: bool) -> Selection:
    """The rows `recover` reads, from the command line's or the socket's words; a ValueError
    (BadParameter among them) says why they select nothing, or more than one thing."""
    from daemon.recover import Selection

    return Selection(
        conversation=conversation or None,
        everything=everything,
        phone=params.phone_digits(phone) if phone else None,
        since=params.since(since) if since else None,
    )


def recover_query(selection: Selection, prefer: str, dry_run: bool, diff: bool) -> str:
    """The selection and options as the status socket's /recover reads them back (recover_selection)."""
    return urlencode(
        {
            k: v
            for k, v in {
                "conversation": selection.conversation,
                "phone": selection.phone,
                "since": selection.since,
                "all": "1" if selection.everything else None,
                "prefer": prefer,
                "dry_run": "1" if dry_run else None,
                "diff": "1" if diff else None,
            }.items()
            if v
        }
    )


async def recover(
    airtable: BaseAccess,
    postgres: Any,
    selection: Selection,
    options: dict[str, Any],
    progress: Callable[[dict[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """Copy Airtable's rows of `selection` back into PostgreSQL (`options`: prefer, dry_run, diff):
    {"report": ...}, or {"error": ...} with "refused" when nothing was read. `progress` gets each page's
    report (without diffs) and may return an awaitable."""
    from daemon.recover import Recovery, Unselectable
    from daemon.sinks.base import SinkError

    def show(report: Any) -> Any:
        return progress(report.as_dict(diffs=False)) if progress else None

    try:
        async with postgres() as pg:
            report = await Recovery(airtable.client, airtable.names, pg, progress=show, **options).run(selection)
    except Unselectable as exc:  # nothing read, nothing written: the reason says what to do
        return {"error": str(exc), "refused": True}
    except SinkError as exc:
        return {"error": str(exc)}
    return {"report": report.as_dict()}


async def undo_recover(config: Config, run: str) -> dict[str, Any] | None:
    """Put back the PostgreSQL rows recover run `run` replaced, where nothing changed them since; None when
    there is no such run."""
    async with postgres_rows(config)() as pg:
        undone: dict[str, Any] | None = await pg.undo(run)
        return undone


# -- forget and show -----------------------------------------------------------------------------


def erasure_stores(config: Config, airtable: BaseAccess | None = None) -> dict[str, Any]:
    """The PostgreSQL and Airtable handles `forget` works on (None for a store not configured); Airtable's
    deletions go through the sink, whose records count follows them."""
    postgres = postgres_rows(config)
    if not config.airtable.enabled:
        return {"postgres": postgres, "airtable": None}
    if airtable is None:
        from daemon.sinks.airtable import AirtableSink

        airtable = AirtableSink.from_config(config.airtable, None).access()
    return {"postgres": postgres, "airtable": airtable.reads(), "airtable_delete": airtable.delete}


async def forget(
    journal: Journal,
    config: Config,
    airtable: BaseAccess | None,
    phone: str,
    reference: str | None = None,
    dry_run: bool = False,
    quiesce: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Erase one phone everywhere (or count what that would erase): the report, also the audit entry's.
    `quiesce`: let deliveries in flight finish once the journal is erased (the daemon's workers)."""
    from daemon.forget import forget_phone
    from daemon.sinks.base import SinkError

    try:
        report = await forget_phone(
            phone, journal, **erasure_stores(config, airtable), quiesce=quiesce, reference=reference, dry_run=dry_run
        )
    except SinkError as exc:
        return {"error": f"{exc}; nothing was erased", "dry_run": dry_run}
    return report.as_dict()


async def show(
    journal: Any,
    config: Config,
    airtable: BaseAccess | None,
    conversation: str | None,
    phone: str | None,
    limit: int,
    down: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One conversation (or each of a phone's) from PostgreSQL, else the journal (a Journal, a JournalReader,
    or None when `down` says why not), else Airtable: what `chatledger show` prints, as data."""
    from daemon.reads import Stores
    from daemon.show import show as show_conversations

    # reads do not migrate: the PostgreSQL sink does at its connect, and a read should not create tables
    stores = Stores(journal, postgres_rows(config, migrate_schema=False), airtable_reads(airtable))
    return await show_conversations(stores, conversation=conversation, phone=phone, limit=limit, down=down)


# -- Airtable's base and SendPulse ---------------------------------------------------------------


async def airtable_base(airtable: BaseAccess, action: str) -> dict[str, Any]:
    """`airtable init` (create what is missing) or `check`: what was done and the differences, or {"error"}."""
    from daemon.sinks.airtable import set_up_base
    from daemon.sinks.base import SinkError

    try:
        return await set_up_base(airtable.client, airtable.names, create=action == "init")
    except SinkError as exc:
        return {"error": str(exc)}


async def reconcile(reconciler: Any, since: datetime, bot: str | None, emit: Emit) -> dict[str, Any]:
    """A reconciliation by the daemon's reconciler (after any run in progress), each chat's report emitted as
    a progress line as it comes: {"report": ...}."""
    reports: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    async def pump() -> None:  # the reconciler reports synchronously; the lines are written in order
        while (line := await reports.get()) is not None:
            await emit({"progress": line})

    pumping = asyncio.create_task(pump(), name="reconcile-progress")
    try:
        report = await reconciler.run(
            since, [bot] if bot else None, progress=lambda report: reports.put_nowait(report.as_dict())
        )
    finally:
        reports.put_nowait(None)
        await pumping
    return {"report": report.as_dict()}
