"""Property: batches of arbitrary JSON elements (lone surrogates, NUL, huge and non-finite numbers, far
dates, deep nesting), posted concurrently with valid webhooks, never get a 5xx while the journal can
write; every valid element is accepted; and everything acknowledged reaches a real PostgreSQL without
a dead letter."""

import asyncio
import itertools
import json

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.config import ServerConfig
from daemon.delivery import DeliveryWorker
from daemon.journal import Journal
from daemon.sinks.postgres import PostgresSink, quote_ident
from daemon.webhook import GuardedRunner, create_webhook_app
from tests.support import LoopThread, free_port

TOKEN = "property-token-0123456789"
PATH = "/webhooks/sendpulse"
VALID_PER_EXAMPLE = 8


class Token:
    """A JSON number written exactly as given (1e400, a 5000-digit integer...)."""

    def __init__(self, text):
        self.text = text


def dumps(value) -> str:
    """JSON text of a tree that may hold Tokens and lone surrogates (escaped as \\udXXX, as JSON allows)."""
    if isinstance(value, Token):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{dumps(str(k))}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=True)


NASTY_TEXT = st.sampled_from(
    [
        "\ud800",
        "\udfff",
        "a\udc00b\ud83d",
        "a\x00b",
        "\x00",
        "\ufffe",
        "\u2028",
        " ",
        "",
        "ok",
        "+55 11 98765-4321",
        "9999-12-31T23:59:59-05:00",
        "0001-01-01T00:00:00+05:00",
        "2026-11-30T08:00:00Z",
        "1e400",
    ]
) | st.text(alphabet=st.characters(exclude_categories=[]), max_size=20)
NASTY_NUMBER = (
    st.sampled_from(
        [
            "1e400",
            "-1e400",
            "1e-20000",
            "9" * 5000,
            "9" * 400,
            "0e999",
            "1e308",
            "-0",
            "1e131072",
            "123456789012345678901234567890",
            "1713225600000",
            "-5",
            "2.5",
        ]
    ).map(Token)
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
)
LEAF = st.none() | st.booleans() | NASTY_TEXT | NASTY_NUMBER


def _nested(inner):
    return st.lists(inner, max_size=3) | st.dictionaries(NASTY_TEXT, inner, max_size=3)


def _deep(depth_and_inside):
    """Arrays nested `depth` deep around `inside`, as text (hypothesis cannot print them as values)."""
    depth, inside = depth_and_inside if isinstance(depth_and_inside, tuple) else (depth_and_inside, "")
    return Token("[" * depth + inside + "]" * depth)


VALUE = (
    st.recursive(LEAF, _nested, max_leaves=8)
    | st.integers(1, 900).map(_deep)
    | st.tuples(st.integers(1, 900), st.sampled_from(["", '"\\u0000"', "1e400"])).map(_deep)
)
TITLE = (
    st.sampled_from(["incoming_message", "outgoing_message", "open_chat", "unsubscribe", "new_subscriber"]) | NASTY_TEXT
)
ELEMENT = (
    st.fixed_dictionaries(
        {"title": TITLE},
        optional={
            "date": NASTY_NUMBER | NASTY_TEXT,
            "service": VALUE,
            "bot": VALUE,
            "contact": st.fixed_dictionaries({}, optional={"id": LEAF, "phone": LEAF, "name": LEAF, "variables": VALUE})
            | VALUE,
            "info": st.fixed_dictionaries(
                {},
                optional={
                    "message": st.fixed_dictionaries(
                        {},
                        optional={"id": LEAF, "channel_data": st.fixed_dictionaries({}, optional={"message": VALUE})},
                    )
                },
            )
            | VALUE,
            "extra": VALUE,
        },
    )
    | VALUE
)
BATCH = st.lists(ELEMENT, min_size=1, max_size=6)

SEQUENCE = itertools.count()


def valid(n):
    return {
        "title": "incoming_message",
        "service": "whatsapp",
        "bot": {"id": "bot1"},
        "date": 1_790_000_000 + n,
        "contact": {"id": f"c{n % 7}", "phone": "+55 11 98765-4321", "name": "Ana"},
        "info": {"message": {"id": f"valid-{n}", "channel_data": {"message": {"text": {"body": f"oi {n}"}}}}},
    }


class WebhookThread(LoopThread):
    """The daemon's webhook listener on its own loop in a thread, for synchronous hypothesis examples."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.port = free_port()

    def start(self):
        self.run(self._start())
        return self

    async def _start(self):
        self.journal = await Journal.open(self.path, ["postgres"])
        config = ServerConfig(webhook_token=TOKEN)
        self.runner = GuardedRunner(create_webhook_app(config, self.journal), config, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        self.session = aiohttp.ClientSession()

    async def post(self, text: str):
        async with self.session.post(
            f"http://127.0.0.1:{self.port}{PATH}?token={TOKEN}",
            data=text.encode(),
            headers={"Content-Type": "application/json"},
        ) as response:
            return response.status, await response.text()

    async def _stop(self):
        await self.session.close()
        await self.runner.cleanup()
        await self.journal.close()

    def stop(self):
        self.run(self._stop())
        self.close()


@pytest.fixture(scope="module")
def webhook(tmp_path_factory):
    running = WebhookThread(tmp_path_factory.mktemp("hostile") / "journal.sqlite").start()
    yield running
    running.stop()


def test_hostile_batches_beside_valid_traffic(webhook, pg_cluster, pg_schema):
    sent_valid = []

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(batch=BATCH)
    def check(batch):
        numbers = [next(SEQUENCE) for _ in range(VALID_PER_EXAMPLE)]
        sent_valid.extend(numbers)
        hostile = "[" + ",".join(dumps(element) for element in batch) + "]"

        async def together():
            return await asyncio.gather(webhook.post(hostile), *(webhook.post(json.dumps([valid(n)])) for n in numbers))

        (status, text), *answers = webhook.run(together())
        assert status < 500, (status, text, hostile[:500])
        if status == 200:
            counts = json.loads(text)
            # only an element that is not an object or has no title is rejected: nothing else is lost
            titled = sum(
                1
                for element in batch
                if isinstance(element, dict) and isinstance(element.get("title"), str) and element["title"].strip()
            )
            assert (counts["accepted"] + counts["duplicates"], counts["rejected"]) == (titled, len(batch) - titled), (
                counts,
                hostile[:500],
            )
        else:  # only a body nested past what can be read is refused whole, and says so
            assert status == 400 and "nested too deeply" in text, (status, text)
        assert [json.loads(body) for _, body in answers] == [
            {"accepted": 1, "duplicates": 0, "rejected": 0}
        ] * VALID_PER_EXAMPLE

    check()

    async def deliver():
        journal = webhook.journal
        sink = PostgresSink(pg_cluster.dsn(), pg_schema)
        worker = DeliveryWorker(journal, sink)
        task = asyncio.create_task(worker.run())
        while (await journal.counts())["sinks"]["postgres"]["pending"]:
            assert not task.done(), task
            await asyncio.sleep(0.05)
        worker.stop()
        await task
        conn = await sink._connection()
        s = quote_ident(pg_schema)
        stored = await conn.fetchval(f"SELECT count(*) FROM {s}.events")
        messages = {row[0] for row in await conn.fetch(f"SELECT message_id FROM {s}.interactions")}
        await sink.close()
        return await journal.counts(), stored, messages

    counts, stored, messages = webhook.run(deliver())
    postgres = counts["sinks"]["postgres"]
    assert postgres["dead"] == 0, postgres
    assert postgres["delivered"] == counts["events"] == stored
    assert {f"valid-{n}" for n in sent_valid} <= messages
