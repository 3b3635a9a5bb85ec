"""daemon.sendpulse against the SendPulse emulator over real HTTP: tokens, paging, 429s, 5xx, bad credentials."""

from datetime import UTC, datetime, timedelta

import pytest

from daemon.ratelimit import RequestBudget
from daemon.sendpulse import (
    SendPulseClient,
    SendPulseMisconfigured,
    SendPulseNotFound,
    SendPulseUnavailable,
)
from daemon.testing.sendpulse import EmulatorThread

CLIENT_ID = "sp-client"
SECRET = "sp-secret-never-shown"
BOT = "68f176502ca6f03a9705c489"
START = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def serve(**limits):
    running = EmulatorThread.serving(CLIENT_ID, SECRET, **limits)
    running.run(running.emulator.add_bot, BOT, "SVlentes", 553399898026)
    return running


@pytest.fixture
def emulator(clock):
    running = serve(token_ttl=600, rate=10_000, clock=clock)
    yield running
    running.stop()


def client_of(emulator, secret=SECRET, rate=10, **options):
    return SendPulseClient(emulator.url, CLIENT_ID, secret, RequestBudget(rate), backoff=0.01, **options)


def stats(emulator):
    return emulator.run(emulator.emulator.stats)


def history(emulator, count, start=START, step=timedelta(seconds=1)):
    contact = emulator.run(emulator.emulator.add_contact, BOT, 5533999898026, "Maria", created_at=start)
    for i in range(count):
        emulator.run(
            emulator.emulator.add_message, contact.id, "in" if i % 2 else "out", f"m{i}", created_at=start + i * step
        )
    return contact


async def test_one_token_serves_many_calls_and_is_renewed_before_it_expires(emulator, clock):
    async with client_of(emulator, clock=clock) as client:
        for _ in range(3):
            assert [bot["id"] for bot in await client.bots()] == [BOT]
        assert stats(emulator)["tokens_issued"] == 1
        clock.now += 600 - 59  # inside the last minute of its life: renewed before SendPulse refuses it
        await client.bots()
    assert stats(emulator)["tokens_issued"] == 2 and stats(emulator)["unauthorized"] == 0


async def test_a_token_refused_early_is_fetched_again_once(emulator, clock):
    async with client_of(emulator) as client:  # its own clock: it believes the token still good
        await client.bots()
        emulator.call(_expire(emulator))
        assert [bot["id"] for bot in await client.bots()] == [BOT]
    assert stats(emulator)["tokens_issued"] == 2 and stats(emulator)["unauthorized"] == 1


async def _expire(emulator):
    emulator.emulator.tokens = {token: 0 for token in emulator.emulator.tokens}


async def test_wrong_credentials_are_misconfigured_and_never_show_the_secret(emulator):
    async with client_of(emulator, secret="wrong-secret-value") as client:
        with pytest.raises(SendPulseMisconfigured) as caught:
            await client.bots()
    assert "client_id 'sp-client'" in str(caught.value) and "invalid_client" in str(caught.value)
    assert str(caught.value).count("Client authentication failed") == 1  # its message and description say the same
    assert "wrong-secret-value" not in str(caught.value) + repr(client)
    assert stats(emulator)["credentials_refused"] == 1  # no retry loop hammering a refused secret


async def test_messages_since_pages_back_only_as_far_as_the_window(emulator):
    contact = history(emulator, 1050)  # one a second from START
    since = START + timedelta(seconds=700)
    async with client_of(emulator) as client:
        found = await client.messages_since(contact.id, since)
        pages = stats(emulator)["routes"]["/whatsapp/chats/messages"]
        everything = await client.messages_since(contact.id, START - timedelta(days=1))
    assert [m["data"]["text"]["body"] for m in found] == [f"m{i}" for i in range(700, 1050)]
    assert pages == 4  # 350 messages: four pages of 100, not the 11 of the whole history
    assert [m["id"] for m in everything] == [m.id for m in emulator.run(lambda: list(contact.messages))]


async def test_chats_lists_every_page_and_skips_those_idle_since(emulator):
    ids = []
    for i in range(230):
        active = START + timedelta(minutes=i)
        contact = emulator.run(emulator.emulator.add_contact, BOT, 5511900000000 + i, f"c{i}", created_at=active)
        ids.append(contact.id)
    async with client_of(emulator) as client:
        recent = [chat["contact"]["id"] async for chat in client.chats(BOT, START + timedelta(minutes=200))]
        every = [chat["contact"]["id"] async for chat in client.chats(BOT)]
        with pytest.raises(SendPulseNotFound):
            await client.messages_since("a" * 24, START)
        assert (await client.contact(ids[0]))["id"] == ids[0]
    assert sorted(recent) == sorted(ids[200:]) and sorted(every) == sorted(ids)


async def test_server_errors_are_retried_then_reported_as_unavailable(emulator):
    async with client_of(emulator) as client:
        emulator.run(_fault, emulator, 503, 2)
        assert [bot["id"] for bot in await client.bots()] == [BOT]
        emulator.run(_fault, emulator, 502, None)
        with pytest.raises(SendPulseUnavailable) as caught:
            await client.bots()
    assert "502" in str(caught.value)


def _fault(emulator, status, count):
    emulator.emulator.faults.status = status
    emulator.emulator.faults.status_count = count


async def test_429s_back_off_and_every_page_still_arrives():
    running = serve(rate=3)  # the real clock: an account whose bot spends most of the 10/s
    try:
        contact = history(running, 600)
        async with client_of(running, rate=10) as client:
            found = await client.messages_since(contact.id, START)
        assert len(found) == 600 and len({m["id"] for m in found}) == 600
        assert stats(running)["rate_limited"] > 0
        assert client.budget.rejected_429 == stats(running)["rate_limited"]
    finally:
        running.stop()


async def test_the_budget_is_never_exceeded():
    running = serve(rate=5)  # exactly the client's budget: one request over would be a 429
    try:
        contact = history(running, 1200)
        async with client_of(running, rate=5) as client:
            assert len(await client.messages_since(contact.id, START)) == 1200
        assert stats(running)["rate_limited"] == 0 and stats(running)["requests"] == 14
    finally:
        running.stop()


async def test_a_slow_or_dropped_answer_is_retried_then_unavailable(emulator, clock):
    async with client_of(emulator, timeout=0.2) as client:
        await client.bots()
        emulator.run(lambda: setattr(emulator.emulator.faults, "latency", 1.0))
        with pytest.raises(SendPulseUnavailable) as caught:
            await client.bots()
        assert "no answer in time" in str(caught.value)
        emulator.run(lambda: setattr(emulator.emulator.faults, "latency", 0.0))
        emulator.run(lambda: setattr(emulator.emulator.faults, "down_until", clock.now + 5))
        with pytest.raises(SendPulseUnavailable):
            await client.bots()
        clock.now += 5  # SendPulse is back
        assert [bot["id"] for bot in await client.bots()] == [BOT]
