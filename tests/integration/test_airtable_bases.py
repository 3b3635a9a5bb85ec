"""The operators' bases as they really are (issue 13), through the real pyairtable and the emulator over HTTP:
the documented base with no `init`, dates without time, Status as text, a missing field, a renamed one
with a mapping, a formula where chatledger writes, a token without the schema scope, a missing key."""

import json
import re
from collections import Counter
from datetime import UTC, datetime

import pytest

from daemon.events import (
    API_CONVERSATION_UPDATE,
    API_ESCALATION,
    API_ESCALATION_UPDATE,
    API_INTERACTION,
    normalize,
)
from daemon.events import api_event as journaled_api_event
from daemon.ratelimit import RequestBudget
from daemon.records import conversation_id_for
from daemon.sinks.airtable import AirtableClient, AirtableSink, init_base, set_up_base
from daemon.sinks.airtable_schema import SCOPE_WARNING, BaseNames, parse_field_mapping
from daemon.sinks.base import SetupError
from daemon.testing.airtable import EmulatorThread
from daemon.testing.airtable.bases import documented_base, formula_options
from tests.integration.test_airtable_sink import (
    BASE,
    NAMES,
    RECEIVED,
    T0,
    TOKEN,
    client_for,
    delivered,
    journal,
    message,
    open_chat,
    rows,
    started,
    stop,
)
from tests.support import until

__all__ = ["journal"]  # the fixture, shared with test_airtable_sink
DATA_ONLY = "patDATAONLY0000001.0123456789abcdef"
C1 = conversation_id_for("bot1", "c1", None)


def documented(dates="date", change=None):
    """An emulator serving the documented base (no `init`), changed by `change(base)` first."""
    running = EmulatorThread.serving(TOKEN, BASE)
    running.emulator.grant(DATA_ONLY, {"data.records:read", "data.records:write"})

    def build():
        base = documented_base(running.emulator.bases[BASE], dates)
        if change is not None:
            change(base)

    running.run(build)
    return running


@pytest.fixture
def emulators():
    running = []
    yield running.append
    for emulator in running:
        emulator.stop()


def api_event(title, body, at, conversation_id=C1):
    return journaled_api_event(
        title,
        f"api:{title}:{body['id']}:{at}",
        json.dumps(body),
        conversation_id=conversation_id,
        occurred_at=datetime.fromtimestamp(T0 + at, UTC),
        received_at=RECEIVED,
        message_id=body.get("messageId"),
    )


def traffic():
    """Messages of 5 contacts, a live chat opened, and what the bot API adds: every field written once."""
    return (
        [normalize(message(i, contacts=5), RECEIVED) for i in range(40)]
        + [normalize(open_chat(), RECEIVED)]
        + [
            api_event(
                API_INTERACTION,
                {
                    "id": "bot-1",
                    "messageId": "wamid.1",
                    "direction": "inbound",
                    "intent": "greeting",
                    "response": "Olá!",
                    "processingTime": 120,
                },
                1,
            ),
            api_event(API_ESCALATION, {"id": "esc-1", "reason": "wants a human", "priority": "HIGH"}, 500),
            api_event(
                API_ESCALATION_UPDATE,
                {"id": "esc-1", "status": "resolved", "resolvedAt": "2026-09-22T23:30:00-05:00"},
                600,
                None,
            ),
            api_event(
                API_CONVERSATION_UPDATE,
                {"id": C1, "tags": ["vip", "late"], "priority": "CRITICAL", "sentiment": "calm"},
                700,
            ),
        ]
    )


async def deliver_all(journal, sink, events):
    worker, task = await started(journal, sink)
    await journal.append(events)
    await until(lambda: delivered(journal, len(events)), task, "everything delivered")
    counts = (await journal.counts())["sinks"]["airtable"]
    assert counts.get("dead", 0) == 0 and counts.get("pending", 0) == 0
    return worker, task


@pytest.mark.parametrize("dates", ["date", "dateTime"])
async def test_the_documented_base_gets_everything_with_no_init(emulators, journal, dates):
    emulator = documented(dates)
    emulators(emulator)
    sink = AirtableSink(client_for(emulator), NAMES, journal.conversations)
    worker, task = await deliver_all(journal, sink, traffic())
    assert worker.live_status()["warnings"] == [] and worker.state == "up"
    interactions = rows(emulator, "Interactions")
    assert Counter(r["MessageId"] for r in interactions) == Counter(f"wamid.{i}" for i in range(40))
    first = next(r for r in interactions if r["MessageId"] == "wamid.1")
    assert (first["Intent"], first["Response"], first["ProcessingTime"], first["Direction"]) == (
        "greeting",
        "Olá!",
        120,
        "inbound",
    )
    when = datetime.fromtimestamp(T0 + 1, UTC)
    assert first["Timestamp"] == (
        when.date().isoformat() if dates == "date" else when.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    )
    conversations = {r["ConversationId"]: r for r in rows(emulator, "Conversations")}
    assert {c: r["MessageCount"] for c, r in conversations.items()} == dict(
        Counter(r["ConversationId"] for r in interactions)
    )
    c1 = conversations[C1]
    assert (c1["Status"], c1["Priority"], c1["Tags"], c1["Sentiment"]) == ("escalated", "CRITICAL", "vip, late", "calm")
    assert all(
        re.fullmatch(r"\d{4}-\d{2}-\d{2}" if dates == "date" else r"\d{4}-\d{2}-\d{2}T[0-9:.]{12}Z", r["StartedAt"])
        for r in conversations.values()
    )
    escalations = {r["EscalationId"]: r for r in rows(emulator, "Escalations")}
    assert len(escalations) == 2
    assert (escalations["esc-1"]["Reason"], escalations["esc-1"]["Status"]) == ("wants a human", "resolved")
    assert escalations["esc-1"]["ResolvedAt"] == ("2026-09-23" if dates == "date" else "2026-09-23T04:30:00.000Z")
    reasons = emulator.run(lambda: emulator.emulator.bases[BASE].table("Escalations").field("Reason").choices)
    assert sorted(c["name"] for c in reasons) == ["live chat opened", "wants a human"]  # made by typecast
    assert (
        "Escalations.Reason is a single select field: each new value becomes a choice (written with "
        "typecast)" in sink.schema_notes
    )
    await stop(worker, task, sink)


async def test_status_fields_as_single_line_text_take_the_status_as_text(emulators, journal):
    def status_as_text(base):
        for table in base.tables:
            field = table.field("Status")
            field.type, field.options = "singleLineText", None

    emulator = documented(change=status_as_text)
    emulators(emulator)
    sink = AirtableSink(client_for(emulator), NAMES, journal.conversations)
    worker, task = await deliver_all(journal, sink, traffic())
    assert Counter(r["Status"] for r in rows(emulator, "Interactions")) == {"delivered": 26, "sent": 14}
    assert {r["Status"] for r in rows(emulator, "Escalations")} == {"pending", "resolved"}
    assert "Interactions.Status is a single line text field: written as text" in sink.schema_notes
    assert worker.live_status()["warnings"] == []
    await stop(worker, task, sink)


async def test_a_missing_field_is_left_out_said_and_created_by_init(emulators, journal):
    def without_two(base):
        base.table("Interactions").remove_field("ErrorMessage")
        base.table("Conversations").remove_field("Sentiment")

    emulator = documented(change=without_two)
    emulators(emulator)
    sink = AirtableSink(client_for(emulator), NAMES, journal.conversations)
    worker, task = await deliver_all(journal, sink, traffic())
    said = [
        "Conversations.Sentiment is missing: left out of what chatledger writes (`chatledger airtable init` "
        "creates it)",
        "Interactions.ErrorMessage is missing: left out of what chatledger writes (`chatledger airtable init` "
        "creates it)",
    ]
    assert worker.live_status()["warnings"] == said and worker.state == "up"
    assert len(rows(emulator, "Interactions")) == 40 and "Sentiment" not in rows(emulator, "Conversations")[0]
    check = await set_up_base(sink.client, NAMES, create=False)
    assert (check["problems"], check["warnings"]) == ([], said)

    done = await init_base(sink.client, NAMES)
    assert done == [
        "created field Conversations.Sentiment (singleLineText)",
        "created field Interactions.ErrorMessage (multilineText)",
    ]
    worker.wake()  # what `airtable init` through the daemon, SIGHUP and `sync` do: the schema is read again
    await journal.append([normalize(message(100, contacts=5), RECEIVED)])
    await until(lambda: delivered(journal, len(traffic()) + 1), task, "delivered after init")
    assert worker.live_status()["warnings"] == []
    await stop(worker, task, sink)


async def test_a_renamed_field_is_named_by_check_kept_by_init_and_written_through_a_mapping(emulators, journal):
    def renamed(base):
        base.table("Interactions").field("Content").name = "Message"
        base.table("Conversations").field("CustomerName").name = "Name"

    emulator = documented(change=renamed)
    emulators(emulator)
    client = client_for(emulator)
    check = await set_up_base(client, NAMES, create=False)
    assert check["problems"] == []
    assert check["warnings"] == [
        "Conversations.CustomerName is missing: left out of what chatledger writes; 'Name' looks like it renamed: "
        'map it with "Conversations.CustomerName" = "Name" under [airtable.fields]',
        "Interactions.Content is missing: left out of what chatledger writes; 'Message' looks like it renamed: map "
        'it with "Interactions.Content" = "Message" under [airtable.fields]',
    ]
    fields_before = emulator.run(lambda: len(emulator.emulator.bases[BASE].table("Interactions").fields))
    init = await set_up_base(client, NAMES, create=True)  # no empty Content beside the renamed one
    assert init["done"][1] == (
        "did not create Interactions.Content: 'Message' looks like it renamed (map it under "
        "[airtable.fields], or create the field by hand)"
    )
    assert emulator.run(lambda: len(emulator.emulator.bases[BASE].table("Interactions").fields)) == fields_before

    names = BaseNames(
        NAMES, parse_field_mapping({"Interactions.Content": "Message", "Conversations.CustomerName": "Name"})
    )
    mapped = await set_up_base(client, names, create=True)
    assert (mapped["done"], mapped["problems"], mapped["warnings"]) == (["nothing to create"], [], [])
    assert "Interactions.Content is written to Interactions.Message ([airtable.fields])" in mapped["notes"]
    assert mapped["fields"] == {"Interactions.Content": "Message", "Conversations.CustomerName": "Name"}
    sink = AirtableSink(client, names, journal.conversations)
    worker, task = await deliver_all(journal, sink, traffic())
    interactions = {r["MessageId"]: r for r in rows(emulator, "Interactions")}
    assert interactions["wamid.2"]["Message"] == "hello 2" and "Content" not in interactions["wamid.2"]
    assert {r["Name"] for r in rows(emulator, "Conversations")} == {f"N{i}" for i in range(5)}
    assert worker.live_status()["warnings"] == []
    await stop(worker, task, sink)


async def test_a_computed_field_where_chatledger_writes_is_left_out(emulators, journal):
    def computed(base):
        count = base.table("Conversations").field("MessageCount")
        count.type, count.options = "formula", formula_options("COUNTA({ConversationId})")
        created = base.table("Interactions").field("CreatedAt")
        created.type, created.options = "createdTime", {"result": {"type": "dateTime"}}

    emulator = documented(change=computed)
    emulators(emulator)
    sink = AirtableSink(client_for(emulator), NAMES, journal.conversations)
    worker, task = await deliver_all(journal, sink, traffic())
    assert worker.live_status()["warnings"] == [
        "Conversations.MessageCount is a formula field, computed by Airtable: nothing can be written to it: left "
        "out of what chatledger writes",
        "Interactions.CreatedAt is a created time field, computed by Airtable: nothing can be written to it: left "
        "out of what chatledger writes",
    ]
    assert len(rows(emulator, "Interactions")) == 40 and len(rows(emulator, "Conversations")) == 5
    await stop(worker, task, sink)


async def test_a_token_without_the_schema_scope_writes_the_documented_base(emulators, journal):
    emulator = documented("date")
    emulators(emulator)
    client = AirtableClient(DATA_ONLY, BASE, emulator.url, RequestBudget(5))
    assert await client.schema() is None  # 403 on the metadata API
    sink = AirtableSink(client, NAMES, journal.conversations)
    worker, task = await deliver_all(journal, sink, traffic())
    assert worker.live_status()["warnings"] == [SCOPE_WARNING] and worker.state == "up"
    assert Counter(r["MessageId"] for r in rows(emulator, "Interactions")) == Counter(f"wamid.{i}" for i in range(40))
    # dates went as timestamps with typecast: the date fields hold their UTC date
    assert {r["EscalationId"]: r["ResolvedAt"] for r in rows(emulator, "Escalations")}["esc-1"] == "2026-09-23"
    with pytest.raises(SetupError, match="schema.bases:read and schema.bases:write"):
        await init_base(client, NAMES)
    check = await set_up_base(client, NAMES, create=False)
    assert (check["problems"], check["warnings"]) == ([], [SCOPE_WARNING])
    await stop(worker, task, sink)

    elsewhere = AirtableSink(
        AirtableClient(DATA_ONLY, "appNOSUCHBASE0001", emulator.url, RequestBudget(5)), NAMES, journal.conversations
    )
    with pytest.raises(SetupError, match="INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND"):
        await elsewhere.check()  # without the schema, the tables are read: a base it cannot reach is no base
    await elsewhere.close()


async def test_a_missing_key_or_table_holds_the_base_and_a_mapping_releases_it(emulators, journal):
    def key_renamed(base):
        base.table("Interactions").field("InteractionId").name = "Id"

    emulator = documented(change=key_renamed)
    emulators(emulator)
    sink = AirtableSink(client_for(emulator), NAMES, journal.conversations)
    worker, task = await started(journal, sink)
    events = traffic()
    await journal.append(events)

    async def misconfigured():
        return worker.state == "misconfigured"

    await until(misconfigured, task, "misconfigured")
    assert (
        "Interactions.InteractionId is missing: it is the key chatledger upserts on (single line text); 'Id' "
        "looks like it renamed" in worker.live_status()["last_error"]
    )
    counts = (await journal.counts())["sinks"]["airtable"]
    assert counts.get("dead", 0) == 0 and counts["pending"] == len(events)
    assert rows(emulator, "Interactions") == []

    sink.rename_fields(parse_field_mapping({"Interactions.InteractionId": "Id"}))  # what SIGHUP does
    worker.wake()
    await until(lambda: delivered(journal, len(events)), task, "drained once mapped")
    assert len({r["Id"] for r in rows(emulator, "Interactions")}) == 40

    emulator.run(lambda: emulator.emulator.bases[BASE].tables.pop())  # Escalations deleted by hand
    worker.wake()
    await journal.append([normalize(open_chat(contact="c2", at=20_000), RECEIVED)])
    await until(misconfigured, task, "misconfigured again")
    assert "table 'Escalations' (escalations) is missing" in worker.live_status()["last_error"]
    assert (await journal.counts())["sinks"]["airtable"].get("dead", 0) == 0
    await stop(worker, task, sink)


async def test_a_text_longer_than_a_cell_holds_is_cut_with_a_marker_not_dead(emulators, journal):
    emulator = documented()
    emulators(emulator)
    sink = AirtableSink(client_for(emulator), NAMES, journal.conversations)
    long = "x" * 100_001
    worker, task = await deliver_all(
        journal, sink, [normalize(message(i, text=long if i == 7 else None), RECEIVED) for i in range(12)]
    )
    content = next(r for r in rows(emulator, "Interactions") if r["MessageId"] == "wamid.7")["Content"]
    assert len(content) <= 100_000 and content.startswith("x" * 99_000)
    assert re.search(r"\[chatledger: [0-9,]+ more characters cut here; .*PostgreSQL has the whole text\]$", content)
    await stop(worker, task, sink)


def tags_as_multiple_select(base):
    field = base.table("Conversations").field("Tags")
    field.type, field.options = "multipleSelects", {"choices": []}


@pytest.mark.parametrize("change", [None, tags_as_multiple_select], ids=["long text", "multiple select"])
async def test_tags_emptied_through_the_api_are_emptied_in_airtable_too(emulators, journal, change):
    """A PATCH with "tags": [] empties PostgreSQL's tags; Airtable's Tags (a long text as documented, or a
    multiple select the operators made it) must not keep the old ones, whether the emptying comes in the
    same delivery as the tags or later."""
    emulator = documented("dateTime", change)
    emulators(emulator)
    sink = AirtableSink(client_for(emulator), NAMES, journal.conversations)

    def tags_of_c1():
        return next(r for r in rows(emulator, "Conversations") if r["ConversationId"] == C1).get("Tags")

    worker, task = await deliver_all(
        journal,
        sink,
        [
            normalize(message(1, contacts=5), RECEIVED),
            api_event(API_CONVERSATION_UPDATE, {"id": C1, "tags": ["vip", "late"]}, 700),
        ],
    )
    assert tags_of_c1() in ("vip, late", ["vip", "late"])
    await journal.append([api_event(API_CONVERSATION_UPDATE, {"id": C1, "tags": []}, 800)])
    await until(lambda: delivered(journal, 3), task, "the emptying delivered")
    assert not tags_of_c1()
    await journal.append(  # tags and their emptying in one delivery: the later wins
        [
            api_event(API_CONVERSATION_UPDATE, {"id": C1, "tags": ["again"]}, 900),
            api_event(API_CONVERSATION_UPDATE, {"id": C1, "tags": []}, 901),
        ]
    )
    await until(lambda: delivered(journal, 5), task, "both delivered")
    assert not tags_of_c1()
    await journal.append([api_event(API_CONVERSATION_UPDATE, {"id": C1, "tags": ["kept"]}, 940)])
    await until(lambda: delivered(journal, 6), task, "new tags delivered")
    await journal.append([api_event(API_CONVERSATION_UPDATE, {"id": C1, "priority": "HIGH"}, 950)])
    await until(lambda: delivered(journal, 7), task, "an update without tags delivered")
    assert tags_of_c1() in ("kept", ["kept"])  # an update that says nothing of the tags leaves them
    await stop(worker, task, sink)
