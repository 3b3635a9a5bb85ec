"""The installed `chatledger` on a terminal (a pseudo-terminal): tables, a live view, no colour under
NO_COLOR, a narrow terminal; the plain text as before when stdout is not a terminal."""

import asyncio
import json
import re
from datetime import UTC, datetime

import pytest

from daemon.status_text import render
from tests.support import Daemon, SendPulseEmulator, cli, cli_on_terminal, incoming, post, wait_for, write_config

pytestmark = pytest.mark.acceptance

COLOUR = re.compile(r"\x1b\[[0-9;]*(?:3[0-9]|9[0-7])[;m]")
CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
HOSTILE = "[bold]refused[/bold] \x1b[31mred\x1b[0m"


def seen(output):
    """What the terminal shows: the output without its control sequences."""
    return CONTROL.sub("", output)


def flat(text):
    return " ".join(re.sub(r"[\u2500-\u257f]", " ", text).split())


@pytest.fixture
def config(tmp_path):
    return write_config(tmp_path)


@pytest.fixture
def daemon(config):
    running = Daemon(config).start()
    yield running
    if running.process.poll() is None:
        running.kill()


def test_status_is_a_table_on_a_terminal_and_the_plain_text_otherwise(daemon, config):
    assert post(daemon.url, [incoming("a"), incoming("b")])[0] == 200
    code, shown, errors = cli_on_terminal(config, "status")
    assert code == 0, errors
    assert "┃ sink" in seen(shown) and "HEALTHY" in seen(shown) and COLOUR.search(shown)
    assert "2 accepted, 0 duplicates, 0 rejected" in seen(shown)
    assert re.search(r"│ postgres\s+│ disabled\s+│", seen(shown))
    assert "sendpulse disabled ([sendpulse] client_id empty)" in seen(shown)

    plain = cli(config, "status")
    assert plain.returncode == 0 and "\x1b[" not in plain.stdout and "┃" not in plain.stdout
    assert plain.stdout.splitlines()[1:] == render(daemon.status()).splitlines()[1:]  # the first has the uptime

    code, shown, _ = cli_on_terminal(config, "status", "--json")
    assert code == 0 and json.loads(shown)["webhook"] == {"accepted": 2, "duplicates": 0, "rejected": 0}

    code, shown, _ = cli_on_terminal(config, "status", env={"NO_COLOR": "1"})
    assert code == 0 and "┃ sink" in seen(shown) and not COLOUR.search(shown)

    code, shown, errors = cli_on_terminal(config, "status", columns=40)
    assert code == 0 and "Traceback" not in errors
    assert "postgres  disabled" in seen(shown) and "HEALTHY" in seen(shown)
    assert all(len(line) <= 40 for line in seen(shown).splitlines())


def test_top_is_drawn_in_place_on_a_terminal_and_ctrl_c_quits(daemon, config):
    assert post(daemon.url, [incoming(f"top{i}") for i in range(3)])[0] == 200
    code, shown, errors = cli_on_terminal(config, "top", "--interval", "0.2", interrupt_when="no errors seen")
    assert code == 0, errors
    assert "┃ sink" in seen(shown) and "HEALTHY" in seen(shown) and "3 accepted" in seen(shown)
    assert "sendpulse disabled ([sendpulse] client_id empty" in flat(seen(shown))
    assert "Traceback" not in errors

    daemon.stop()
    code, shown, _ = cli_on_terminal(config, "top", "--interval", "0.2", interrupt_when="retrying")
    assert code == 2 and "no chatledger answers" in flat(seen(shown))  # no daemon is not a success


def test_top_shows_what_sendpulse_reconciliation_did(tmp_path):
    sendpulse = SendPulseEmulator(tmp_path).start()
    person = sendpulse.add_contact("5511900000042")
    sendpulse.add_messages({"contact_id": person["id"], "direction": "in", "text": "no webhook"})
    config = write_config(tmp_path, extra=sendpulse.config())
    daemon = Daemon(config).start()
    try:
        source = wait_for(lambda: (s := daemon.status()["sources"]["sendpulse"])["runs"] and s, "the run at start")
        plain = cli(config, "top", "--count", "1")
        assert plain.returncode == 0, plain.stderr
        [row] = [line.split() for line in plain.stdout.splitlines() if line.startswith("sendpulse")]
        assert row[:3] == ["sendpulse", "up", source["last_reconciled_at"]] and row[3:5] == ["1", "1"]
        assert int(row[5]) >= source["requests_total"] > 0
        code, shown, errors = cli_on_terminal(config, "top", "--interval", "0.2", interrupt_when="no errors seen")
        assert code == 0, errors
        assert "┃ source" in seen(shown) and "sendpulse │ up" in seen(shown)
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()
        sendpulse.stop()


def plant(journal_path, error):
    """Journal three messages (no daemon) and make two of them dead letters of postgres with `error`."""
    from daemon.events import normalize
    from daemon.journal import Journal

    async def run():
        journal = await Journal.open(journal_path, ["postgres"])
        try:
            await journal.append([normalize(incoming(f"wamid.{i}"), datetime.now(UTC)) for i in (1, 2, 3)])
            for event in (await journal.pending("postgres", 0, 100))[:2]:
                await journal.mark_dead("postgres", event.id, error)
        finally:
            await journal.close()

    asyncio.run(run())


def test_dead_and_replay_draw_tables_and_show_an_errors_markup_and_escapes_literally(tmp_path):
    config = write_config(tmp_path, extra='[postgres]\ndsn = "postgresql://nobody@127.0.0.1:9/none"\n')
    plant(tmp_path / "state" / "journal.sqlite", HOSTILE)

    code, shown, errors = cli_on_terminal(config, "dead")
    assert code == 0, errors
    words = flat(seen(shown))
    assert "┃ dead letter" in seen(shown) and "wamid.1" in words and "wamid.2" in words
    assert "[bold]refused[/bold] \\x1b[31mred\\x1b[0m" in words  # neither markup nor a colour change
    assert "\x1b[31mred" not in shown
    assert "chatledger replay --dead" in words and "chatledger dead --discard" in words
    assert json.loads(cli_on_terminal(config, "dead", "--json")[1]) == json.loads(cli(config, "dead", "--json").stdout)

    code, shown, errors = cli_on_terminal(config, "replay", "--dead")
    assert code == 0, errors
    words = flat(seen(shown))
    assert "dead letters re-queued" in words and re.search(r"postgres 2\b", words)
    assert "daemon not running" in words
    assert cli(config, "dead").stdout.startswith("no dead letters")
    code, shown, errors = cli_on_terminal(config, "replay", "--dead")
    assert code == 1 and "nothing re-queued" in errors  # a table of zeros is still no success


def test_recover_shows_its_progress_and_ends_with_a_table(tmp_path, pg_cluster, pg_schema):
    from tests.support import AirtableEmulator, wait_for

    emulator = AirtableEmulator(tmp_path).start()
    try:
        dsn = pg_cluster.dsn()
        pg = f'[postgres]\ndsn = "{dsn}"\nschema = "{pg_schema}"\n'
        config = write_config(tmp_path, extra=emulator.config() + pg)
        assert cli(config, "airtable", "init").returncode == 0
        daemon = Daemon(config).start()
        try:
            assert (
                post(
                    daemon.url,
                    [incoming(f"wamid.{i}", contact=f"c{i % 2}", phone=f"+55 11 9{i % 2:08d}") for i in range(6)],
                )[0]
                == 200
            )
            wait_for(
                lambda: all(daemon.status()["sinks"][s]["delivered"] == 6 for s in ("postgres", "airtable")),
                "both sinks hold everything",
            )
        finally:
            daemon.stop()
        forget = asyncio.run(_sql(dsn, f"DELETE FROM {pg_schema}.interactions"))
        assert forget == "DELETE 6"

        code, shown, _ = cli_on_terminal(config, "recover", "--all", stderr_too=True)
        assert code == 0, seen(shown)
        assert "6 read, 6 new" in seen(shown)  # the progress, cleared once done
        assert "┃ read ┃ inserted ┃" in re.sub(r" +", " ", seen(shown))
        assert re.search(r"│ interactions +│ +6 │ +6 │ +0 │", seen(shown))
        assert "daemon not running" in seen(shown)

        plain = cli(config, "recover", "--all")
        assert plain.returncode == 0 and "┃" not in plain.stdout and "\x1b[" not in plain.stdout + plain.stderr
        assert re.search(r"\n  interactions +6 +0 +6 ", plain.stdout)
    finally:
        emulator.stop()


async def _sql(dsn, query):
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return await conn.execute(query)
    finally:
        await conn.close()
