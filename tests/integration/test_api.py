"""The bot-facing API: writes through the journal to both sinks, reads falling back PostgreSQL -> journal
-> Airtable, validation, auth, and a property-based test over its OpenAPI document that finds no 5xx."""

import itertools
import json
import urllib.error
import urllib.request
from contextlib import asynccontextmanager
from datetime import UTC
from functools import partial

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.api import ApiStores, add_api, openapi
from daemon.config import ServerConfig
from daemon.journal import Journal
from daemon.ratelimit import RequestBudget
from daemon.records import api_interaction_id, conversation_id_for
from daemon.sinks.airtable import AirtableClient, AirtableSink, init_base
from daemon.sinks.postgres import PostgresSink, quote_ident
from daemon.sinks.postgres_rows import PostgresRows
from daemon.webhook import create_webhook_app
from tests.integration.conftest import BASE, NAMES
from tests.integration.conftest import TOKEN as AIRTABLE_TOKEN
from tests.support import LoopThread, free_port, incoming

API_TOKEN = "api-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
CONVERSATION = conversation_id_for("bot1", "c1", None)


def server_config():
    return ServerConfig(webhook_token="webhook-token-0123456789", api_token=API_TOKEN)


@asynccontextmanager
async def api_client(journal, postgres=None, airtable=None):
    app = create_webhook_app(server_config(), journal)
    add_api(app, API_TOKEN, ApiStores(journal, postgres, lambda: airtable))
    client = TestClient(TestServer(app, host="127.0.0.1", port=free_port()))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def stores_for(stores_emulator, tmp_path):
    """A journal for both sinks, the real sinks, and a delivery that empties it into them."""

    async def make(dsn, schema):
        journal = await Journal.open(tmp_path / "api.sqlite", ["postgres", "airtable"])
        client = AirtableClient(AIRTABLE_TOKEN, BASE, stores_emulator.url, RequestBudget(5))
        await init_base(client, NAMES)
        airtable = AirtableSink(client, NAMES, journal.conversations, journal.event_times)
        postgres = PostgresSink(dsn, schema)

        async def deliver():
            for sink in (postgres, airtable):
                events = await journal.pending(sink.name, 0, 10_000)
                await sink.deliver(events)
                await journal.mark_delivered(sink.name, [e.id for e in events])

        return journal, client, postgres, airtable, deliver

    return make


def airtable_rows(emulator, table):
    def read():
        t = emulator.emulator.bases[BASE].table(table)
        return [t.by_name(r) for r in t.records.values()]

    return emulator.run(read)


async def test_writes_reach_both_sinks_and_enrich_the_webhook_rows(
    stores_for, stores_emulator, pg_cluster, pg_conn, pg_schema
):
    from datetime import datetime

    from daemon.events import normalize

    journal, client, postgres, airtable, deliver = await stores_for(pg_cluster.dsn(), pg_schema)
    rows = partial(PostgresRows.open, pg_cluster.dsn(), pg_schema)
    try:
        await journal.append([normalize(incoming("wamid.1", contact="c1"), datetime.now(UTC))])
        async with api_client(journal, rows, (client, NAMES)) as api:
            interaction = {
                "id": "bot-1",
                "conversationId": CONVERSATION,
                "messageId": "wamid.1",
                "direction": "inbound",
                "content": "oi",
                "intent": "greeting",
                "response": "Olá!",
                "processingTime": 120,
                "status": "read",
                "customerPhone": "+55 11 98765-4321",
                "timestamp": "2026-11-27T10:00:00Z",
            }
            first = await api.post("/api/v1/interactions", json=interaction, headers=AUTH)
            assert first.status == 201 and (await first.json())["interactionId"] == api_interaction_id(
                "bot-1", "wamid.1", "inbound"
            )
            again = await api.post("/api/v1/interactions", json=interaction, headers=AUTH)
            assert again.status == 200 and (await again.json())["duplicate"] is True
            loose = {
                "id": "bot-2",
                "conversationId": CONVERSATION,
                "direction": "outbound",
                "content": "Olá!",
                "processingTime": 80,
            }
            assert (await api.post("/api/v1/interactions", json=loose, headers=AUTH)).status == 201
            escalation = {"id": "esc-1", "conversationId": CONVERSATION, "reason": "wants a human", "priority": "HIGH"}
            assert (await api.post("/api/v1/escalations", json=escalation, headers=AUTH)).status == 201
            patch = await api.patch(
                "/api/v1/escalations/esc-1",
                json={"status": "resolved", "assignedAgent": "ana", "resolvedAt": "2026-11-27T11:00:00Z"},
                headers=AUTH,
            )
            assert patch.status == 200
            assert (
                await api.patch("/api/v1/escalations/nobody", json={"status": "resolved"}, headers=AUTH)
            ).status == 404
            phantom = await api.patch("/api/v1/conversations/nobody", json={"status": "closed"}, headers=AUTH)
            assert phantom.status == 404 and "no conversation nobody" in (await phantom.json())["error"]
            assert await journal.conversations(["nobody"]) == {}  # nothing journaled: no phantom in either store
            conv = await api.patch(
                f"/api/v1/conversations/{CONVERSATION}",
                headers=AUTH,
                json={
                    "intent": "support",
                    "sentiment": "positive",
                    "priority": "HIGH",
                    "tags": ["vip", "pix"],
                    "metadata": {"plan": "gold"},
                },
            )
            assert conv.status == 200
            status = await api.patch(
                f"/api/v1/conversations/{CONVERSATION}", headers=AUTH, json={"status": "escalated"}
            )
            assert status.status == 200
            await deliver()
            state = (await journal.conversations([CONVERSATION]))[CONVERSATION]
            # the webhook's wamid.1 and bot-2 (no message id); bot-1 enriched wamid.1
            assert (state.message_count, state.status) == (2, "escalated")

            s = quote_ident(pg_schema)
            got = await pg_conn.fetch(
                f"SELECT interaction_id, message_id, content, intent, response, "
                f"processing_time_ms, status FROM {s}.interactions ORDER BY message_id"
            )
            assert [tuple(r) for r in got] == [
                (api_interaction_id("bot-1", "wamid.1", "inbound"), "wamid.1", "oi", "greeting", "Olá!", 120, "read"),
                ("bot-2", None, "Olá!", None, None, 80, "sent"),
            ]
            esc = await pg_conn.fetchrow(f"SELECT status, assigned_agent, priority, resolved_at FROM {s}.escalations")
            assert (esc["status"], esc["assigned_agent"], esc["priority"]) == ("resolved", "ana", "HIGH")
            c = await pg_conn.fetchrow(
                f"SELECT intent, sentiment, priority, tags, metadata, message_count, status "
                f"FROM {s}.conversations WHERE conversation_id = $1",
                CONVERSATION,
            )
            assert (c["intent"], c["priority"], json.loads(c["tags"]), c["message_count"], c["status"]) == (
                "support",
                "HIGH",
                ["vip", "pix"],
                2,
                "escalated",
            )
            assert json.loads(c["metadata"])["plan"] == "gold"

            at = {r["InteractionId"]: r for r in airtable_rows(stores_emulator, "Interactions")}
            assert len(at) == 2 and at[api_interaction_id("bot-1", "wamid.1", "inbound")]["Intent"] == "greeting"
            assert at["bot-2"]["ProcessingTime"] == 80
            [at_esc] = airtable_rows(stores_emulator, "Escalations")
            assert (at_esc["Status"], at_esc["AssignedAgent"], at_esc["Priority"]) == ("resolved", "ana", "HIGH")
            [at_conv] = airtable_rows(stores_emulator, "Conversations")
            assert (
                at_conv["Intent"],
                at_conv["Tags"],
                at_conv["Priority"],
                at_conv["Status"],
                at_conv["MessageCount"],
            ) == ("support", "vip, pix", "HIGH", "escalated", 2)

            read = await (await api.get(f"/api/v1/conversations/{CONVERSATION}", headers=AUTH)).json()
            assert read["source"] == "postgres" and read["conversation"]["intent"] == "support"
            listed = await (await api.get(f"/api/v1/conversations/{CONVERSATION}/interactions", headers=AUTH)).json()
            assert listed["source"] == "postgres" and [i["id"] for i in listed["interactions"]][1] == "bot-2"
    finally:
        await postgres.close()
        await airtable.close()
        await journal.close()


async def test_reads_fall_back_to_the_journal_then_airtable(stores_for, own_pg, tmp_path):
    journal, client, postgres, airtable, deliver = await stores_for(own_pg.dsn(), "chatledger")
    rows = partial(PostgresRows.open, own_pg.dsn(), "chatledger")
    try:
        async with api_client(journal, rows, (client, NAMES)) as api:
            body = {
                "id": "bot-9",
                "conversationId": "conv-9",
                "direction": "inbound",
                "content": "hello",
                "customerPhone": "5511999999999",
            }
            assert (await api.post("/api/v1/interactions", json=body, headers=AUTH)).status == 201
            await deliver()
            own_pg.stop("immediate")
            read = await (await api.get("/api/v1/conversations/conv-9/interactions", headers=AUTH)).json()
            assert read["source"] == "journal" and read["interactions"][0]["content"] == "hello"
        # a journal that no longer holds it (purged): Airtable answers
        other = await Journal.open(tmp_path / "empty.sqlite", [])
        try:
            async with api_client(other, rows, (client, NAMES)) as api:
                conv = await (await api.get("/api/v1/conversations/conv-9", headers=AUTH)).json()
                assert conv["source"] == "airtable" and conv["conversation"]["customerPhone"] == "5511999999999"
                listed = await (await api.get("/api/v1/conversations/conv-9/interactions", headers=AUTH)).json()
                assert listed["source"] == "airtable" and listed["interactions"][0]["content"] == "hello"
                missing = await api.get("/api/v1/conversations/none", headers=AUTH)
                assert missing.status == 404
        finally:
            await other.close()
    finally:
        await postgres.close()
        await airtable.close()
        await journal.close()


async def test_auth_and_validation_errors(tmp_path):
    journal = await Journal.open(tmp_path / "j.sqlite", [])
    try:
        async with api_client(journal) as api:
            body = {"id": "x", "conversationId": "c", "direction": "sideways", "processingTime": -1}
            assert (await api.post("/api/v1/interactions", json=body)).status == 401
            wrong = await api.post("/api/v1/interactions", json=body, headers={"Authorization": "Bearer nope"})
            assert wrong.status == 401
            bad = await api.post("/api/v1/interactions", json=body, headers=AUTH)
            assert bad.status == 422
            fields = {tuple(f["loc"]) for f in (await bad.json())["fields"]}
            assert fields == {("direction",), ("processingTime",)}
            assert (await api.patch("/api/v1/conversations/c", json={}, headers=AUTH)).status == 422
            assert (await api.post("/api/v1/escalations", data=b"{not json", headers=AUTH)).status == 400
            assert (await api.get("/api/v1/openapi.json")).status == 200
            assert (await journal.counts())["events"] == 0  # nothing invalid was journaled
    finally:
        await journal.close()


CONTROL_IDS = [  # (method, path, body, the field named)
    ("patch", "/api/v1/conversations/a%00b", {"status": "closed"}, ["path", "id"]),
    ("patch", "/api/v1/escalations/a%1Bb", {"status": "resolved"}, ["path", "id"]),
    ("get", "/api/v1/conversations/a%7Fb", None, ["path", "id"]),
    ("get", "/api/v1/conversations/a%C2%85b/interactions", None, ["path", "id"]),
    ("post", "/api/v1/interactions", {"id": "a\tb", "conversationId": "c", "direction": "inbound"}, ["id"]),
    (
        "post",
        "/api/v1/interactions",
        {"id": "i", "conversationId": "c\ud800", "direction": "inbound"},
        ["conversationId"],
    ),
    (
        "post",
        "/api/v1/interactions",
        {"id": "i", "conversationId": "c", "direction": "inbound", "messageId": "m\x9b"},
        ["messageId"],
    ),
    ("post", "/api/v1/escalations", {"id": "e", "conversationId": "c", "ticketId": "t\nx"}, ["ticketId"]),
]


@pytest.mark.parametrize("method, path, body, loc", CONTROL_IDS)
async def test_ids_with_control_characters_are_refused_naming_the_field(tmp_path, method, path, body, loc):
    journal = await Journal.open(tmp_path / "j.sqlite", ["postgres"])
    try:
        async with api_client(journal) as api:
            answer = await api.request(method, path, json=body, headers=AUTH)
            assert answer.status == 422
            refused = await answer.json()
            assert refused["error"] == "validation failed" and [f["loc"] for f in refused["fields"]] == [loc]
            assert (await journal.counts())["events"] == 0  # nothing journaled, no dead letter to come
    finally:
        await journal.close()


# -- property-based: whatever the body, never a 5xx ------------------------------------------------


class ApiThread(LoopThread):
    """The API app (journal only) on its own loop in a thread, for synchronous hypothesis examples."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.port = free_port()

    def start(self):
        self.run(self._start(), 30)
        return self

    async def _start(self):
        self.journal = await Journal.open(self.path, ["postgres"])
        app = create_webhook_app(server_config(), self.journal)
        add_api(app, API_TOKEN, ApiStores(self.journal, None, lambda: None))
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def _stop(self):
        await self.runner.cleanup()
        await self.journal.close()

    def stop(self):
        self.run(self._stop(), 30)
        self.close()

    def request(self, method, route, body):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{route}",
            data=data,
            method=method,
            headers={**AUTH, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status
        except urllib.error.HTTPError as exc:
            return exc.code


@pytest.fixture(scope="module")
def api_thread(tmp_path_factory):
    running = ApiThread(tmp_path_factory.mktemp("api") / "journal.sqlite").start()
    assert running.request("POST", "/api/v1/escalations", {"id": "esc-any", "conversationId": "c"}) == 201
    yield running
    running.stop()


DOC = openapi()


def _nested(inner):
    return st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    _nested,
    max_leaves=12,
)


def _value(schema):
    """Values of the schema's type (often valid), mixed with any JSON at all."""
    kinds = {s.get("type") for s in schema.get("anyOf", [schema])}
    options = [JSON]
    if "string" in kinds:
        options += [
            st.text(max_size=40),
            st.sampled_from(
                [
                    "2026-11-27T10:00:00Z",
                    "inbound",
                    "outbound",
                    "sent",
                    "resolved",
                    "HIGH",
                    "active",
                    "+55 11 98765-4321",
                    "",
                ]
            ),
        ]
    for s in schema.get("anyOf", [schema]):
        if "enum" in s:
            options.append(st.sampled_from(s["enum"]))
        if "const" in s:
            options.append(st.just(s["const"]))
    if "integer" in kinds:
        options.append(st.integers(min_value=-10, max_value=2**40))
    if "array" in kinds:
        options.append(st.lists(st.text(max_size=12), max_size=4))
    if "object" in kinds:
        options.append(st.dictionaries(st.text(max_size=8), JSON, max_size=3))
    return st.one_of(options)


TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30)


def _valid(schema):
    """Values the schema accepts (mostly): the bodies that get past validation and reach the journal,
    the sinks' mapping and the stores."""
    if "anyOf" in schema:
        return st.one_of([_valid(branch) for branch in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "integer":
        return st.integers(schema.get("minimum", -(2**31)), schema.get("maximum", 2**31))
    if kind == "array":
        return st.lists(_valid(schema.get("items", {"type": "string"})), max_size=5)
    if kind == "object":
        return st.dictionaries(st.text(max_size=8), JSON, max_size=3)
    if schema.get("format") == "date-time":
        return st.datetimes().map(lambda d: d.isoformat()) | st.sampled_from(["2026-11-27T10:00:00Z", "1700000000"])
    return TEXT | st.sampled_from(["+55 11 98765-4321", "wamid.HBg", "id-1", "a\x00b", " lead"])


UNIQUE = itertools.count()


def bodies(model):
    schema = DOC["components"]["schemas"][model]
    properties, required = schema["properties"], set(schema.get("required", []))
    # Unique values stay unique: a ticket or message id reused for another row is a contradiction
    # PostgreSQL refuses (a dead letter, by design), not what this test looks for.
    fresh = st.builds(lambda: f"u-{next(UNIQUE)}")  # hypothesis repeats values on purpose, even uuids
    unique = {name: fresh | st.none() for name in ("ticketId", "messageId") if name in properties}
    valid = st.fixed_dictionaries(
        {name: _valid(properties[name]) for name in required},
        optional={name: unique.get(name, _valid(s)) for name, s in properties.items() if name not in required},
    )
    mixed = st.fixed_dictionaries(
        {}, optional={name: unique.get(name, _valid(s) | _value(s)) for name, s in properties.items()}
    )
    return valid | mixed | JSON


OPERATIONS = [
    (method.upper(), path, op["requestBody"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1])
    for path, item in DOC["paths"].items()
    for method, op in item.items()
    if "requestBody" in op
]


@pytest.mark.parametrize("method,path,model", OPERATIONS, ids=[f"{m} {p}" for m, p, _ in OPERATIONS])
def test_no_body_makes_the_api_fail_with_a_5xx(api_thread, method, path, model):
    route = path.replace("{id}", "esc-any")

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(body=bodies(model), raw=st.booleans(), junk=st.binary(max_size=20))
    def check(body, raw, junk):
        status = api_thread.request(method, route, junk if raw and not body else body)
        assert status < 500, (method, route, body)

    check()


def test_reads_never_fail_with_a_5xx(api_thread):
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(
        conversation=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20),
        limit=st.one_of(st.integers(-5, 5000).map(str), st.text(max_size=5)),
    )
    def check(conversation, limit):
        from urllib.parse import quote, urlencode

        route = f"/api/v1/conversations/{quote(conversation, safe='')}/interactions?{urlencode({'limit': limit})}"
        request = urllib.request.Request(f"http://127.0.0.1:{api_thread.port}{route}", headers=AUTH)
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                status = answer.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        assert status < 500, route

    check()


def test_whatever_the_api_accepted_lands_in_postgresql_and_maps_for_airtable(api_thread, pg_cluster, pg_schema):
    """Runs after the property tests above (same journal): every body they got accepted must be
    deliverable, not a dead letter in waiting."""
    from daemon.records import map_events
    from daemon.sinks.airtable import airtable_rows

    async def deliver():
        journal = api_thread.journal
        events = await journal.pending("postgres", 0, 100_000)
        records = map_events(events)
        airtable_rows(events, records, await journal.conversations([c.conversation_id for c in records.conversations]))
        sink = PostgresSink(pg_cluster.dsn(), pg_schema)
        try:
            for start in range(0, len(events), 50):
                await sink.deliver(events[start : start + 50])  # a PermanentError here is a bug
        finally:
            await sink.close()
        return len(events)

    assert api_thread.run(deliver()) > 20


async def test_reads_from_airtable_use_the_mapped_field_names(renamed_stores, tmp_path):
    from tests.integration.conftest import cid

    empty = await Journal.open(tmp_path / "empty.sqlite", [])  # neither PostgreSQL nor the journal knows it
    try:
        async with api_client(empty, None, (renamed_stores.client, renamed_stores.names)) as api:
            conv = await (await api.get(f"/api/v1/conversations/{cid('c2')}", headers=AUTH)).json()
            assert conv["source"] == "airtable" and conv["conversation"]["customerPhone"] == "5511900000002"
            listed = await (
                await api.get(f"/api/v1/conversations/{cid('c2')}/interactions?limit=3", headers=AUTH)
            ).json()
            assert listed["source"] == "airtable" and len(listed["interactions"]) == 3
            assert all(int(i["content"].split()[1]) % 4 == 2 for i in listed["interactions"])  # c2's messages
            assert listed["interactions"][0]["timestamp"] == "2026-09-21"  # a date field without time
    finally:
        await empty.close()


def emulator_requests(emulator):
    return emulator.run(emulator.emulator.stats)[BASE]["requests"]


async def test_reads_from_airtable_give_our_values_whatever_the_field_types(typed_stores, stores_emulator, tmp_path):
    from daemon.sinks.airtable_schema import BaseNames
    from tests.integration.conftest import cid, duration_and_multiple_select

    stores = await typed_stores(duration_and_multiple_select)
    empty = await Journal.open(tmp_path / "empty.sqlite", [])  # neither PostgreSQL nor the journal knows it
    requests = emulator_requests(stores_emulator)
    try:
        async with api_client(empty, None, (stores.client, BaseNames(NAMES))) as api:
            conv = await (await api.get(f"/api/v1/conversations/{cid('c1')}", headers=AUTH)).json()
            assert conv["source"] == "airtable" and conv["conversation"]["tags"] == ["vip", "late"]
            assert conv["conversation"]["messageCount"] == 17
            listed = await (await api.get(f"/api/v1/conversations/{cid('c1')}/interactions", headers=AUTH)).json()
            assert listed["source"] == "airtable"
            # a duration field holds seconds; the API documents milliseconds
            assert sorted(i["processingTime"] for i in listed["interactions"] if i["processingTime"]) == [
                350,
                1_234_567,
            ]
            assert emulator_requests(stores_emulator) - requests == 2  # the sink's plan, no schema read
    finally:
        await empty.close()


async def test_reads_from_airtable_read_the_base_schema_once_not_per_request(typed_stores, stores_emulator, tmp_path):
    from tests.integration.conftest import cid, duration_and_multiple_select

    stores = await typed_stores(duration_and_multiple_select)
    empty = await Journal.open(tmp_path / "empty.sqlite", [])
    # the base's budget, but no plan: nothing read the schema through this client
    client = AirtableClient(AIRTABLE_TOKEN, BASE, stores_emulator.url, stores.client.budget)
    try:
        async with api_client(empty, None, (client, NAMES)) as api:
            requests = emulator_requests(stores_emulator)
            for _ in range(2):
                listed = await (await api.get(f"/api/v1/conversations/{cid('c1')}/interactions", headers=AUTH)).json()
                assert 350 in [i["processingTime"] for i in listed["interactions"]]
            conv = await (await api.get(f"/api/v1/conversations/{cid('c1')}", headers=AUTH)).json()
            assert conv["conversation"]["tags"] == ["vip", "late"]
            assert emulator_requests(stores_emulator) - requests == 1 + 3  # the schema once, then a list each
    finally:
        client.close()
        await empty.close()


async def test_a_read_airtable_cannot_select_says_why_instead_of_sending_a_broken_formula(
    typed_stores, stores_emulator, tmp_path
):
    from tests.integration.conftest import cid

    def without_interaction_conversations(base):
        base.table("Interactions").remove_field("ConversationId")

    stores = await typed_stores(without_interaction_conversations)
    assert stores.warnings and "Interactions.ConversationId is missing" in stores.warnings[0]
    empty = await Journal.open(tmp_path / "empty.sqlite", [])
    try:
        async with api_client(empty, None, (stores.client, NAMES)) as api:
            requests = emulator_requests(stores_emulator)
            answer = await api.get(f"/api/v1/conversations/{cid('c1')}/interactions", headers=AUTH)
            assert answer.status == 404
            assert (await answer.json())["error"] == (
                f"no conversation {cid('c1')} in any store that answered (Airtable was not asked: "
                "Interactions.ConversationId is missing, so interactions cannot be selected by conversation; "
                "`chatledger airtable init` creates it)"
            )
            assert emulator_requests(stores_emulator) == requests  # no formula Airtable answers 422
            conv = await api.get(f"/api/v1/conversations/{cid('c1')}", headers=AUTH)
            assert conv.status == 200 and (await conv.json())["source"] == "airtable"
    finally:
        await empty.close()


def _message(message_id, at, text="oi"):
    from datetime import datetime

    from daemon.events import normalize

    return normalize(incoming(message_id, text=text) | {"date": at}, datetime.now(UTC))


async def _interaction_times(pg_conn, schema):
    got = await pg_conn.fetch(
        f"SELECT message_id, occurred_at, content, intent FROM {quote_ident(schema)}.interactions"
    )
    return {r["message_id"]: (r["occurred_at"].isoformat(), r["content"], r["intent"]) for r in got}


async def test_an_enrichment_never_moves_the_time_of_its_message_in_either_store(
    stores_for, stores_emulator, pg_cluster, pg_conn, pg_schema
):
    """Whichever comes first, the webhook's message or the bot's enrichment of it (without a timestamp),
    both stores end with the message's time and text, and the bot's fields."""
    journal, client, postgres, airtable, deliver = await stores_for(pg_cluster.dsn(), pg_schema)
    t1, t2, t3 = "2026-11-27T09:00:00+00:00", "2026-11-27T09:05:00+00:00", "2026-11-27T09:10:00+00:00"
    try:
        async with api_client(journal, None, (client, NAMES)) as api:

            async def enrich(message_id):
                body = {
                    "id": f"bot-{message_id}",
                    "conversationId": CONVERSATION,
                    "messageId": message_id,
                    "direction": "inbound",
                    "intent": "greeting",
                }
                assert (await api.post("/api/v1/interactions", json=body, headers=AUTH)).status == 201

            await journal.append([_message("wamid.1", t1, "first")])  # the message, delivered, then its enrichment
            await deliver()
            await enrich("wamid.1")
            await deliver()
            await enrich("wamid.2")  # the enrichment first, delivered, then its message
            await deliver()
            await journal.append([_message("wamid.2", t2, "second")])
            await deliver()
            await journal.append([_message("wamid.3", t3, "third")])  # both in one delivery
            await enrich("wamid.3")
            await deliver()

            assert await _interaction_times(pg_conn, pg_schema) == {
                "wamid.1": (t1, "first", "greeting"),
                "wamid.2": (t2, "second", "greeting"),
                "wamid.3": (t3, "third", "greeting"),
            }
            received = {
                e.message_id: e.received_at
                for e in await journal.events_of_conversation(CONVERSATION, 100)
                if e.title == "incoming_message"
            }
            at = {r["MessageId"]: r for r in airtable_rows(stores_emulator, "Interactions")}
            assert {
                m: (r["Timestamp"], r.get("CreatedAt"), r.get("Content"), r.get("Intent")) for m, r in at.items()
            } == {
                "wamid.1": ("2026-11-27T09:00:00.000Z", received["wamid.1"], "first", "greeting"),
                "wamid.2": ("2026-11-27T09:05:00.000Z", received["wamid.2"], "second", "greeting"),
                "wamid.3": ("2026-11-27T09:10:00.000Z", received["wamid.3"], "third", "greeting"),
            }

            # PostgreSQL not configured: the journal answers, with the message's text and time
            listed = await (await api.get(f"/api/v1/conversations/{CONVERSATION}/interactions", headers=AUTH)).json()
            assert listed["source"] == "journal"
            assert [(i["messageId"], i["timestamp"], i["content"], i["intent"]) for i in listed["interactions"]] == [
                ("wamid.1", "2026-11-27T09:00:00.000Z", "first", "greeting"),
                ("wamid.2", "2026-11-27T09:05:00.000Z", "second", "greeting"),
                ("wamid.3", "2026-11-27T09:10:00.000Z", "third", "greeting"),
            ]
    finally:
        await postgres.close()
        await airtable.close()
        await journal.close()


async def test_reads_from_the_journal_while_postgresql_is_down_carry_the_message_text(stores_for, own_pg):
    journal, client, postgres, airtable, deliver = await stores_for(own_pg.dsn(), "chatledger")
    rows = partial(PostgresRows.open, own_pg.dsn(), "chatledger")
    try:
        await journal.append([_message("wamid.9", "2026-11-27T09:00:00Z", "quero falar com alguém")])
        async with api_client(journal, rows, (client, NAMES)) as api:
            body = {
                "id": "bot-9",
                "conversationId": CONVERSATION,
                "messageId": "wamid.9",
                "direction": "inbound",
                "intent": "human",
                "processingTime": 40,
            }
            assert (await api.post("/api/v1/interactions", json=body, headers=AUTH)).status == 201
            await deliver()
            own_pg.stop("immediate")
            listed = await (await api.get(f"/api/v1/conversations/{CONVERSATION}/interactions", headers=AUTH)).json()
            assert listed["source"] == "journal"
            [one] = listed["interactions"]
            assert (one["content"], one["intent"], one["processingTime"], one["timestamp"]) == (
                "quero falar com alguém",
                "human",
                40,
                "2026-11-27T09:00:00.000Z",
            )
    finally:
        await postgres.close()
        await airtable.close()
        await journal.close()
