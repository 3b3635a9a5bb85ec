"""The pure mapping from journaled events to rows, and the backoff schedule."""

import itertools
import random
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from daemon.delivery import BACKOFF_CAP, backoff_delay
from daemon.events import StoredEvent
from daemon.records import conversation_id_for, conversation_status, iso, map_events

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def stored(n, title="incoming_message", contact="c1", at=0, phone="5511987654321", name="Ana", text="oi"):
    direction = {"incoming_message": "inbound", "outgoing_message": "outbound"}.get(title)
    return StoredEvent(
        id=n,
        dedup_key=f"k{n}",
        received_at=T0.isoformat(),
        occurred_at=(T0 + timedelta(seconds=at)).isoformat(),
        title=title,
        service="whatsapp",
        bot_id="bot1",
        contact_id=contact,
        phone=phone,
        contact_name=name,
        message_id=f"m{n}" if direction else None,
        platform_message_id=None,
        direction=direction,
        message_type="text" if direction else None,
        text=text if direction else None,
        raw="{}",
    )


def test_conversation_ids_are_deterministic_and_documented():
    expected = str(uuid.uuid5(uuid.NAMESPACE_URL, "chatledger:conversation:bot1:c1"))
    assert conversation_id_for("bot1", "c1", "551199") == expected
    assert conversation_id_for("bot1", "c1", None) == expected  # the phone does not matter when a contact id exists
    assert conversation_id_for("bot2", "c1", None) != expected
    assert conversation_id_for("bot1", None, "551199") == str(
        uuid.uuid5(uuid.NAMESPACE_URL, "chatledger:conversation:bot1:phone:551199")
    )
    assert conversation_id_for("bot1", None, None) is None


def test_messages_become_interactions_and_open_chat_an_escalation():
    records = map_events(
        [
            stored(1),
            stored(2, "outgoing_message", at=1),
            stored(3, "open_chat", at=2),
            stored(4, "delivery_status", contact=None, phone=None),
        ]
    )
    assert [(i.message_id, i.direction, i.status) for i in records.interactions] == [
        ("m1", "inbound", "delivered"),
        ("m2", "outbound", "sent"),
    ]
    assert len({i.interaction_id for i in records.interactions}) == 2
    [escalation] = records.escalations
    assert (escalation.status, escalation.priority) == ("pending", "MEDIUM")
    assert escalation.ticket_id == "ESC-" + escalation.escalation_id.replace("-", "")[:8].upper()
    [touch] = records.conversations  # one conversation touched by three events; the nameless event attaches to none
    assert (touch.first_at, touch.last_at) == (T0, T0 + timedelta(seconds=2))
    assert [(c.title, c.at) for c in records.status_changes] == [("open_chat", T0 + timedelta(seconds=2))]


def test_the_same_events_in_any_order_map_to_the_same_rows():
    events = [
        stored(1, at=5, name="new"),
        stored(2, "unsubscribe", at=3),
        stored(3, "open_chat", at=3),
        stored(4, at=1, name="old"),
        stored(5, contact="c2", at=0),
    ]

    def rows(batch):
        r = map_events(batch)
        return (
            sorted(r.interactions, key=lambda i: i.interaction_id),
            sorted(r.escalations, key=lambda e: e.escalation_id),
            sorted(r.conversations, key=lambda c: c.conversation_id),
            sorted(r.status_changes, key=lambda c: c.conversation_id),
        )

    first = rows(events)
    for order in itertools.islice(itertools.permutations(events), 0, None, 7):
        assert rows(list(order)) == first
    c1 = next(c for c in first[2] if c.conversation_id == conversation_id_for("bot1", "c1", None))
    assert c1.customer_name == "new"  # contact details follow the newest event
    # two status events at the same second: the dedup key breaks the tie, the same way every time
    assert [c.title for c in first[3] if c.conversation_id == c1.conversation_id] == ["open_chat"]


@pytest.mark.parametrize(
    "title, status_at, last_message_at, expected",
    [
        (None, None, 5, "active"),
        ("open_chat", 3, 5, "escalated"),
        ("unsubscribe", 3, None, "closed"),
        ("bot_block", 3, 2, "closed"),
        ("unsubscribe", 3, 3, "closed"),
        ("unsubscribe", 3, 4, "active"),  # a message after the unsubscribe reopens it
    ],
)
def test_conversation_status_rules(title, status_at, last_message_at, expected):
    def at(s):
        return None if s is None else T0 + timedelta(seconds=s)

    assert conversation_status(title, at(status_at), at(last_message_at)) == expected


def enrichment(n, message, at, **fields):
    """The bot API's enrichment of the webhook message `message` (stored(message)'s m<message>)."""
    import json

    body = {"id": f"bot-{n}", "messageId": f"m{message}", "direction": "inbound", **fields}
    return StoredEvent(
        id=n,
        dedup_key=f"api:interaction:bot-{n}",
        received_at=T0.isoformat(),
        occurred_at=(T0 + timedelta(seconds=at)).isoformat(),
        title="api_interaction",
        service="api",
        bot_id=None,
        contact_id=None,
        phone=None,
        contact_name=None,
        message_id=f"m{message}",
        platform_message_id=None,
        direction="inbound",
        message_type="api",
        text=fields.get("content"),
        raw=json.dumps(body),
        conversation_id=conversation_id_for("bot1", "c1", None),
    )


def test_an_enrichment_folds_into_its_message_in_either_order_keeping_its_time_and_text():
    from dataclasses import replace

    from daemon.records import merged_interactions

    message = replace(stored(1, at=0, text="oi"), dedup_key="msg:incoming_message:m1")  # as events.dedup_key
    bare = enrichment(2, 1, at=600, intent="greeting", processingTime=40)  # no text, no timestamp
    for events in ([message, bare], [bare, message]):
        [row] = merged_interactions(map_events(events).interactions)
        assert (row.occurred_at, row.content, row.intent, row.processing_time_ms) == (T0, "oi", "greeting", 40)
    worded = enrichment(3, 1, at=600, content="oi!", status="read")
    for events in ([message, worded], [worded, message]):
        [row] = merged_interactions(map_events(events).interactions)
        assert (row.occurred_at, row.content, row.status) == (T0, "oi!", "read")


def test_backoff_doubles_is_capped_and_jittered():
    assert [backoff_delay(n, rand=lambda: 1.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert backoff_delay(1, rand=lambda: 0.0) == 0.25  # at least half the ceiling
    assert backoff_delay(50, rand=lambda: 1.0) == BACKOFF_CAP == 60.0
    assert backoff_delay(10_000, rand=lambda: 1.0) == BACKOFF_CAP  # no overflow after days down
    delays = {backoff_delay(8, rand=random.Random(seed).random) for seed in range(20)}
    assert len(delays) > 1 and all(30.0 <= d <= 60.0 for d in delays)


def test_the_journals_sql_restates_the_same_titles():
    import re

    from daemon.events import API_CONVERSATION_UPDATE, API_INTERACTION, DELIVERY_STATUS, MESSAGE_TITLES
    from daemon.journal.conversations import STATUS_REPORTS
    from daemon.journal.schema import MIGRATIONS
    from daemon.records import STATUS_AS_TITLE, STATUS_TITLES

    def titles(sql):
        return set(re.findall(r"'([a-z_]+)'", sql))

    # the conversation fold a fresh journal runs: the last migration that (re)creates its trigger
    fold = [sql for sql in MIGRATIONS if "CREATE TRIGGER events_conversation" in sql][-1]
    [is_message] = set(re.findall(r"CASE WHEN \((.*)\) THEN 1 ELSE 0 END", fold))
    webhook, api = re.fullmatch(
        r"NEW\.title IN \(([^)]*)\) OR \(NEW\.title = '(\w+)' AND NEW\.message_id IS NULL\)", is_message
    ).groups()
    assert titles(webhook) == set(MESSAGE_TITLES) and api == API_INTERACTION  # one that names no SendPulse message
    assert DELIVERY_STATUS not in is_message  # a status report is about a message, not one
    [is_status] = set(re.findall(r"CASE WHEN NEW\.title IN \(([^)]*)\) THEN NEW\.title", fold))
    assert titles(is_status) == set(STATUS_TITLES)
    api_status = re.search(r"NEW\.title = '(\w+)' AND json_extract\(NEW\.raw, '\$\.status'\) IN \(([^)]*)\)", fold)
    assert api_status[1] == API_CONVERSATION_UPDATE and titles(api_status[2]) == set(STATUS_AS_TITLE)
    assert dict(re.findall(r"WHEN '(\w+)' THEN '(\w+)'", fold)) == STATUS_AS_TITLE
    # the statuses reported about a message, read through the v8 index (same condition, for the planner)
    reports = {API_INTERACTION, DELIVERY_STATUS}
    assert titles(STATUS_REPORTS.split("AND")[0]) == reports == titles(MIGRATIONS[7])


def reported(n, message, status):
    """Reconciliation's report that the webhook message `message` (stored(message)) reached `status`."""
    import json

    return StoredEvent(
        id=n,
        dedup_key=f"status:k{message}:{status}",
        received_at=T0.isoformat(),
        occurred_at=T0.isoformat(),
        title="delivery_status",
        service="whatsapp",
        bot_id="bot1",
        contact_id="c1",
        phone="5511987654321",
        contact_name="Ana",
        message_id=f"m{message}",
        platform_message_id=None,
        direction="outbound",
        message_type="text",
        text="oi",
        raw=json.dumps({"of": f"k{message}", "message_id": f"m{message}", "status": status, "source": "reconcile"}),
    )


def test_a_status_moves_forward_only_whoever_reports_it():
    from daemon.records import later_status, merged_interactions

    assert later_status("sent", "failed", None) == "failed"
    assert later_status("failed", "delivered") == later_status("delivered", "failed") == "delivered"
    assert later_status("read", "sent", "delivered") == "read"
    assert later_status(None, None) is None
    message = stored(1, "outgoing_message")
    for order in itertools.permutations([message, reported(2, 1, "delivered"), reported(3, 1, "read")]):
        (row,) = merged_interactions(map_events(order).interactions)
        assert (row.status, row.message_id, row.content) == ("read", "m1", "oi"), order
    (row,) = merged_interactions(map_events([message, reported(2, 1, "failed")]).interactions)
    assert row.status == "failed"
    counted = map_events([message, reported(2, 1, "read")])
    assert len(counted.interactions) == 2 and counted.interactions[1].reported
    assert counted.interactions[1].interaction_id == counted.interactions[0].interaction_id


def test_a_moment_is_the_same_text_whatever_its_offset():
    moment = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert iso(moment) == "2026-01-02T03:04:05.678Z"
    assert iso(moment.astimezone(timezone(timedelta(hours=-3)))) == "2026-01-02T03:04:05.678Z"
    assert iso(moment.replace(microsecond=0)) == "2026-01-02T03:04:05.000Z"
