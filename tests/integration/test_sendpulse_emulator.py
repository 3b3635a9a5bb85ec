"""The SendPulse emulator, driven over real HTTP with an aiohttp client."""

import asyncio
import json
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from aiohttp import web

from daemon.testing.sendpulse import EmulatorThread
from tests.support import (
    SENDPULSE_BOT,
    SENDPULSE_CLIENT_ID,
    SENDPULSE_CLIENT_SECRET,
    SendPulseEmulator,
    free_port,
    wait_for,
)

CLIENT_ID = "sp-test-client"
SECRET = "sp-test-secret"
BOT = "68f176502ca6f03a9705c489"
START = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


@pytest.fixture
def emulator(clock):
    running = EmulatorThread.serving(CLIENT_ID, SECRET, token_ttl=60, rate=10, clock=clock)
    running.run(running.emulator.add_bot, BOT, "SVlentes", 553399898026)
    yield running
    running.stop()


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as client:
        yield client


async def control(session, emulator, route, body=None):
    method = session.post if body is not None else session.get
    async with method(emulator.url + route, json=body) as answer:
        return answer.status, await answer.json()


async def token(session, emulator, client_id=CLIENT_ID, secret=SECRET, grant="client_credentials"):
    body = {"grant_type": grant, "client_id": client_id, "client_secret": secret}
    async with session.post(emulator.url + "/oauth/access_token", json=body) as answer:
        return answer.status, await answer.json()


async def get(session, emulator, path, access, **params):
    headers = {"Authorization": f"Bearer {access}"} if access else {}
    async with session.get(emulator.url + path, params=params, headers=headers) as answer:
        return answer.status, await answer.json()


async def access(session, emulator):
    status, body = await token(session, emulator)
    assert status == 200, body
    return body["access_token"]


async def contact(session, emulator, phone="5533999898026", name="Maria", **details):
    status, body = await control(
        session, emulator, "/_emulator/contacts", {"bot_id": BOT, "phone": phone, "name": name, **details}
    )
    assert status == 200, body
    return body


async def add(session, emulator, *specs, background=False):
    status, body = await control(
        session, emulator, "/_emulator/messages", {"messages": list(specs), "background": background}
    )
    assert status == 200, body
    return body["messages"]


async def page_all(session, emulator, access_token, contact_id, order, size=100):
    """Every message of a contact, walking forward with search_after until a short page."""
    seen, after = [], None
    while True:
        params = {"contact_id": contact_id, "size": size, "order": order}
        if after:
            params["search_after"] = after
        status, body = await get(session, emulator, "/whatsapp/chats/messages", access_token, **params)
        assert status == 200, body
        seen.extend(body["data"])
        if len(body["data"]) < size:
            return seen
        after = body["data"][-1]["id"]


async def test_token_flow_wrong_credentials_and_expiry(session, emulator, clock):
    status, body = await token(session, emulator, secret="wrong")
    assert status == 401 and body["error"] == "invalid_client" and body["message"]
    status, body = await token(session, emulator, client_id="someone-else")
    assert status == 401 and body["error"] == "invalid_client"
    status, body = await token(session, emulator, grant="password")
    assert status == 400 and body["error"] == "unsupported_grant_type"
    status, body = await token(session, emulator)
    assert status == 200 and body["token_type"] == "Bearer" and body["expires_in"] == 60
    first = body["access_token"]
    status, bots = await get(session, emulator, "/whatsapp/bots", first)
    assert status == 200 and bots["success"] is True
    assert bots["data"] == [
        {
            "id": BOT,
            "name": "SVlentes",
            "status": 3,
            "channel": "WHATSAPP",
            "channel_data": {"phone": 553399898026, "name": "SVlentes"},
        }
    ]
    for missing in (None, "not-a-token"):
        status, body = await get(session, emulator, "/whatsapp/bots", missing)
        assert status == 401 and body == {"success": False, "message": "Unauthorized", "errors": {}}
    clock.now += 59
    assert (await get(session, emulator, "/whatsapp/bots", first))[0] == 200
    clock.now += 1  # the token's hour (here, minute) is over
    status, body = await get(session, emulator, "/whatsapp/bots", first)
    assert status == 401 and body["success"] is False
    second = await access(session, emulator)
    assert second != first and (await get(session, emulator, "/whatsapp/bots", second))[0] == 200
    await control(session, emulator, "/_emulator/faults", {"expire_tokens": True})
    assert (await get(session, emulator, "/whatsapp/bots", second))[0] == 401
    _, stats = await control(session, emulator, "/_emulator/stats")
    assert stats["tokens_issued"] == 2 and stats["credentials_refused"] == 2 and stats["unauthorized"] == 4


async def test_pagination_across_thousands_of_messages_both_orders(session, emulator, clock):
    emulator.emulator.rate = 10_000
    maria = await contact(session, emulator)
    other = await contact(session, emulator, phone="5511987654321", name="João")
    # Ten messages a second, so many share a second; the last batch lands in the middle of the history.
    specs = [
        {
            "contact_id": maria["id"],
            "direction": "in" if i % 3 else "out",
            "text": f"m{i}",
            "created_at": (START + timedelta(seconds=i // 10)).isoformat(),
        }
        for i in range(2537)
    ]
    added = await add(session, emulator, *specs[:2000])
    added += await add(session, emulator, *specs[2000:])
    added += await add(
        session,
        emulator,
        *(
            {**s, "text": f"late{i}", "created_at": (START + timedelta(seconds=5)).isoformat()}
            for i, s in enumerate(specs[:7])
        ),
    )
    await add(session, emulator, {"contact_id": other["id"], "direction": "in", "text": "not Maria's"})
    _, history = await control(session, emulator, f"/_emulator/messages?contact_id={maria['id']}")
    expected = [m["id"] for m in history["messages"]]
    assert sorted(expected) == sorted(m["id"] for m in added) and len(expected) == 2544
    assert [m["created_at"] for m in history["messages"]] == sorted(m["created_at"] for m in history["messages"])
    assert "late0" in [m["data"]["text"]["body"] for m in history["messages"][40:70]]

    key = await access(session, emulator)
    ascending = await page_all(session, emulator, key, maria["id"], "asc")
    assert [m["id"] for m in ascending] == expected  # none twice, none missing, in time order
    descending = await page_all(session, emulator, key, maria["id"], "desc", size=77)
    assert [m["id"] for m in descending] == expected[::-1]

    by_skip = []
    for skip in range(0, 2544, 100):
        status, body = await get(
            session, emulator, "/whatsapp/chats/messages", key, contact_id=maria["id"], size=100, skip=skip, order="asc"
        )
        by_skip.extend(m["id"] for m in body["data"])
    assert by_skip == expected
    status, body = await get(
        session,
        emulator,
        "/whatsapp/chats/messages",
        key,
        contact_id=maria["id"],
        size=5,
        skip=1000,
        order="asc",
        search_after=expected[9],
    )
    assert [m["id"] for m in body["data"]] == expected[10:15]  # search_after wins over skip
    status, body = await get(session, emulator, "/whatsapp/chats/messages", key, contact_id=maria["id"])
    assert [m["id"] for m in body["data"]] == expected[::-1][:20]  # no order: newest first, 20

    first = ascending[0]
    assert set(first) == {
        "id",
        "contact_id",
        "bot_id",
        "campaign_id",
        "direction",
        "status",
        "type",
        "channel",
        "data",
        "is_paid",
        "price_cbp",
        "created_at",
    }
    assert first["contact_id"] == maria["id"] and first["bot_id"] == BOT and first["created_at"].endswith("+00:00")
    assert len(first["id"]) == 24 and int(first["id"], 16) >= 0
    inbound = next(m for m in ascending if m["direction"] == 1)
    outbound = next(m for m in ascending if m["direction"] == 2)
    assert inbound["status"] == 1 and inbound["data"]["id"].startswith("wamid.")
    assert inbound["data"]["type"] == "text" and inbound["data"]["from"] == "5533999898026"
    assert outbound["status"] == 2 and outbound["data"]["message_id"].startswith("wamid.")

    for params, status_wanted in [
        ({"size": 101}, 400),
        ({"size": 0}, 400),
        ({"skip": -1}, 400),
        ({"order": "newest"}, 400),
        ({"search_after": "f" * 24}, 400),
        ({"contact_id": "a" * 24}, 404),
        ({"contact_id": ""}, 400),
    ]:
        status, body = await get(
            session, emulator, "/whatsapp/chats/messages", key, **{"contact_id": maria["id"], "order": "asc", **params}
        )
        assert status == status_wanted and body["success"] is False, params
    other_history = (await control(session, emulator, f"/_emulator/messages?contact_id={other['id']}"))[1]
    status, _ = await get(
        session,
        emulator,
        "/whatsapp/chats/messages",
        key,
        contact_id=maria["id"],
        order="asc",
        search_after=other_history["messages"][0]["id"],
    )
    assert status == 400  # another contact's message is no cursor here


async def test_more_than_ten_requests_in_a_second_get_429(session, emulator, clock):
    key = await access(session, emulator)  # one request of this second's ten
    answers = await asyncio.gather(*(get(session, emulator, "/whatsapp/bots", key) for _ in range(20)))
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] * 9 + [429] * 11
    assert all(body["success"] is False for status, body in answers if status == 429)
    assert (await token(session, emulator))[0] == 429  # the token route counts too
    clock.now += 0.5
    assert (await get(session, emulator, "/whatsapp/bots", key))[0] == 429
    clock.now += 0.5  # a second after the first ten: the window has moved past them
    answers = await asyncio.gather(*(get(session, emulator, "/whatsapp/bots", key) for _ in range(12)))
    assert sorted(status for status, _ in answers) == [200] * 10 + [429] * 2
    _, stats = await control(session, emulator, "/_emulator/stats")
    assert stats["requests"] == 35 and stats["rate_limited"] == 15
    assert stats["routes"]["/whatsapp/bots"] == 19


class Receiver:
    """A webhook endpoint that records every POST and answers what the test sets."""

    def __init__(self):
        self.bodies = []
        self.answer = 200
        self.runner = None
        self.url = None

    async def handle(self, request):
        self.bodies.append(await request.json())
        return web.json_response({"ok": self.answer == 200}, status=self.answer)

    async def start(self):
        app = web.Application()
        app.router.add_post("/webhooks/sendpulse", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/webhooks/sendpulse?token=t"
        return self


@pytest.fixture
async def receiver():
    running = await Receiver().start()
    yield running
    await running.runner.cleanup()


async def test_webhook_posted_once_and_only_once_or_not_at_all(session, emulator, receiver):
    maria = await contact(session, emulator, phone="+55 33 99989-8026")
    [inbound] = await add(
        session,
        emulator,
        {
            "contact_id": maria["id"],
            "direction": "in",
            "text": "Oi, tudo bem?",
            "created_at": "2026-11-24T10:15:03+00:00",
            "webhook": {"url": receiver.url},
        },
    )
    assert inbound["webhook"] == {"status": 200}
    assert len(receiver.bodies) == 1
    [event] = receiver.bodies[0]  # an array of one event
    assert event["title"] == "incoming_message" and event["service"] == "whatsapp"
    assert event["bot"]["id"] == BOT and event["contact"]["id"] == maria["id"]
    assert event["contact"]["phone"] == "5533999898026" and event["contact"]["last_message"] == "Oi, tudo bem?"
    assert event["info"]["message"]["id"] == inbound["id"]
    payload = event["info"]["message"]["channel_data"]["message"]
    assert payload == inbound["data"] and payload["id"].startswith("wamid.")  # the API's data is the same object
    assert event["date"] == int(datetime(2026, 11, 24, 10, 15, 3, tzinfo=UTC).timestamp() * 1000)

    receiver.answer = 500
    [outbound] = await add(
        session,
        emulator,
        {
            "contact_id": maria["id"],
            "direction": "out",
            "text": "Olá!",
            "wamid": "wamid.OUT1",
            "webhook": {"url": receiver.url},
        },
    )
    assert outbound["webhook"] == {"status": 500}
    receiver.answer = 200
    [silent, later] = await add(
        session,
        emulator,
        {"contact_id": maria["id"], "direction": "in", "text": "no hook"},
        {
            "contact_id": maria["id"],
            "direction": "in",
            "text": "other ids",
            "webhook": {
                "url": receiver.url,
                "id": "6a496b4f67a824bf17040c06",
                "wamid": None,
                "single": True,
                "date_unit": "s",
            },
        },
    )
    assert "webhook" not in silent and later["webhook"] == {"status": 200}
    # The 500 was not retried: the next POST the receiver got is the later message's.
    assert len(receiver.bodies) == 3
    [out_event] = receiver.bodies[1]
    assert out_event["title"] == "outgoing_message" and out_event["info"]["message"]["id"] == outbound["id"]
    assert out_event["info"]["message"]["channel_data"]["message_id"] == "wamid.OUT1"
    assert out_event["info"]["message"]["channel_data"]["message"]["text"] == "Olá!"
    single = receiver.bodies[2]
    assert isinstance(single, dict) and single["info"]["message"]["id"] == "6a496b4f67a824bf17040c06"
    assert "id" not in single["info"]["message"]["channel_data"]["message"] and single["date"] < 10**12

    [lost] = await add(
        session,
        emulator,
        {
            "contact_id": maria["id"],
            "direction": "in",
            "text": "while down",
            "webhook": {"url": "http://127.0.0.1:1/webhooks/sendpulse"},
        },
    )
    assert "error" in lost["webhook"] and len(receiver.bodies) == 3
    _, history = await control(session, emulator, f"/_emulator/messages?contact_id={maria['id']}")
    assert lost["id"] in [m["id"] for m in history["messages"]]  # the history keeps it; only the POST was lost

    [late] = await add(
        session,
        emulator,
        {"contact_id": maria["id"], "direction": "in", "text": "background", "webhook": {"url": receiver.url}},
        background=True,
    )
    await asyncio.wait_for(_until(lambda: len(receiver.bodies) == 4), 30)
    assert receiver.bodies[3][0]["info"]["message"]["id"] == late["id"]
    _, log = await control(session, emulator, "/_emulator/webhooks")
    assert [w.get("status") for w in log["webhooks"]] == [200, 500, 200, None, 200]
    assert [w["message_id"] for w in log["webhooks"]] == [
        inbound["id"],
        outbound["id"],
        later["id"],
        lost["id"],
        late["id"],
    ]
    _, stats = await control(session, emulator, "/_emulator/stats")
    assert stats["webhooks"] == {"posted": 4, "failed": 1}


async def _until(condition):
    while not condition():
        await asyncio.sleep(0.02)


async def test_outbound_status_updates_are_visible(session, emulator):
    maria = await contact(session, emulator)
    [inbound, outbound] = await add(
        session,
        emulator,
        {"contact_id": maria["id"], "direction": "in", "text": "oi"},
        {"contact_id": maria["id"], "direction": "out", "text": "olá"},
    )
    key = await access(session, emulator)
    for status in (3, 4, 6):
        answer, body = await control(
            session, emulator, "/_emulator/messages/status", {"id": outbound["id"], "status": status}
        )
        assert answer == 200 and body["status"] == status
        _, page = await get(session, emulator, "/whatsapp/chats/messages", key, contact_id=maria["id"], order="asc")
        assert [(m["id"], m["status"]) for m in page["data"]] == [(inbound["id"], 1), (outbound["id"], status)]
    answer, body = await control(session, emulator, "/_emulator/messages/status", {"id": inbound["id"], "status": 3})
    assert answer == 400 and body["success"] is False
    answer, _ = await control(session, emulator, "/_emulator/messages/status", {"id": "f" * 24, "status": 3})
    assert answer == 404
    answer, body = await control(
        session,
        emulator,
        "/_emulator/messages",
        {
            "messages": [
                {"contact_id": maria["id"], "direction": "in", "text": "valid"},
                {"contact_id": maria["id"], "direction": "in", "status": "x"},
            ]
        },
    )
    assert answer == 400 and "status" in body["message"]
    _, history = await control(session, emulator, f"/_emulator/messages?contact_id={maria['id']}")
    assert len(history["messages"]) == 2  # a batch with a bad message adds none of it


async def test_chats_contacts_and_their_errors(session, emulator, clock):
    emulator.emulator.rate = 10_000
    key = await access(session, emulator)
    people = [
        await contact(
            session, emulator, phone=f"55119000000{i:02d}", name=f"P{i}", created_at="2026-10-17T04:03:46+00:00"
        )
        for i in range(25)
    ]
    for i, person in enumerate(people):  # P24 wrote last
        await add(
            session,
            emulator,
            {
                "contact_id": person["id"],
                "direction": "in",
                "text": f"hi {i}",
                "created_at": (START + timedelta(minutes=i)).isoformat(),
            },
            {
                "contact_id": person["id"],
                "direction": "out",
                "text": "reply",
                "created_at": (START + timedelta(minutes=i, seconds=6)).isoformat(),
            },
        )
    chats = []
    for skip in (0, 10, 20):
        status, body = await get(session, emulator, "/whatsapp/chats", key, bot_id=BOT, size=10, skip=skip)
        assert status == 200
        chats.extend(body["data"])
    assert [c["contact"]["channel_data"]["name"] for c in chats] == [f"P{i}" for i in range(24, -1, -1)]
    newest = chats[0]
    assert newest["contact"]["last_activity_at"] == (START + timedelta(minutes=24, seconds=6)).isoformat()
    assert newest["contact"]["channel_data"]["phone"] == 5511900000024  # a number, not a string
    assert newest["inbox_last_message"]["data"]["text"]["body"] == "hi 24" and newest["inbox_unread"] == 0
    status, body = await get(session, emulator, "/whatsapp/contacts/get", key, id=people[3]["id"])
    assert status == 200 and body["data"]["id"] == people[3]["id"] and body["data"]["status"] == 1
    assert body["data"]["created_at"] == "2026-10-17T04:03:46+00:00"
    assert (await get(session, emulator, "/whatsapp/chats", key))[0] == 400
    assert (await get(session, emulator, "/whatsapp/chats", key, bot_id="b" * 24))[0] == 404
    await control(session, emulator, f"/_emulator/contacts/{people[3]['id']}", {"delete": True})
    assert (await get(session, emulator, "/whatsapp/contacts/get", key, id=people[3]["id"]))[0] == 404
    assert (await get(session, emulator, "/whatsapp/chats/messages", key, contact_id=people[3]["id"], order="asc"))[
        0
    ] == 404
    await control(session, emulator, f"/_emulator/contacts/{people[4]['id']}", {"status": 2})
    assert (await get(session, emulator, "/whatsapp/contacts/get", key, id=people[4]["id"]))[1]["data"]["status"] == 2


async def test_server_errors_injected_and_counted(session, emulator):
    key = await access(session, emulator)
    await control(session, emulator, "/_emulator/faults", {"status": 503, "count": 2})
    assert [(await get(session, emulator, "/whatsapp/bots", key))[0] for _ in range(3)] == [503, 503, 200]
    _, stats = await control(session, emulator, "/_emulator/stats")
    assert stats["server_errors"] == 2


def test_subprocess_emulator_tokens_expire_on_real_time(tmp_path):
    running = SendPulseEmulator(tmp_path, token_ttl=1).start()
    try:
        maria = running.add_contact("5533999898026", "Maria")
        [message] = running.add_messages({"contact_id": maria["id"], "direction": "in", "text": "oi"})
        assert running.history(maria["id"])[0]["id"] == message["id"]
        issued = _sync_token(running.url)
        assert issued["expires_in"] == 1

        def bots_status():
            request = urllib.request.Request(
                f"{running.url}/whatsapp/bots", headers={"Authorization": f"Bearer {issued['access_token']}"}
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    return answer.status
            except urllib.error.HTTPError as exc:
                return exc.code

        wait_for(lambda: bots_status() == 401, "the one-second token expired", timeout=30)
        assert running.stats()["unauthorized"] >= 1 and running.stats()["tokens_issued"] == 1
    finally:
        running.stop()
    log = (tmp_path / "sendpulse-emulator.log").read_text()
    assert "SendPulse emulator on" in log and SENDPULSE_BOT in log


def _sync_token(url):
    body = json.dumps(
        {"grant_type": "client_credentials", "client_id": SENDPULSE_CLIENT_ID, "client_secret": SENDPULSE_CLIENT_SECRET}
    ).encode()
    request = urllib.request.Request(
        url + "/oauth/access_token", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())
