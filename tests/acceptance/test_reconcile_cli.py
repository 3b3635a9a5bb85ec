"""`chatledger reconcile` (offline, on the journal) as installed, against the SendPulse emulator in a subprocess."""

import json
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest

from tests.support import SENDPULSE_CLIENT_SECRET, SendPulseEmulator, cli, cli_on_terminal, write_config

pytestmark = pytest.mark.acceptance


@pytest.fixture
def sendpulse(folder):
    emulator = SendPulseEmulator(folder).start()
    yield emulator
    emulator.stop()


def journaled(folder):
    with sqlite3.connect(folder / "state" / "journal.sqlite") as conn:
        return conn.execute("SELECT message_id, text, raw FROM events ORDER BY id").fetchall()


def test_reconcile_journals_what_the_webhooks_missed_once(folder, sendpulse):
    config = write_config(folder, extra=sendpulse.config())
    maria = sendpulse.add_contact("5533999898026", "Maria")
    start = datetime.now(UTC) - timedelta(minutes=40)
    added = sendpulse.add_messages(
        *(
            {
                "contact_id": maria["id"],
                "direction": "in" if i % 2 else "out",
                "text": f"m{i}",
                "created_at": (start + timedelta(seconds=i)).isoformat(),
                "webhook": {"url": "http://127.0.0.1:9/chatledger-is-down"},
            }
            for i in range(150)
        )
    )
    assert all("error" in m["webhook"] for m in added)  # posted once, failed, never retried

    result = cli(config, "reconcile", "--since", "2h", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["added"], report["present"], report["seen"], report["chats"]) == (150, 0, 150, 1)
    assert isinstance(report["added"], int) and isinstance(report["present"], int)
    rows = journaled(folder)
    assert [r[0] for r in rows] == [m["id"] for m in added]
    assert all(json.loads(r[2])["source"] == "reconcile" for r in rows)

    result = cli(config, "reconcile", "--since", (start - timedelta(minutes=1)).isoformat())
    assert result.returncode == 0, result.stderr
    assert "150 message(s) seen, 0 added, 150 already present" in result.stdout
    assert len(journaled(folder)) == 150
    assert SENDPULSE_CLIENT_SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize("when", ["yesterday", "2h30m", "-1d", "2999-01-01"])
def test_a_bad_when_exits_2_before_anything(folder, sendpulse, when):
    config = write_config(folder, extra=sendpulse.config())
    result = cli(config, "reconcile", f"--since={when}")  # = : argparse would take -1d for an option
    assert result.returncode == 2 and f"--since {when!r}" in result.stderr
    assert sendpulse.stats()["requests"] == 0


def test_not_configured_exits_78(folder):
    result = cli(write_config(folder), "reconcile", "--since", "2h")
    assert result.returncode == 78 and "[sendpulse] client_id is empty" in result.stderr


def test_sendpulse_unreadable_exits_1_and_never_shows_the_secret(folder, sendpulse):
    config = write_config(folder, extra=sendpulse.config())
    result = cli(
        config, "reconcile", "--since", "2h", "--json", env={"SENDPULSE_CLIENT_SECRET": "a-wrong-secret-value"}
    )
    assert result.returncode == 1 and "misconfigured" in result.stderr and "client_id" in result.stderr
    assert "a-wrong-secret-value" not in result.stdout + result.stderr
    assert json.loads(result.stdout)["added"] == 0
    sendpulse.stop()
    result = cli(config, "reconcile", "--since", "2h")
    assert result.returncode == 1 and "SendPulse could not be read (down)" in result.stderr


def test_a_terminal_shows_progress_a_pipe_does_not(folder, sendpulse):
    config = write_config(folder, extra=sendpulse.config())
    for phone in ("5511900000001", "5511900000002"):
        person = sendpulse.add_contact(phone)
        sendpulse.add_messages({"contact_id": person["id"], "direction": "in", "text": "oi"})
    code, screen, _ = cli_on_terminal(config, "reconcile", "--since", "1h", stderr_too=True)
    assert code == 0 and "1 chat(s), 1 seen, 1 added" in screen and "2 chat(s), 2 seen, 2 added" in screen
    assert "2 message(s) seen, 0 added" in cli(config, "reconcile", "--since", "1h").stdout
    piped = cli(config, "reconcile", "--since", "1h")
    assert "chat(s), 2 seen" not in piped.stderr and piped.returncode == 0
