"""Reconciliation: journal the messages SendPulse's API holds and the webhooks never brought.

For each bot, the chats active since the window's start, then each contact's messages since then.
A message the journal does not hold becomes the event its webhook would have been (same title, same
fields, same dedup key), its payload the API's message plus "source": "reconcile", so it is delivered,
counted and deduplicated like any webhook.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from loguru import logger

from daemon.events import DELIVERY_STATUS, Event, normalize
from daemon.journal import Journal
from daemon.records import SENDPULSE_STATUS, STATUS_ORDER, conversation_id_for, delivery_status_key, iso, status_rank
from daemon.sendpulse import (
    SendPulseClient,
    SendPulseError,
    SendPulseMisconfigured,
    SendPulseNotFound,
    SendPulseUnavailable,
    parse_time,
)

SOURCE = "reconcile"
TEXT_MATCH_S = 120  # an event without ids is the same message when its text and time agree this closely
# Journal events this much older than the window are not looked at: a webhook's date is the message's own,
# give or take a clock; the margin only bounds the read.
LOOKBACK = timedelta(hours=6)
DIRECTIONS = {1: ("incoming_message", "inbound"), 2: ("outgoing_message", "outbound")}

JOURNAL_CANDIDATES = """
SELECT dedup_key, message_id, platform_message_id, direction, text, occurred_at FROM events
WHERE conversation_id = ? AND title IN ('incoming_message', 'outgoing_message')
  AND (occurred_at >= ? OR received_at >= ?)
"""
HAS_KEYS = "SELECT dedup_key FROM events WHERE dedup_key IN ({marks})"
# Contacts with an outbound message since ? that no report says was read or failed, the most recently
# written to first: their messages are read again for the statuses that came after the window.
FOLLOW_UP = """
SELECT bot_id, contact_id, max(phone), min(occurred_at) FROM events e
WHERE title = 'outgoing_message' AND occurred_at >= ? AND contact_id IS NOT NULL AND bot_id IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM events s
                  WHERE s.dedup_key IN ('status:' || e.dedup_key || ':read', 'status:' || e.dedup_key || ':failed'))
GROUP BY bot_id, contact_id ORDER BY max(occurred_at) DESC LIMIT ?
"""
FOLLOW_UP_CONTACTS = 50  # at most, per run: a bound on what following up costs


@dataclass
class Report:
    """What one run found: chats read, messages seen (added + present), contacts gone since, the error."""

    since: datetime
    until: datetime
    bots: int = 0
    chats: int = 0
    seen: int = 0
    added: int = 0
    present: int = 0
    skipped_contacts: int = 0
    followed_up: int = 0  # contacts whose messages were read again for their statuses, outside the window
    unreadable: int = 0  # API messages no event can be made of (no id, unknown direction)
    statuses: int = 0  # delivery statuses (delivered / read / failed) the journal learned of
    error: str | None = None
    state: str = "up"  # up / down / misconfigured: what the error says of SendPulse

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": iso(self.since),
            "until": iso(self.until),
            "bots": self.bots,
            "chats": self.chats,
            "seen": self.seen,
            "added": self.added,
            "present": self.present,
            "skipped_contacts": self.skipped_contacts,
            "unreadable": self.unreadable,
            "statuses": self.statuses,
            "followed_up": self.followed_up,
            "error": self.error,
            "state": self.state,
        }


@dataclass(frozen=True)
class _Message:
    """A journaled message event: its dedup key and SendPulse id (a status is reported on it)."""

    key: str
    message_id: str | None


@dataclass
class _Held:
    """The journal's messages of one conversation near the window: by their ids, and the id-less ones."""

    # SendPulse ids and wamids together: integrators' webhooks carry a wamid where the SendPulse id
    # goes too, and the two kinds never collide (24 hex digits; "wamid.")
    ids: dict[str, _Message] = field(default_factory=dict)
    idless: list[tuple[str | None, str | None, datetime | None, _Message]] = field(default_factory=list)


async def reconcile(
    client: SendPulseClient,
    journal: Journal,
    since: datetime,
    *,
    bot_ids: Sequence[str] = (),
    now: datetime | None = None,
    progress: Callable[[Report], None] | None = None,
    follow_up_since: datetime | None = None,
) -> Report:
    """Fetch back and journal what the journal lacks since `since`; the report says what happened.
    `follow_up_since`: also learn the statuses of outbound messages since then that are not known read or
    failed (their contacts' messages read again, at most FOLLOW_UP_CONTACTS of them).

    A SendPulse error ends the run with `error` set; what was journaled before it stays."""
    report = Report(since=since, until=now or datetime.now(UTC))
    read: set[tuple[str, str]] = set()  # (bot, contact) whose messages this run read
    try:
        bots = await _bots(client, bot_ids)
        for bot in bots:
            report.bots += 1
            # Listed whole before any is read: chats are paged by skip in an order that a contact's new
            # activity changes, so listing while reading (long) would skip some and repeat others.
            chats: dict[str, dict[str, Any]] = {}
            async for chat in client.chats(bot["id"], since):
                chats.setdefault(chat["contact"]["id"], chat)
            for chat in chats.values():
                try:
                    messages = await client.messages_since(chat["contact"]["id"], since)
                except SendPulseNotFound:
                    report.skipped_contacts += 1  # deleted since it was listed
                    continue
                report.chats += 1
                read.add((bot["id"], chat["contact"]["id"]))
                await _journal_missing(journal, bot, chat["contact"], messages, report)
                if progress:
                    progress(report)
        if follow_up_since is not None and follow_up_since < since:
            await _follow_up(client, journal, {bot["id"]: bot for bot in bots}, follow_up_since, read, report)
    except SendPulseError as exc:
        report.error = str(exc)
        report.state = (
            "misconfigured"
            if isinstance(exc, SendPulseMisconfigured)
            else "down"
            if isinstance(exc, SendPulseUnavailable)
            else "error"
        )
        logger.debug("reconciliation stopped: {}", exc)  # the caller says it: once, in its own words
    return report


async def _follow_up(
    client: SendPulseClient,
    journal: Journal,
    bots: dict[str, dict[str, Any]],
    since: datetime,
    read: set[tuple[str, str]],
    report: Report,
) -> None:
    """Read again the messages of contacts written to since `since` whose statuses may have moved."""
    for bot_id, contact_id, phone, oldest in await journal.query(FOLLOW_UP, (iso(since), FOLLOW_UP_CONTACTS)):
        if bot_id not in bots or (bot_id, contact_id) in read:
            continue
        try:
            messages = await client.messages_since(contact_id, parse_time(oldest) or since)
        except SendPulseNotFound:
            continue  # deleted since: nothing more will be reported
        report.followed_up += 1
        contact = {"id": contact_id, "channel_data": {"phone": phone}}
        await _journal_missing(journal, bots[bot_id], contact, messages, report, window=False)


async def _bots(client: SendPulseClient, bot_ids: Sequence[str]) -> list[dict[str, Any]]:
    bots = [bot for bot in await client.bots() if isinstance(bot, dict) and bot.get("id")]
    if not bot_ids:
        return bots
    known = {bot["id"]: bot for bot in bots}
    missing = [bot_id for bot_id in bot_ids if bot_id not in known]
    if missing:
        raise SendPulseError(
            f"bot {', '.join(missing)} is not a WhatsApp bot of this account (its bots: {', '.join(known) or 'none'})"
        )
    return [known[bot_id] for bot_id in bot_ids]


def webhook_element(message: dict[str, Any], contact: dict[str, Any], bot: dict[str, Any]) -> dict[str, Any] | None:
    """The webhook SendPulse would have posted for this API message; None when it names no direction."""
    direction = message.get("direction")
    way = DIRECTIONS.get(direction) if isinstance(direction, int) else None
    if way is None:
        return None
    data = _object(message.get("data"))
    channel_data: dict[str, Any] = {"message": data}
    if way[1] == "outbound" and data.get("message_id"):
        channel_data["message_id"] = data["message_id"]  # where an outbound webhook carries the wamid
    details = _object(contact.get("channel_data"))
    element_contact: dict[str, Any] = {
        key: contact[key] for key in ("id", "tags", "variables", "is_chat_opened") if key in contact
    }
    if details.get("phone") is not None:
        element_contact["phone"] = str(details["phone"])
    if details.get("name"):
        element_contact["name"] = details["name"]
    info_message: dict[str, Any] = {"channel_data": channel_data}
    if message.get("id"):
        info_message["id"] = message["id"]
    return {
        "title": way[0],
        "service": "whatsapp",
        "bot": {"id": bot.get("id"), "name": bot.get("name"), "channel": "WHATSAPP"},
        "contact": element_contact,
        "info": {"message": info_message},
        "date": message.get("created_at"),
    }


def event_of(
    message: dict[str, Any], contact: dict[str, Any], bot: dict[str, Any], received_at: datetime
) -> Event | None:
    """The journal event of a fetched message: its webhook's fields and key, the API's message as payload."""
    element = webhook_element(message, contact, bot)
    if element is None or not message.get("id"):
        return None
    payload = json.dumps({**message, "source": SOURCE}, ensure_ascii=False, separators=(",", ":"))
    event = normalize(element, received_at, payload)
    return event if isinstance(event, Event) else None


def _reports_status(message: dict[str, Any]) -> bool:
    """An outbound message whose status SendPulse's API alone reports (delivered, read, failed)."""
    return message.get("direction") == 2 and message.get("status") in SENDPULSE_STATUS


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def wamid_of(message: dict[str, Any]) -> str | None:
    data = _object(message.get("data"))
    wamid = data.get("id") if message.get("direction") == 1 else data.get("message_id")
    return wamid if isinstance(wamid, str) and wamid else None


async def _journal_missing(
    journal: Journal,
    bot: dict[str, Any],
    contact: dict[str, Any],
    messages: list[dict[str, Any]],
    report: Report,
    window: bool = True,
) -> None:
    """Journal the messages the journal lacks, then the statuses it has not heard of. Outside the window
    (`window` False: a follow-up) only statuses: a message is fetched back by the run whose window holds it."""
    received_at = datetime.now(UTC)
    events: list[tuple[Event, dict[str, Any]]] = []
    for message in messages:
        if not window and not _reports_status(message):
            continue
        event = event_of(message, contact, bot, received_at)
        if event is None:
            report.unreadable += 1
            continue
        events.append((event, message))
    if window:  # a follow-up's messages are not the window's
        report.seen += len(events)
    if not events:
        return
    held = await _held(
        journal,
        conversation_id_for(bot.get("id"), contact.get("id"), None),
        min(parse_time(m.get("created_at")) or report.since for _, m in events),
    )
    keys = {row[0] for row in await _existing_keys(journal, [event.dedup_key for event, _ in events])}
    missing: list[Event] = []
    taken: set[str] = set()
    reports: list[tuple[Event, dict[str, Any], _Message]] = []  # outbound messages and the event they are
    for event, message in events:
        if event.dedup_key in taken:
            report.present += 1 if window else 0  # the API listed it twice (a page boundary moved)
            continue
        taken.add(event.dedup_key)
        known = (
            _Message(event.dedup_key, event.message_id) if event.dedup_key in keys else _held_as(event, message, held)
        )
        if not window:
            if known is None:
                continue
        elif known is not None:
            report.present += 1
        else:
            missing.append(event)
            known = _Message(event.dedup_key, event.message_id)
        if _reports_status(message):
            reports.append((event, message, known))
    if missing:
        result = await journal.append(missing)
        report.added += result.accepted
        report.present += result.duplicates  # a webhook of the same message won the race
        if result.accepted:
            logger.info(
                "reconciliation journaled {} message(s) of contact {} the webhooks did not bring",
                result.accepted,
                contact.get("id"),
            )
    if reports:
        await _journal_statuses(journal, reports, received_at, report)


async def _journal_statuses(
    journal: Journal, reports: list[tuple[Event, dict[str, Any], _Message]], received_at: datetime, report: Report
) -> None:
    """A delivery status the journal has not heard of, nor one further along, becomes an update event.

    Only about a message the journal holds under that key: a fetched message that lost its race to a
    webhook under another key has its status learned at the next run, which finds that webhook's."""
    learned = [(event, message, target, SENDPULSE_STATUS[message["status"]]) for event, message, target in reports]
    asked = [target.key for _, _, target, _ in learned]
    asked += [key for _, _, target, status in learned for key in _this_or_further(target.key, status)]
    keys = {row[0] for row in await _existing_keys(journal, asked)}
    fresh = [
        status_event(event, message, target.key, target.message_id, status, received_at)
        for event, message, target, status in learned
        if target.key in keys and not any(key in keys for key in _this_or_further(target.key, status))
    ]
    if fresh:
        report.statuses += (await journal.append(fresh)).accepted


def _this_or_further(message_key: str, status: str) -> list[str]:
    """The keys of this status's report on the message and of every report further along."""
    return [
        delivery_status_key(message_key, later) for later in STATUS_ORDER if status_rank(later) >= status_rank(status)
    ]


def status_event(
    event: Event, message: dict[str, Any], message_key: str, message_id: str | None, status: str, received_at: datetime
) -> Event:
    """The update event of a delivery status SendPulse reports for the message journaled under
    `message_key`: its payload names that message and the status, with the API's message as listed."""
    payload = {"of": message_key, "message_id": message_id, "status": status, "message": message, "source": SOURCE}
    return replace(
        event,
        dedup_key=delivery_status_key(message_key, status),
        title=DELIVERY_STATUS,
        message_id=message_id,
        platform_message_id=None,
        received_at=received_at,
        original=None,
        raw=json.dumps(payload, ensure_ascii=False, separators=(",", ":")),
    )


async def _existing_keys(journal: Journal, keys: list[str]) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        rows.extend(await journal.query(HAS_KEYS.format(marks=", ".join("?" * len(chunk))), chunk))
    return rows


async def _held(journal: Journal, conversation_id: str | None, earliest: datetime) -> _Held:
    held = _Held()
    if conversation_id is None:
        return held
    bound = iso(earliest - LOOKBACK)
    for key, message_id, wamid, direction, text, occurred in await journal.query(
        JOURNAL_CANDIDATES, (conversation_id, bound, bound)
    ):
        journaled = _Message(key, message_id)
        held.ids.update((value, journaled) for value in (message_id, wamid) if value)
        if not message_id and not wamid:
            held.idless.append((direction, text, parse_time(occurred), journaled))
    return held


def _held_as(event: Event, message: dict[str, Any], held: _Held) -> _Message | None:
    """The journaled event that is this API message, if any."""
    if event.message_id and event.message_id in held.ids:
        return held.ids[event.message_id]
    wamid = wamid_of(message)
    if wamid and wamid in held.ids:
        return held.ids[wamid]
    # Only an event with neither id can be this message by its text; each such event is one message.
    for index, (direction, text, occurred, journaled) in enumerate(held.idless):
        if (
            direction == event.direction
            and text is not None
            and text == event.text
            and occurred is not None
            and abs((occurred - event.occurred_at).total_seconds()) <= TEXT_MATCH_S
        ):
            del held.idless[index]
            return journaled
    return None
