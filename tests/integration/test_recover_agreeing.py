"""`recover` on two stores that agree: a realistic mix delivered the daemon's way (webhooks over HTTP, the bot
API, delivery in rounds) to the real PostgreSQL cluster and the emulated base, in each documented variant;
nothing may be called conflicting."""

import json
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import TestClient, TestServer

from daemon.api import ApiStores, add_api
from daemon.config import ServerConfig
from daemon.journal import Journal
from daemon.ratelimit import RequestBudget
from daemon.records import conversation_id_for
from daemon.recover import Recovery, Selection
from daemon.sinks.airtable import AirtableClient, AirtableSink, init_base
from daemon.sinks.postgres import PostgresSink, quote_ident
from daemon.sinks.postgres_rows import PostgresRows
from daemon.testing.airtable import EmulatorThread
from daemon.testing.airtable.bases import documented_base
from daemon.webhook import create_webhook_app
from tests.support import free_port

TOKEN = "patAGREE000000001.0123456789abcdef"
BASE = "appAGREE000000001"
NAMES = {"conversations": "Conversations", "interactions": "Interactions", "escalations": "Escalations"}
WEBHOOK_TOKEN = "webhook-token-0123456789"
API_TOKEN = "api-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
START = datetime(2026, 11, 20, 9, 0, 0, tzinfo=UTC)
EMOJI = "Olá 👋🏽 tudo bem? 🇧🇷 ção ñ 中文 𝄞"
LONG = ("Muito obrigado! 🙏 " * 8000)[:120_000]  # longer than a cell: written cut, with a marker

# (contact id or None, how the phone is typed, name, service)
CONTACTS = [
    ("64a1f0c2e4b0a1b2c3d4e5f6", "+55 (11) 98765-4321", "Ana Souza 🌸", "whatsapp"),
    ("64a1f0c2e4b0a1b2c3d4e5f7", "5511912345678", "Bruno", "whatsapp"),
    (None, "+55 21 99999-0000", "Carla (sem id)", "whatsapp"),
    ("64a1f0c2e4b0a1b2c3d4e5f9", 5531988887777, "Davi", "whatsapp"),
    ("64a1f0c2e4b0a1b2c3d4e5fa", "55 31 9 7777-6666", "Eva", "telegram"),
    ("64a1f0c2e4b0a1b2c3d4e5fb", "+55.41.96666-5555", "Fábio", "whatsapp"),
]


def conversation_of(n):
    contact, phone, _, _ = CONTACTS[n]
    digits = "".join(ch for ch in str(phone) if ch.isdigit())
    return conversation_id_for("bot1", contact, digits)


def stamp(moment, style):
    """`date` as integrators see it: seconds, milliseconds, text, ISO with an offset, or none."""
    if style == "s":
        return int(moment.timestamp())
    if style == "ms":
        return int(moment.timestamp() * 1000)
    if style == "s-text":
        return str(int(moment.timestamp()))
    if style == "s-float":
        return moment.timestamp()
    if style == "iso":
        return moment.astimezone(timezone(timedelta(hours=-3))).isoformat()
    return None


STYLES = ("s", "ms", "s-text", "ms", "s", "iso", "s-float", "none")
TEXTS = (
    EMOJI,
    "  espaços nas pontas  ",
    "linha 1\r\nlinha 2\n\tlinha 3",
    "nul \x00 aqui",
    "12345",
    "0",
    LONG,
    "\u200b",
    "ok",
)


def element(title, n, at, style, message_id=None, text=None, kind="text"):
    contact, phone, name, service = CONTACTS[n]
    out = {
        "title": title,
        "service": service,
        "bot": {"id": "bot1", "name": "Bot"},
        "contact": {"phone": phone, "name": name, "variables": {}, "last_message": text},
        "info": None,
    }
    if contact:
        out["contact"]["id"] = contact
    if stamp(at, style) is not None:
        out["date"] = stamp(at, style)
    if message_id:
        if kind == "text":
            body = {"type": "text", "text": {"body": text} if title == "incoming_message" else text}
        elif kind == "image":
            body = {"type": "image", "image": {"caption": text, "url": "https://example.com/p.jpg"}}
        else:
            body = {
                "type": "interactive",
                "interactive": {"type": "button_reply", "button_reply": {"id": "b1", "title": text}},
            }
        out["info"] = {"message": {"id": message_id, "channel_data": {"message": body}}}
    return out


async def deliver(journal, sinks):
    for sink in sinks:
        while True:
            events = await journal.pending(sink.name, 0, 500)
            if not events:
                break
            await sink.deliver(events)
            await journal.mark_delivered(sink.name, [e.id for e in events])


async def deliver_mix(journal, postgres, airtable, airtable_late=False):
    """About 150 interactions of six contacts, status events, escalations and the bot API's writes, delivered
    in rounds as the daemon delivers them (Airtable only at the end if `airtable_late`: it was down). Returns
    how many interactions there are."""
    server = ServerConfig(webhook_token=WEBHOOK_TOKEN, api_token=API_TOKEN)
    app = create_webhook_app(server, journal)
    add_api(app, API_TOKEN, ApiStores(journal, None, lambda: None))
    client = TestClient(TestServer(app, host="127.0.0.1", port=free_port()))
    await client.start_server()
    messages = []
    try:

        async def webhook(elements):
            answer = await client.post(f"{server.webhook_path}?token={WEBHOOK_TOKEN}", json=elements)
            assert answer.status == 200, await answer.text()

        async def api(method, path, body):
            answer = await client.request(method, f"/api/v1/{path}", json=body, headers=AUTH)
            assert answer.status in (200, 201), await answer.text()

        at = START
        for round_ in range(15):
            batch = []
            for i in range(10):
                k = round_ * 10 + i
                n = k % len(CONTACTS)
                at += timedelta(seconds=37, milliseconds=k * 7)
                title = "incoming_message" if k % 3 else "outgoing_message"
                text = TEXTS[k % len(TEXTS)]
                kind = ("text", "text", "image", "text", "interactive")[k % 5]
                message_id = f"6a496b4f67a824bf{k:08x}"
                style = STYLES[k % len(STYLES)]
                batch.append(element(title, n, at, style, message_id, text, kind))
                # the message's time as the journal holds it (without a date: the receive time, unknown here)
                sent = None if style == "none" else at.replace(microsecond=0) if style in ("s", "s-text") else at
                messages.append((message_id, title, n, sent))
                if k % 11 == 0:
                    batch.append(element("message_read", n, at + timedelta(seconds=2), "ms", message_id))
            if round_ == 3:
                batch.append(element("open_chat", 1, at, "s", text="preciso de ajuda"))
            if round_ == 5:
                batch.append(element("unsubscribe", 2, at, "ms"))
                batch.append(element("new_subscriber", 3, at, "s"))
            if round_ == 7:
                batch.append(element("bot_block", 4, at, "s"))
            await webhook(batch)
            if round_ % 2:
                await deliver(journal, [postgres] if airtable_late else [postgres, airtable])
            # the bot enriches some of what it saw, with the message's time (without it Airtable's Timestamp
            # became the call's: issue 14, item 3)
            for message_id, title, n, when in messages[-10:][::3]:
                if when is None:
                    continue
                await api(
                    "POST",
                    "interactions",
                    {
                        "id": f"bot-{message_id}",
                        "conversationId": conversation_of(n),
                        "messageId": message_id,
                        "direction": "inbound" if title == "incoming_message" else "outbound",
                        "intent": "saudação",
                        "response": "Olá! 😊",
                        "processingTime": (len(message_id) * 37) % 2000,
                        "status": "read",
                        "timestamp": when.isoformat().replace("+00:00", "Z"),
                    },
                )
            await api(
                "POST",
                "interactions",
                {
                    "id": f"bot-own-{round_}",
                    "conversationId": conversation_of(round_ % 6),
                    "direction": "outbound",
                    "content": f"Mensagem do bot {round_} ✅",
                    "processingTime": 0 if round_ == 0 else 1234,
                    "status": "failed" if round_ == 2 else "sent",
                    **({"errorMessage": "WhatsApp 131047: re-engagement"} if round_ == 2 else {}),
                    **(
                        {
                            "timestamp": (at + timedelta(milliseconds=123))
                            .astimezone(timezone(timedelta(hours=-3)))
                            .isoformat()
                        }
                        if round_ % 3
                        else {}
                    ),
                },
            )
            if round_ == 4:
                await api(
                    "PATCH",
                    f"conversations/{conversation_of(0)}",
                    {
                        "intent": "compra",
                        "sentiment": "positivo 😀",
                        "priority": "HIGH",
                        "assignedAgent": "Ana",
                        "tags": ["vip", "pix", "São Paulo"],
                        "metadata": {"plan": "gold"},
                    },
                )
                await api(
                    "POST",
                    "escalations",
                    {
                        "id": "esc-api-1",
                        "conversationId": conversation_of(0),
                        "reason": "quer falar com humano",
                        "priority": "CRITICAL",
                        "customerPhone": "+55 11 98765-4321",
                        "createdAt": (at - timedelta(minutes=1)).isoformat(),
                    },
                )
                await api(
                    "POST",
                    "escalations",
                    {"id": "esc-api-2", "conversationId": conversation_of(3), "notes": "sem prioridade"},
                )
            if round_ == 9:
                await api(
                    "PATCH",
                    "escalations/esc-api-1",
                    {
                        "status": "resolved",
                        "assignedAgent": "Bia",
                        "resolvedAt": at.isoformat(),
                        "notes": "resolvido ✔",
                    },
                )
                await api("PATCH", f"conversations/{conversation_of(1)}", {"priority": "LOW", "status": "closed"})
        await deliver(journal, [postgres, airtable])
    finally:
        await client.close()
    return len(messages) + 15


@pytest.fixture
def fast_emulator():
    running = EmulatorThread.serving(TOKEN, BASE, rate=50, lockout=30.0)
    yield running
    running.stop()


@pytest.fixture
async def mixed_stores(tmp_path, fast_emulator, pg_cluster, pg_schema):
    """`await mixed_stores(variant, late)`: the mix delivered to PostgreSQL and a base made by `airtable init`
    ("init") or documented with dates "date", "dateTime" or "mixed"."""
    opened = []

    async def make(variant, late=False):
        client = AirtableClient(TOKEN, BASE, fast_emulator.url, RequestBudget(50))
        if variant == "init":
            await init_base(client, NAMES)
        else:
            fast_emulator.run(lambda: documented_base(fast_emulator.emulator.bases[BASE], variant))
        journal = await Journal.open(tmp_path / "j.sqlite", ["postgres", "airtable"])
        airtable = AirtableSink(client, NAMES, journal.conversations)
        postgres = PostgresSink(pg_cluster.dsn(), pg_schema)
        opened.append((airtable, postgres, journal))
        interactions = await deliver_mix(journal, postgres, airtable, late)
        assert airtable.warnings == []
        return SimpleNamespace(client=client, journal=journal, interactions=interactions)

    yield make
    for airtable, postgres, journal in opened:
        await postgres.close()
        await airtable.close()
        await journal.close()


@pytest.mark.parametrize(
    "variant, late", [("init", False), ("date", False), ("dateTime", False), ("mixed", False), ("init", True)]
)
async def test_recover_all_on_stores_that_agree_finds_nothing_conflicting(
    variant, late, mixed_stores, pg_cluster, pg_conn, pg_schema
):
    stores = await mixed_stores(variant, late)
    before = await dump(pg_conn, pg_schema)
    async with PostgresRows.open(pg_cluster.dsn(), pg_schema) as pg:
        report = await Recovery(stores.client, NAMES, pg, prefer="airtable", diff=True).run(Selection(everything=True))
    assert report.diffs == [] and report.problems == []
    t = report.tallies
    assert (t["conversations"].read, t["interactions"].read, t["escalations"].read) == (6, stores.interactions, 3)
    assert all(
        tally.present == tally.read and tally.conflicting == tally.replaced == tally.inserted == 0
        for tally in t.values()
    )
    assert await dump(pg_conn, pg_schema) == before  # Airtable preferred, and still nothing written


async def dump(conn, schema):
    s = quote_ident(schema)
    return {
        table: sorted(
            json.dumps(row, sort_keys=True, default=str)
            for row in await conn.fetch(f"SELECT to_jsonb(t) FROM {s}.{table} AS t")
        )
        for table in ("conversations", "interactions", "escalations")
    }
