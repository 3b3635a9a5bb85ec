"""`recover` and `forget` as an operator runs them: the installed command, a real cluster, the emulator."""

import asyncio
import json
import sqlite3
import urllib.error
import urllib.request

import asyncpg
import pytest

from tests.support import AirtableEmulator, Daemon, cli, incoming, post, wait_for, write_config

pytestmark = pytest.mark.acceptance


@pytest.fixture
def emulator(tmp_path):
    running = AirtableEmulator(tmp_path).start()
    yield running
    running.stop()


def messages(count, contacts=3):
    return [
        incoming(f"wamid.{i}", contact=f"c{i % contacts}", phone=f"+55 11 9{i % contacts:08d}") for i in range(count)
    ]


def sql(dsn, query, *args):
    async def run():
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


def delivered_everywhere(daemon, n):
    sinks = daemon.status()["sinks"]
    return sinks["postgres"]["delivered"] == n and sinks["airtable"]["delivered"] == n


def test_recover_and_forget_commands(tmp_path, emulator, own_pg):
    dsn = own_pg.dsn()
    config = write_config(tmp_path, extra=emulator.config() + f'[postgres]\ndsn = "{dsn}"\n')
    assert cli(config, "airtable", "init").returncode == 0
    daemon = Daemon(config).start()
    try:
        assert post(daemon.url, messages(60))[0] == 200
        wait_for(lambda: delivered_everywhere(daemon, 60), "both sinks hold everything")
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()

    # PostgreSQL loses a day: the journal no longer matters, Airtable has it all
    sql(dsn, "DELETE FROM chatledger.interactions")
    dry = cli(config, "recover", "--all", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "dry run, nothing written" in dry.stdout and "would insert" in dry.stdout and "      60" in dry.stdout
    assert sql(dsn, "SELECT count(*) FROM chatledger.interactions")[0][0] == 0
    recovered = cli(config, "recover", "--all")
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    assert "daemon not running" in recovered.stdout
    assert "interactions" in recovered.stdout and "      60" in recovered.stdout
    assert sql(dsn, "SELECT count(*) FROM chatledger.interactions")[0][0] == 60
    counts = sorted(r[0] for r in sql(dsn, "SELECT message_count FROM chatledger.conversations"))
    assert counts == [20, 20, 20]
    again = cli(config, "recover", "--phone", "+55 (11) 900000001", "--json")
    assert again.returncode == 0 and '"inserted": 0' in again.stdout and '"present": 20' in again.stdout

    # forget while the daemon runs: through its socket, under its Airtable budget
    daemon = Daemon(config).start()
    try:
        # recover too: the daemon does it with its own Airtable client (one budget for the base)
        sql(dsn, "DELETE FROM chatledger.interactions WHERE customer_phone = '5511900000002'")
        dry = cli(config, "recover", "--phone", "5511900000002", "--dry-run", "--diff", timeout=300)
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert "through the running daemon" in dry.stdout and "dry run, nothing written" in dry.stdout
        assert sql(dsn, "SELECT count(*) FROM chatledger.interactions")[0][0] == 40
        nothing = cli(config, "recover", "--conversation", "nope", timeout=300)
        assert nothing.returncode == 1 and "nothing found in Airtable for conversation nope" in nothing.stderr
        online = cli(config, "recover", "--phone", "5511900000002", timeout=300)
        assert online.returncode == 0, online.stdout + online.stderr
        assert "through the running daemon" in online.stdout
        assert sql(dsn, "SELECT count(*) FROM chatledger.interactions")[0][0] == 60
        forgotten = cli(config, "forget", "--phone", "+55 11 900000001", "--reference", "LGPD-7", timeout=300)
        assert forgotten.returncode == 0, forgotten.stdout + forgotten.stderr
        assert "forgot phone ...0001" in forgotten.stdout and "reference LGPD-7" in forgotten.stdout
        assert "postgres  1 conversations, 20 interactions" in forgotten.stdout
        assert "airtable  1 conversations, 20 interactions" in forgotten.stdout
        assert "900000001" not in forgotten.stdout  # the report shows only the last digits
        assert not sql(dsn, "SELECT 1 FROM chatledger.interactions WHERE customer_phone = '5511900000001'")
        assert not [r for r in emulator.records("Conversations") if r.get("CustomerPhone") == "5511900000001"]
        assert len(emulator.records("Interactions")) == 40
        # the same person writes again: stored as anyone else
        assert post(daemon.url, [incoming("wamid.new", contact="c1", phone="+55 11 900000001")])[0] == 200
        wait_for(lambda: delivered_everywhere(daemon, 41), "the new message delivered")
        assert (
            sql(dsn, "SELECT message_count FROM chatledger.conversations WHERE customer_phone = '5511900000001'")[0][0]
            == 1
        )
        assert emulator.stats()["rate_limited"] == 0
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()
    with sqlite3.connect(tmp_path / "state" / "journal.sqlite") as journal:
        assert journal.execute("SELECT last4, reference FROM audit").fetchall() == [("0001", "LGPD-7")]
    journal.close()
    assert cli(config, "forget", "--phone", "no digits").returncode == 64
    no_pg = tmp_path / "no-pg"
    no_pg.mkdir()
    assert cli(write_config(no_pg), "recover", "--all").returncode == 78


def test_bot_api_through_the_daemon(tmp_path, emulator, own_pg):
    token = "bot-api-token-0123456789"
    config = write_config(tmp_path, extra=emulator.config() + f'[postgres]\ndsn = "{own_pg.dsn()}"\n')
    config.write_text(config.read_text().replace("[journal]", f'api_token = "{token}"\n[journal]', 1))
    assert cli(config, "airtable", "init").returncode == 0
    daemon = Daemon(config).start()
    base = f"http://127.0.0.1:{daemon.port}/api/v1"

    def call(method, route, body=None, auth=True):
        request = urllib.request.Request(
            base + route,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if auth else {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    try:
        assert call("POST", "/interactions", {"id": "x"}, auth=False)[0] == 401
        status, answer = call(
            "POST",
            "/interactions",
            {
                "id": "bot-1",
                "conversationId": "conv-1",
                "direction": "outbound",
                "content": "Olá",
                "intent": "greeting",
                "customerPhone": "5511900000009",
            },
        )
        assert status == 201, answer
        assert call("POST", "/interactions", {"id": "bot-1", "direction": "up"})[0] == 422
        wait_for(lambda: delivered_everywhere(daemon, 1), "the interaction in both sinks")
        assert sql(own_pg.dsn(), "SELECT intent FROM chatledger.interactions")[0][0] == "greeting"
        assert [r["Intent"] for r in emulator.records("Interactions")] == ["greeting"]
        assert call("GET", "/conversations/conv-1")[1]["source"] == "postgres"
        own_pg.stop("immediate")
        status, answer = call("GET", "/conversations/conv-1/interactions")
        assert status == 200 and answer["source"] == "journal" and answer["interactions"][0]["intent"] == "greeting"
        assert call("GET", "/openapi.json", auth=False)[1]["openapi"].startswith("3.")
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()
