"""A message is journaled once by its WhatsApp wamid, whatever SendPulse id each of its events carries."""

import asyncio
import sqlite3
from datetime import UTC, datetime

import pytest

from daemon.events import WAMID_PREFIX, normalize
from daemon.journal import MIGRATIONS, Journal

NOW = datetime(2026, 11, 25, tzinfo=UTC)
WAMID = "wamid.HBgMNTUzMjk5OTI5OTY5FQIAERgSRkFLRTEyMzQ1Njc4OTAA"


def inbound(sendpulse_id: str, wamid: str | None, contact: str = "c", title: str = "incoming_message"):
    message = {"text": {"body": "oi"}, **({"id": wamid} if wamid else {})}
    return normalize(
        {
            "title": title,
            "service": "whatsapp",
            "bot": {"id": "b"},
            "contact": {"id": contact},
            "info": {"message": {"id": sendpulse_id, "channel_data": {"message": message}}},
        },
        NOW,
    )


def outbound(sendpulse_id: str, wamid: str):
    return normalize(
        {
            "title": "outgoing_message",
            "service": "whatsapp",
            "bot": {"id": "b"},
            "contact": {"id": "c"},
            "info": {"message": {"id": sendpulse_id, "channel_data": {"message_id": wamid}}},
        },
        NOW,
    )


@pytest.fixture
async def journal(tmp_path):
    journal = await Journal.open(tmp_path / "journal.sqlite", ["postgres"])
    yield journal
    await journal.close()


def keys(journal):
    with sqlite3.connect(journal.path) as conn:
        return [row[0] for row in conn.execute("SELECT dedup_key FROM events ORDER BY id")]


@pytest.mark.parametrize("make", [inbound, outbound])
async def test_a_second_id_for_a_held_wamid_is_a_duplicate(journal, make):
    first = await journal.append([make("a" * 24, WAMID)])
    second = await journal.append([make("b" * 24, WAMID)])
    assert (first.accepted, second.accepted, second.duplicates) == (1, 0, 1)
    assert keys(journal) == [f"msg:{'incoming' if make is inbound else 'outgoing'}_message:{'a' * 24}"]
    assert (await journal.counts())["counters"]["duplicates"] == 1


async def test_the_same_wamid_in_one_group_commit_is_journaled_once(journal):
    results = await asyncio.gather(
        journal.append([inbound("a" * 24, WAMID)]),
        journal.append([inbound("b" * 24, WAMID)]),
        journal.append([inbound("c" * 24, WAMID), inbound("d" * 24, WAMID)]),
    )
    assert journal.stats.commits == 1
    assert sum(r.accepted for r in results) == 1 and sum(r.duplicates for r in results) == 3
    assert len(keys(journal)) == 1


async def test_different_wamids_titles_and_non_whatsapp_ids_all_land(journal):
    other = WAMID.replace("FAKE", "REAL").replace("RkFL", "UkVB")
    result = await journal.append(
        [
            inbound("a" * 24, WAMID),
            inbound("b" * 24, other),
            inbound("c" * 24, WAMID, title="message_read"),  # not a message event: never a message's duplicate
            # a Telegram message_id is counted per chat: two chats' message 5 are two messages
            inbound("d" * 24, "5", contact="t1"),
            inbound("e" * 24, "5", contact="t2"),
            inbound("f" * 24, None),
            inbound("g" * 24, None),
        ]
    )
    assert (result.accepted, result.duplicates) == (7, 0)
    assert len(keys(journal)) == 7


async def test_an_incoming_wamid_does_not_hold_an_outgoing_message(journal):
    result = await journal.append([inbound("a" * 24, WAMID), outbound("b" * 24, WAMID)])
    assert (result.accepted, result.duplicates) == (2, 0)


def wamid_trigger():
    (migration,) = [text for text in MIGRATIONS if "events_wamid_once" in text]
    return " ".join(migration.split())


def test_the_trigger_knows_a_wamid_as_events_does():
    assert f"platform_message_id GLOB '{WAMID_PREFIX}*'" in wamid_trigger()


async def test_the_wamid_lookup_reads_an_index(journal):
    lookup = "SELECT 1 FROM events WHERE platform_message_id = {} AND title = {}"
    assert lookup.format("NEW.platform_message_id", "NEW.title") in wamid_trigger()
    with sqlite3.connect(journal.path) as conn:
        plan = " ".join(
            row[-1]
            for row in conn.execute("EXPLAIN QUERY PLAN " + lookup.format("?", "?"), (WAMID, "incoming_message"))
        )
    assert "USING COVERING INDEX events_platform_message_id" in plan, plan
