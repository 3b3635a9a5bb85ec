"""The Airtable sink and its delivery loop against the emulator over HTTP, through the real pyairtable."""

import asyncio
from collections import Counter
from datetime import UTC, datetime

import pytest

from daemon.delivery import DeliveryWorker
from daemon.events import normalize
from daemon.journal import Journal
from daemon.ratelimit import RequestBudget
from daemon.records import conversation_id_for
from daemon.sinks.airtable import TABLES, AirtableClient, AirtableSink, init_base
from daemon.sinks.airtable_schema import parse_field_mapping, plan_base
from daemon.sinks.base import RefusedError, SetupError
from daemon.testing.airtable import EmulatorThread
from tests.support import until

TOKEN = "patSINK00000000001.0123456789abcdef"
BASE = "appSINK0000000001"
NAMES = {"conversations": "Conversations", "interactions": "Interactions", "escalations": "Escalations"}
RECEIVED = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
T0 = 1_790_000_000


def message(i, contacts=7, text=None):
    return {
        "title": "incoming_message" if i % 3 else "outgoing_message",
        "service": "whatsapp",
        "bot": {"id": "bot1"},
        "date": T0 + i,
        "contact": {"id": f"c{i % contacts}", "phone": f"55119{i % contacts:08d}", "name": f"N{i % contacts}"},
        "info": {
            "message": {
                "id": f"wamid.{i}",
                "channel_data": {
                    "message": {
                        "type": "text",
                        "text": {"body": text or f"hello {i}"} if i % 3 else (text or f"hi {i}"),
                    }
                },
            }
        },
    }


def open_chat(contact="c1", at=10_000):
    return {
        "title": "open_chat",
        "service": "whatsapp",
        "bot": {"id": "bot1"},
        "date": T0 + at,
        "contact": {"id": contact, "phone": "5511900000001", "name": "N1"},
        "info": None,
    }


def emulator_thread(rate=5, lockout=30.0):
    running = EmulatorThread.serving(TOKEN, BASE, rate=rate, lockout=lockout)
    return running


@pytest.fixture
def emulator():
    running = emulator_thread()
    yield running
    running.stop()


def client_for(emulator, rate=5, lockout=30.0):
    return AirtableClient(TOKEN, BASE, emulator.url, RequestBudget(rate), lockout=lockout)


def rows(emulator, table):
    """Records straight from the emulator's state (reading over HTTP would spend the budget)."""

    def read():
        t = emulator.emulator.bases[BASE].table(table)
        return [t.by_name(r) for r in t.records.values()]

    return emulator.run(read)


def stats(emulator):
    return emulator.run(emulator.emulator.stats)[BASE]


def fault(emulator, **changes):
    def apply():
        for key, value in changes.items():
            setattr(emulator.emulator.faults, key, value)

    emulator.run(apply)


@pytest.fixture
async def journal(tmp_path):
    journal = await Journal.open(tmp_path / "j.sqlite", ["airtable"])
    yield journal
    await journal.close()


async def delivered(journal, n):
    return (await journal.counts())["sinks"].get("airtable", {}).get("delivered", 0) == n


async def started(journal, sink):
    worker = DeliveryWorker(journal, sink)
    return worker, asyncio.create_task(worker.run())


async def stop(worker, task, sink):
    worker.stop()
    await asyncio.wait_for(task, 30)
    await sink.close()


async def test_init_creates_the_operators_tables_and_check_agrees(emulator):
    client = client_for(emulator)
    plan = plan_base(await client.schema(), NAMES)
    assert "table 'Conversations' (conversations) is missing" in plan.problems
    done = await init_base(client, NAMES)
    assert done == [f"created table {n} with {len(TABLES[k])} fields" for k, n in NAMES.items()]
    plan = plan_base(await client.schema(), NAMES)
    assert (plan.problems, plan.warnings, plan.notes) == ([], [], [])
    assert await init_base(client, NAMES) == []
    client.close()


async def test_a_burst_of_1000_messages_lands_once_without_a_429(emulator, journal):
    sink = AirtableSink(client_for(emulator), NAMES, journal.conversations)
    await init_base(sink.client, NAMES)
    worker, task = await started(journal, sink)
    await journal.append([normalize(message(i), RECEIVED) for i in range(1000)] + [normalize(open_chat(), RECEIVED)])
    await until(lambda: delivered(journal, 1001), task, "burst delivered")
    assert stats(emulator)["rate_limited"] == 0
    interactions = rows(emulator, "Interactions")
    assert len(interactions) == 1000
    assert Counter(r["MessageId"] for r in interactions) == Counter(f"wamid.{i}" for i in range(1000))
    conversations = {r["ConversationId"]: r for r in rows(emulator, "Conversations")}
    per_conversation = Counter(r["ConversationId"] for r in interactions)
    assert {c: r["MessageCount"] for c, r in conversations.items()} == dict(per_conversation)
    c1 = conversations[conversation_id_for("bot1", "c1", None)]
    assert c1["Status"] == "escalated" and c1["CustomerName"] == "N1"
    [escalation] = rows(emulator, "Escalations")
    assert escalation["Status"] == "pending" and escalation["TicketId"].startswith("ESC-")
    status = worker.live_status()
    assert status["state"] == "up" and status["rate_limited_429"] == 0 and status["requests_last_minute"] > 100

    # a replay of everything creates nothing new
    await journal.requeue_dead("airtable")
    await journal.write(lambda conn: conn.execute("UPDATE deliveries SET state = 'pending' WHERE sink = 'airtable'"))
    worker.wake()
    await until(lambda: delivered(journal, 1001), task, "replay delivered")
    assert len(rows(emulator, "Interactions")) == 1000 and len(rows(emulator, "Escalations")) == 1
    assert len(rows(emulator, "Conversations")) == 7
    await stop(worker, task, sink)


async def test_a_renamed_field_is_left_out_until_mapped_and_nothing_waits(emulator, journal):
    sink = AirtableSink(client_for(emulator), NAMES, journal.conversations)
    await init_base(sink.client, NAMES)

    def rename():
        table = emulator.emulator.bases[BASE].table("Interactions")
        table.field("Content").name = "Body"

    emulator.run(rename)
    worker, task = await started(journal, sink)
    await journal.append([normalize(message(i), RECEIVED) for i in range(30)])
    await until(lambda: delivered(journal, 30), task, "delivered without the field")
    assert worker.state == "up" and worker.live_status()["warnings"] == [
        "Interactions.Content is missing: left out of what chatledger writes; 'Body' looks like it renamed: map it "
        'with "Interactions.Content" = "Body" under [airtable.fields]'
    ]
    assert len(rows(emulator, "Interactions")) == 30 and all(r["Body"] is None for r in rows(emulator, "Interactions"))
    assert await init_base(sink.client, NAMES) == [
        "did not create Interactions.Content: 'Body' looks like it renamed (map it under [airtable.fields], or "
        "create the field by hand)"
    ]
    sink.rename_fields(parse_field_mapping({"Interactions.Content": "Body"}))  # what SIGHUP does
    await journal.write(lambda conn: conn.execute("UPDATE deliveries SET state = 'pending' WHERE sink = 'airtable'"))
    worker.wake()
    await until(lambda: delivered(journal, 30), task, "delivered again through the mapping")

    async def bodies():
        return all(r["Body"] for r in rows(emulator, "Interactions"))

    await until(bodies, task, "every Body written")
    assert len(rows(emulator, "Interactions")) == 30 and worker.live_status()["warnings"] == []
    await stop(worker, task, sink)


async def test_down_then_back_and_a_poison_record_alone_is_dead(emulator, journal):
    sink = AirtableSink(client_for(emulator), NAMES, journal.conversations)
    await init_base(sink.client, NAMES)
    fault(emulator, down_until=emulator.emulator.clock() + 3600)
    worker, task = await started(journal, sink)
    fault(emulator, refuse_value="poison")  # a value Airtable refuses: this record alone
    payloads = [message(i) for i in range(25)]
    payloads[7] = message(7, text="poison")
    await journal.append([normalize(p, RECEIVED) for p in payloads])

    async def down():
        return worker.state == "down"

    await until(down, task, "down")
    assert "cannot reach Airtable" in worker.live_status()["last_error"]
    fault(emulator, down_until=None)
    worker.wake()

    async def settled():  # the poison is judged after records are created behind it: wait for both
        counts = (await journal.counts())["sinks"]["airtable"]
        return counts.get("delivered") == 24 and counts.get("dead") == 1

    await until(settled, task, "drained, the poison parked")
    [dead] = await journal.dead_letters("airtable", 10)
    assert "INVALID_VALUE_FOR_COLUMN" in str(dead)
    assert sorted(r["MessageId"] for r in rows(emulator, "Interactions")) == sorted(
        f"wamid.{i}" for i in range(25) if i != 7
    )
    await stop(worker, task, sink)


async def test_quota_stops_calling_and_a_429_anyway_pauses_the_base(journal):
    running = emulator_thread(rate=5, lockout=1.0)
    # a budget too big for the base, and the lockout shortened on both sides to keep the test short
    sink = AirtableSink(client_for(running, rate=50, lockout=1.0), NAMES, journal.conversations)
    try:
        await init_base(client_for(running), NAMES)
        fault(running, billing_exceeded=True)
        worker, task = await started(journal, sink)
        await journal.append([normalize(message(i), RECEIVED) for i in range(300)])

        async def quota():
            return worker.state == "quota"

        await until(quota, task, "quota")
        status = worker.live_status()
        assert status["pause_reason"] == "monthly API quota exhausted" and status["retry_in_s"] > 3000
        requests_at_quota = stats(running)["requests"]
        worker.wake()  # still exhausted: one more try, then the hourly pause again
        await until(quota, task, "quota again")
        fault(running, billing_exceeded=False)
        worker.wake()  # the operator raised the plan: retry at once
        await until(lambda: delivered(journal, 300), task, "drained after quota")
        assert stats(running)["requests"] > requests_at_quota
        # the oversized budget crossed the emulator's limit: each 429 paused the whole base, nothing was lost
        assert stats(running)["rate_limited"] >= 1 and worker.live_status()["rate_limited_429"] >= 1
        assert len(rows(running, "Interactions")) == 300
        await stop(worker, task, sink)
    finally:
        running.stop()


async def test_check_at_start_reports_a_missing_base_as_misconfigured(emulator, journal):
    sink = AirtableSink(
        AirtableClient(TOKEN, "appNOSUCHBASE0001", emulator.url, RequestBudget(5)), NAMES, journal.conversations
    )
    with pytest.raises(SetupError) as exc:
        await sink.check()
    assert "INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND" in str(exc.value)
    await sink.close()


async def test_with_max_records_the_base_is_counted_at_start_then_from_what_upserts_create(emulator, journal):
    client = client_for(emulator)
    await init_base(client, NAMES)
    await client.upsert("Interactions", "InteractionId", [{"InteractionId": f"typed-{i}"} for i in range(7)])
    sink = AirtableSink(client, NAMES, journal.conversations)
    sink.max_records = 100
    worker, task = await started(journal, sink)
    await until(lambda: _is(worker.live_status().get("records"), 7), task, "counted at start")
    assert worker.live_status()["max_records"] == 100
    await journal.append([normalize(message(i, contacts=3), RECEIVED) for i in range(30)])
    await until(lambda: delivered(journal, 30), task, "delivered")
    held = sum(len(rows(emulator, table)) for table in NAMES.values())
    assert worker.live_status()["records"] == held == 7 + 30 + 3
    await journal.write(lambda conn: conn.execute("UPDATE deliveries SET state = 'pending' WHERE sink = 'airtable'"))
    worker.wake()  # a replay updates: the count stays (and sync counts the base again)
    await until(lambda: delivered(journal, 30), task, "replayed")
    assert worker.live_status()["records"] == held
    await stop(worker, task, sink)


async def _is(value, expected):
    return value == expected


def held(emulator):
    return sum(len(rows(emulator, table)) for table in NAMES.values())


async def test_what_a_failing_batch_created_is_counted_all_the_same(emulator, journal):
    client = client_for(emulator)
    await init_base(client, NAMES)
    sink = AirtableSink(client, NAMES, journal.conversations)
    sink.max_records = 1000
    await sink.check()
    assert sink.records == 0
    await journal.append([normalize(message(i, contacts=3), RECEIVED) for i in range(30)])
    fault(emulator, refuse_value="hello 29")  # in the last chunk of interactions; the others go alongside
    with pytest.raises(RefusedError):
        await sink.deliver(await journal.pending("airtable", 0, 100))
    assert 0 < held(emulator) < 33 and sink.records == held(emulator)
    fault(emulator, refuse_value=None)
    await sink.deliver(await journal.pending("airtable", 0, 100))  # the retry finds most as updates
    assert sink.records == held(emulator) == 33
    await sink.close()


async def test_a_count_that_fails_at_start_is_made_at_a_later_delivery(emulator, journal):
    client = client_for(emulator)
    await init_base(client, NAMES)
    await client.upsert("Interactions", "InteractionId", [{"InteractionId": f"typed-{i}"} for i in range(7)])
    sink = AirtableSink(client, NAMES, journal.conversations)
    sink.max_records = 1000
    fault(emulator, billing_exceeded=True)  # the schema (meta API) reads, the records do not
    await sink.check()  # the base is fine: delivery goes on, the count waits
    assert sink.records is None
    fault(emulator, billing_exceeded=False)
    sink.client.budget.resume()  # the hourly quota pause, as its end would
    await journal.append([normalize(message(i, contacts=3), RECEIVED) for i in range(5)])
    await sink.deliver(await journal.pending("airtable", 0, 100))
    assert sink.records == held(emulator) == 7 + 5 + 3
    await sink.close()


async def test_only_an_operators_sync_lets_delivery_past_the_monthly_limit_or_counts_again(emulator, journal):
    from daemon.ratelimit import MonthlyRequests

    monthly = MonthlyRequests(5)
    monthly.count = 5
    client = AirtableClient(TOKEN, BASE, emulator.url, RequestBudget(5, monthly=monthly))
    sink = AirtableSink(client, NAMES, journal.conversations)
    sink.max_records = 1000
    sink._recount = False  # counted at start
    sink.wake()  # SIGHUP, replay, airtable init: the schema is read again, nothing more
    assert monthly.reached() is not None and not sink._recount
    sink.operator_sync()  # `chatledger sync`
    assert monthly.reached() is None and sink._recount
    await sink.close()
