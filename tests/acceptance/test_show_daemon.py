"""`chatledger show` as an operator runs it: the installed command, through the running daemon or on its own,
from PostgreSQL, else the journal, else Airtable."""

import json
import os

import pytest

from tests.support import AirtableEmulator, Daemon, as_operator, cli, incoming, post, wait_for, write_config

pytestmark = pytest.mark.acceptance

PHONE = "+55 (11) 98765-4321"


def messages():
    return [
        incoming("wamid.1", phone=PHONE, text="oi") | {"date": 1_790_000_000},
        incoming("wamid.2", phone=PHONE, text="quero falar com alguém") | {"date": 1_790_000_060},
        {
            "title": "open_chat",
            "service": "whatsapp",
            "bot": {"id": "bot1"},
            "date": 1_790_000_120,
            "contact": {"id": "c1", "phone": PHONE, "name": "Cliente"},
            "info": None,
        },
    ]


def shown(config, *args):
    done = cli(config, "show", *args)
    return done.returncode, done.stdout, done.stderr


def test_show_answers_from_each_store_in_turn_through_the_daemon_and_without_it(tmp_path, own_pg):
    emulator = AirtableEmulator(tmp_path).start()
    config = write_config(tmp_path, extra=emulator.config() + f'[postgres]\ndsn = "{own_pg.dsn()}"\n')
    try:
        assert cli(config, "airtable", "init").returncode == 0
        daemon = Daemon(config).start()
        try:
            assert post(daemon.url, messages())[0] == 200
            wait_for(lambda: all(s["delivered"] == 3 for s in daemon.status()["sinks"].values()), "both sinks")

            code, out, err = shown(config, "--phone", PHONE)  # as the operator typed it
            assert code == 0, err
            assert "(from PostgreSQL)" in out and "read through the running daemon" in out
            assert "2026-09-21T14:13:20.000Z  in   oi" in out
            assert "2026-09-21T14:14:20.000Z  in   quero falar com alguém" in out
            assert "pending  MEDIUM  live chat opened" in out
            code, out, _ = shown(config, "--phone", "5511987654321", "--json")
            answer = json.loads(out)
            [one] = answer["conversations"]
            assert one["source"] == "postgres" and answer["problems"] == []
            assert [(i["direction"], i["content"]) for i in one["interactions"]] == [
                ("inbound", "oi"),
                ("inbound", "quero falar com alguém"),
            ]
            conversation = one["conversation"]["conversationId"]

            code, out, err = shown(config, "--conversation", "nope")
            assert code == 1 and out == ""
            assert "no conversation nope in any store that answered" in err

            own_pg.stop("immediate")  # the daemon's journal answers, and says why PostgreSQL did not
            code, out, err = shown(config, "--conversation", conversation)
            assert code == 0, err
            assert "(from the journal)" in out and "note: postgres did not answer: " in out
            assert "in   quero falar com alguém" in out
            assert daemon.stop() == 0
        finally:
            if daemon.process.poll() is None:
                daemon.kill()

        # no daemon: the command reads the journal itself, read-only
        code, out, err = shown(config, "--conversation", conversation)
        assert code == 0, err
        assert "(from the journal)" in out and "read directly (daemon not running)" in out
        assert "note: postgres did not answer: " in out
        journal = tmp_path / "state" / "journal.sqlite"
        journal.rename(tmp_path / "elsewhere.sqlite")  # lost: Airtable answers
        code, out, err = shown(config, "--phone", PHONE)
        assert code == 0, err
        assert "(from Airtable)" in out and "in   oi" in out and "live chat opened" in out
        assert f"note: journal did not answer: journal {journal} does not exist" in out
        emulator.stop()
        code, out, err = shown(config, "--conversation", conversation)
        assert code == 1 and "no conversation" in err
        for store in ("postgres: ", "journal: ", "airtable: "):
            assert store in err, err
    finally:
        emulator.stop()


@pytest.mark.parametrize(
    "args, why",
    [
        ((), "one of the arguments --conversation --phone is required"),
        (("--phone", "12"), "--phone '12' is not a phone number"),
        (("--phone", "5511987654321", "--conversation", "x"), "not allowed with argument"),
        (("--conversation", "a\x1bb"), "--conversation must not hold a control character"),
        (("--conversation", "x", "--limit", "0"), "--limit must be a whole number from 1 to 10000"),
    ],
)
def test_a_show_that_cannot_be_asked_is_a_usage_error(tmp_path, args, why):
    config = write_config(tmp_path)
    code, out, err = shown(config, *args)
    assert (code, out) == (64, "") and why in err, err


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_show_is_for_the_daemons_user_and_root_as_every_read_of_personal_data(folder):
    config = write_config(folder)
    daemon = Daemon(config).start()
    try:
        assert post(daemon.url, messages())[0] == 200
        operator = as_operator((folder / "run" / "status.sock").stat().st_gid)
        refused = cli(config, "show", "--phone", PHONE, run_as=operator)  # customers' messages, as dead/quarantine
        assert refused.returncode == 1 and "the daemon refused: show reads personal data" in refused.stderr
        assert "quero falar" not in refused.stdout + refused.stderr
        done = cli(config, "show", "--phone", PHONE)  # the daemon's user (here root)
        assert done.returncode == 0, done.stderr
        assert "(from the journal)" in done.stdout and "in   quero falar com alguém" in done.stdout
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()
