"""Reconciliation against the SendPulse emulator, with a real journal and the real webhook intake."""

import asyncio
import json
import sqlite3
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from daemon.config import ServerConfig
from daemon.events import normalize
from daemon.journal import Journal
from daemon.ratelimit import RequestBudget
from daemon.reconcile import reconcile
from daemon.sendpulse import SendPulseClient
from daemon.testing.sendpulse import EmulatorThread
from daemon.testing.sendpulse.model import webhook_body
from daemon.webhook import create_webhook_app

CLIENT_ID = "sp-client"
SECRET = "sp-secret-never-shown"
BOT = "68f176502ca6f03a9705c489"
TOKEN = "integration-token-0123456789"
PATH = "/webhooks/sendpulse"


def now():
    return datetime.now(UTC).replace(microsecond=0)


def serve(**limits):
    running = EmulatorThread.serving(CLIENT_ID, SECRET, **limits)
    running.run(running.emulator.add_bot, BOT, "SVlentes", 553399898026)
    return running


@pytest.fixture
def emulator():
    running = serve(rate=10_000)
    yield running
    running.stop()


@pytest.fixture
async def intake(tmp_path):
    """The journal and the webhook app in front of it, on a real port the emulator posts to."""
    journal = await Journal.open(tmp_path / "journal.sqlite", ["postgres"], page_limit=None)
    client = TestClient(TestServer(create_webhook_app(ServerConfig(webhook_token=TOKEN), journal)))
    await client.start_server()
    client.hook = str(client.make_url(PATH)) + f"?token={TOKEN}"
    yield client, journal
    await client.close()
    await journal.close()


def client_of(emulator, secret=SECRET, rate=10):
    return SendPulseClient(emulator.url, CLIENT_ID, secret, RequestBudget(rate), backoff=0.01)


async def run(emulator, journal, since=None, **options):
    async with client_of(emulator, **{k: options.pop(k) for k in ("secret", "rate") if k in options}) as client:
        return await reconcile(client, journal, since or now() - timedelta(hours=1), **options)


def contact(emulator, phone=5533999898026, name="Maria"):
    return emulator.run(emulator.emulator.add_contact, BOT, phone, name, created_at=now() - timedelta(hours=2))


async def add(emulator, *specs):
    """Messages through the emulator's control route (its webhooks posted to our intake, once)."""
    async with aiohttp.ClientSession() as session:
        async with session.post(emulator.url + "/_emulator/messages", json={"messages": list(specs)}) as answer:
            body = await answer.json()
            assert answer.status == 200, body
            return body["messages"]


def events(journal):
    with sqlite3.connect(journal.path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute("SELECT * FROM events ORDER BY id")]


async def test_a_webhooks_message_is_present_a_missed_one_is_added_once(emulator, intake):
    client, journal = intake
    maria = contact(emulator)
    at = now() - timedelta(minutes=10)
    got, missed, reply = await add(
        emulator,
        {
            "contact_id": maria.id,
            "direction": "in",
            "text": "oi",
            "created_at": at.isoformat(),
            "webhook": {"url": client.hook},
        },
        {
            "contact_id": maria.id,
            "direction": "in",
            "text": "tem em estoque?",
            "created_at": (at + timedelta(seconds=5)).isoformat(),
            "webhook": {"url": "http://127.0.0.1:9/down"},
        },
        {
            "contact_id": maria.id,
            "direction": "out",
            "text": "Temos sim!",
            "created_at": (at + timedelta(seconds=9)).isoformat(),
        },
    )
    assert got["webhook"]["status"] == 200 and "error" in missed["webhook"]
    webhook_raw = events(journal)[0]["raw"]

    report = await run(emulator, journal)
    assert report.error is None, report.error
    assert (report.bots, report.chats, report.seen, report.added, report.present) == (1, 1, 3, 2, 1)
    rows = events(journal)
    assert [(r["dedup_key"], r["text"]) for r in rows] == [
        (f"msg:incoming_message:{got['id']}", "oi"),
        (f"msg:incoming_message:{missed['id']}", "tem em estoque?"),
        (f"msg:outgoing_message:{reply['id']}", "Temos sim!"),
    ]
    assert rows[0]["raw"] == webhook_raw  # the webhook's payload is kept
    fetched = json.loads(rows[1]["raw"])
    assert fetched["source"] == "reconcile" and fetched["id"] == missed["id"] and fetched["data"] == missed["data"]
    assert rows[1]["platform_message_id"] == missed["data"]["id"] and rows[1]["phone"] == "5533999898026"
    assert rows[2]["platform_message_id"] == reply["data"]["message_id"] and rows[2]["direction"] == "outbound"
    assert rows[1]["occurred_at"] == (at + timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert rows[0]["conversation_id"] == rows[1]["conversation_id"] == rows[2]["conversation_id"]
    with sqlite3.connect(journal.path) as conn:
        assert conn.execute("SELECT message_count FROM conversations").fetchone()[0] == 3
        assert conn.execute("SELECT count(*) FROM deliveries WHERE state = 'pending'").fetchone()[0] == 3

    again = await run(emulator, journal)
    assert (again.seen, again.added, again.present) == (3, 0, 3) and len(events(journal)) == 3


async def test_a_webhook_arriving_after_its_message_was_fetched_back_is_a_duplicate(emulator, intake):
    client, journal = intake
    maria = contact(emulator)
    (late,) = await add(emulator, {"contact_id": maria.id, "direction": "in", "text": "cheguei tarde"})
    assert (await run(emulator, journal)).added == 1
    body = emulator.run(
        lambda: webhook_body(
            emulator.emulator.bots[BOT],
            emulator.emulator.contacts[maria.id],
            emulator.emulator.messages[late["id"]],
            {},
        )
    )
    answer = await client.post(PATH, params={"token": TOKEN}, data=json.dumps(body))
    assert answer.status == 200 and await answer.json() == {"accepted": 0, "duplicates": 1, "rejected": 0}
    assert len(events(journal)) == 1


@pytest.mark.parametrize("direction", ["in", "out"])
async def test_an_api_id_unlike_the_webhooks_is_present_when_the_wamid_matches(emulator, intake, direction):
    client, journal = intake
    maria = contact(emulator)
    (message,) = await add(
        emulator,
        {"contact_id": maria.id, "direction": direction, "text": "ok", "webhook": {"url": client.hook, "id": "a" * 24}},
    )
    assert message["webhook"]["status"] == 200
    report = await run(emulator, journal)
    assert (report.added, report.present) == (0, 1)
    assert [r["message_id"] for r in events(journal)] == ["a" * 24]


async def test_text_matches_only_events_without_ids_and_each_only_once(emulator, intake):
    client, journal = intake
    maria = contact(emulator)
    at = now() - timedelta(minutes=5)
    await add(
        emulator,
        {
            "contact_id": maria.id,
            "direction": "in",
            "text": "ok",
            "created_at": at.isoformat(),
            "webhook": {"url": client.hook, "id": None, "wamid": None},
        },
        {
            "contact_id": maria.id,
            "direction": "in",
            "text": "ok",
            "created_at": (at + timedelta(seconds=30)).isoformat(),
        },
        {
            "contact_id": maria.id,
            "direction": "out",
            "text": "ok",
            "created_at": (at + timedelta(seconds=31)).isoformat(),
        },
    )
    assert [r["message_id"] for r in events(journal)] == [None]
    report = await run(emulator, journal)
    # the id-less "ok" is one of the two inbound ones; the other, and the bot's "ok", are messages of their own
    assert (report.seen, report.added, report.present) == (3, 2, 1)
    assert sorted((r["direction"], r["text"]) for r in events(journal)) == [
        ("inbound", "ok"),
        ("inbound", "ok"),
        ("outbound", "ok"),
    ]


async def test_thousands_of_messages_are_paged_and_none_journaled_twice(emulator, intake, tmp_path):
    _, journal = intake
    maria = contact(emulator)
    start = now() - timedelta(minutes=50)
    specs = [
        {
            "contact_id": maria.id,
            "direction": "in" if i % 4 else "out",
            "text": f"m{i}",
            "created_at": (start + timedelta(seconds=i)).isoformat(),
        }
        for i in range(2600)
    ]
    added = await add(emulator, *specs)
    # every third one reached us by webhook
    bodies = emulator.run(
        lambda: [
            webhook_body(
                emulator.emulator.bots[BOT],
                emulator.emulator.contacts[maria.id],
                emulator.emulator.messages[m["id"]],
                {},
            )[0]
            for m in added[::3]
        ]
    )
    result = await journal.append([normalize(body, now()) for body in bodies])
    assert result.accepted == 867
    report = await run(emulator, journal, since=start - timedelta(minutes=1))
    assert (report.seen, report.added, report.present) == (2600, 1733, 867)
    rows = events(journal)
    assert len(rows) == 2600 and len({r["message_id"] for r in rows}) == 2600
    assert (await run(emulator, journal, since=start)).added == 0


async def test_an_expired_token_is_renewed_and_429s_are_waited_out(intake):
    _, journal = intake
    running = serve(rate=3)  # the bot spends most of the account's 10/s
    try:
        maria = contact(running)
        start = now() - timedelta(minutes=30)
        await add(
            running,
            *(
                {
                    "contact_id": maria.id,
                    "direction": "in",
                    "text": f"m{i}",
                    "created_at": (start + timedelta(seconds=i)).isoformat(),
                }
                for i in range(450)
            ),
        )
        async with client_of(running, rate=10) as client:
            first = await reconcile(client, journal, start)
            running.run(lambda: running.emulator.tokens.update({t: 0 for t in running.emulator.tokens}))
            second = await reconcile(client, journal, start)
        stats = running.run(running.emulator.stats)
        assert first.error is None and second.error is None
        assert (first.added, second.added, second.present) == (450, 0, 450)
        assert stats["rate_limited"] > 0 and stats["unauthorized"] == 1 and stats["tokens_issued"] == 2
    finally:
        running.stop()


async def test_wrong_credentials_stop_the_run_as_misconfigured(emulator, intake):
    _, journal = intake
    maria = contact(emulator)
    await add(emulator, {"contact_id": maria.id, "direction": "in", "text": "oi"})
    report = await run(emulator, journal, secret="wrong")
    assert report.state == "misconfigured" and "client_id" in report.error and "wrong" not in report.error
    assert report.added == 0 and events(journal) == []


async def test_only_the_bots_asked_for(emulator, intake):
    _, journal = intake
    other = emulator.run(emulator.emulator.add_bot, "b" * 24, "Other", 5511900000001)
    elsewhere = emulator.run(emulator.emulator.add_contact, other.id, 5511988887777, "Ana")
    await add(
        emulator,
        {"contact_id": contact(emulator).id, "direction": "in", "text": "oi"},
        {"contact_id": elsewhere.id, "direction": "in", "text": "olá"},
    )
    report = await run(emulator, journal, bot_ids=[BOT])
    assert (report.bots, report.added) == (1, 1) and [r["text"] for r in events(journal)] == ["oi"]
    report = await run(emulator, journal, bot_ids=["c" * 24])
    assert report.error and "c" * 24 in report.error and report.added == 0


async def test_a_run_cut_short_by_sendpulse_keeps_what_it_added(emulator, intake):
    _, journal = intake
    for phone in (5511900000001, 5511900000002):
        person = contact(emulator, phone=phone)
        await add(emulator, *({"contact_id": person.id, "direction": "in", "text": f"{phone}-{i}"} for i in range(3)))

    def fail_from_now_on(report):
        emulator.run(lambda: setattr(emulator.emulator.faults, "status", 503))

    async with client_of(emulator) as client:
        report = await reconcile(client, journal, now() - timedelta(hours=1), progress=fail_from_now_on)
    assert report.state == "down" and "503" in report.error
    assert (report.chats, report.added) == (1, 3) and len(events(journal)) == 3


async def test_a_webhook_whose_message_id_is_the_wamid_holds_the_message(emulator, intake):
    client, journal = intake
    maria = contact(emulator)
    wamid = "wamid.HBgMNTUzMjk5OTI5OTY5FQIAERgSRkFLRTEyMzQ1Njc4OTAA"
    await add(
        emulator,
        {
            "contact_id": maria.id,
            "direction": "in",
            "text": "oi",
            "wamid": wamid,
            "webhook": {"url": client.hook, "id": wamid, "wamid": None},
        },
    )
    assert [(r["message_id"], r["platform_message_id"]) for r in events(journal)] == [(wamid, wamid)]
    report = await run(emulator, journal)
    assert (report.added, report.present) == (0, 1) and len(events(journal)) == 1


async def test_chats_reordered_by_new_activity_mid_run_are_each_read_once(emulator, intake):
    _, journal = intake
    start = now() - timedelta(minutes=30)
    people = []
    for i in range(150):  # the most recently active first: people[0] is read first, people[120] on page two
        person = emulator.run(emulator.emulator.add_contact, BOT, 5511900000000 + i, f"c{i}", created_at=start)
        emulator.run(
            emulator.emulator.add_message, person.id, "in", f"m{i}", created_at=start + timedelta(seconds=150 - i)
        )
        people.append(person)

    def writes_again(report):
        if report.chats == 1:  # people[120] becomes the most recently active: every chat before it moves down
            emulator.run(emulator.emulator.add_message, people[120].id, "in", "de novo", created_at=now())

    async with client_of(emulator) as client:
        report = await reconcile(client, journal, start, progress=writes_again)
    assert report.error is None and report.chats == 150
    assert (report.seen, report.added, report.present) == (151, 151, 0)
    assert len(events(journal)) == 151


@pytest.mark.parametrize("direction", ["in", "out"])
async def test_a_late_webhook_whose_id_differs_from_the_apis_is_a_duplicate_when_the_wamid_matches(
    emulator, intake, direction
):
    client, journal = intake
    maria = contact(emulator)
    first, second = await add(
        emulator,
        {"contact_id": maria.id, "direction": direction, "text": "cheguei tarde"},
        {"contact_id": maria.id, "direction": direction, "text": "outra"},
    )
    assert (await run(emulator, journal)).added == 2
    for message in (first, second):
        body = emulator.run(
            lambda m=message: webhook_body(
                emulator.emulator.bots[BOT],
                emulator.emulator.contacts[maria.id],
                emulator.emulator.messages[m["id"]],
                {"id": "f" * 24 if m is first else "e" * 24},
            )
        )
        answer = await client.post(PATH, params={"token": TOKEN}, data=json.dumps(body))
        assert answer.status == 200 and await answer.json() == {"accepted": 0, "duplicates": 1, "rejected": 0}
    assert sorted(r["message_id"] for r in events(journal)) == sorted([first["id"], second["id"]])
    assert (await journal.counts())["counters"]["duplicates"] == 2


@pytest.mark.parametrize("direction", ["in", "out"])
async def test_a_late_webhook_carrying_the_wamid_as_its_id_is_a_duplicate(emulator, intake, direction):
    client, journal = intake
    maria = contact(emulator)
    (message,) = await add(emulator, {"contact_id": maria.id, "direction": direction, "text": "só o wamid"})
    assert (await run(emulator, journal)).added == 1
    wamid = emulator.run(lambda: emulator.emulator.messages[message["id"]].wamid)
    assert wamid.startswith("wamid.")
    body = emulator.run(
        lambda: webhook_body(
            emulator.emulator.bots[BOT],
            emulator.emulator.contacts[maria.id],
            emulator.emulator.messages[message["id"]],
            {"id": wamid, "wamid": None},
        )
    )  # the wamid in the SendPulse id's slot, none where it usually goes
    answer = await client.post(PATH, params={"token": TOKEN}, data=json.dumps(body))
    assert answer.status == 200 and await answer.json() == {"accepted": 0, "duplicates": 1, "rejected": 0}
    assert [r["message_id"] for r in events(journal)] == [message["id"]]


@pytest.mark.parametrize("webhook_ids", [{}, {"id": "SENDPULSE-ID-UNLIKE-THE-APIS"}], ids=["same-id", "other-id"])
async def test_webhooks_and_a_run_racing_for_the_same_messages_journal_each_once(emulator, intake, webhook_ids):
    client, journal = intake
    people = [
        emulator.run(
            emulator.emulator.add_contact, BOT, 5511900000000 + i, f"c{i}", created_at=now() - timedelta(hours=1)
        )
        for i in range(12)
    ]
    messages = [
        emulator.run(
            emulator.emulator.add_message,
            person.id,
            "in" if n % 2 else "out",
            f"m{i}-{n}",
            created_at=now() - timedelta(minutes=30 - n),
        )
        for i, person in enumerate(people)
        for n in range(4)
    ]

    async def post(message):
        overrides = {key: f"{value}{message.id}" for key, value in webhook_ids.items()}
        body = emulator.run(
            lambda: webhook_body(
                emulator.emulator.bots[BOT], emulator.emulator.contacts[message.contact_id], message, overrides
            )
        )
        answer = await client.post(PATH, params={"token": TOKEN}, data=json.dumps(body))
        assert answer.status == 200

    posted = iter(messages)

    def between_chats(report):  # a few webhooks land between each chat the run reads, the rest alongside it
        for message in [next(posted, None) for _ in range(3)]:
            if message is not None:
                pending.append(asyncio.ensure_future(post(message)))

    pending = []
    async with client_of(emulator, rate=10_000) as sendpulse:
        report, *_ = await asyncio.gather(
            reconcile(sendpulse, journal, now() - timedelta(hours=1), progress=between_chats),
            *(post(message) for message in messages[::5]),
        )
    await asyncio.gather(*pending)
    for message in posted:
        await post(message)
    assert report.error is None and report.added + report.present == len(messages)
    rows = events(journal)
    assert len(rows) == len(messages)
    assert sorted(r["platform_message_id"] for r in rows) == sorted(m.wamid for m in messages)
    with sqlite3.connect(journal.path) as conn:
        assert conn.execute("SELECT sum(message_count) FROM conversations").fetchone() == (len(messages),)
    again = await run(emulator, journal)
    assert (again.added, again.present) == (0, len(messages))
