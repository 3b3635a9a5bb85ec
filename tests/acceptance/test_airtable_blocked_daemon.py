"""The installed daemon against an emulated base at its records cap, and with a key row typed twice by
hand (the emulator in its own process, with Airtable's real 5 req/s and 30 s lockout)."""

from collections import Counter

import pytest

from tests.support import AirtableEmulator, Daemon, cli, incoming, post, unix_http, wait_for, write_config

pytestmark = pytest.mark.acceptance


def airtable_status(daemon):
    return daemon.status()["sinks"]["airtable"]


def message(i, contact):
    return incoming(f"wamid.{i}", contact=f"c{contact}", phone=f"55119{contact:08d}")


@pytest.fixture
def emulator(tmp_path):
    running = AirtableEmulator(tmp_path).start()
    yield running
    running.stop()


def test_at_the_records_cap_nothing_is_dead_and_everything_drains_once_it_is_raised(tmp_path, emulator):
    config = write_config(tmp_path, extra=emulator.config())
    assert cli(config, "airtable", "init").returncode == 0
    daemon = Daemon(config).start()
    try:
        assert post(daemon.url, [message(i, i % 5) for i in range(10)])[0] == 200
        wait_for(lambda: airtable_status(daemon)["delivered"] == 10, "the first messages")
        emulator.plan(max_records=5 + 10 + 5)  # 5 conversations, 10 interactions: room for 5 more
        for start in range(10, 40, 10):
            assert post(daemon.url, [message(i, i % 5) for i in range(start, start + 10)])[0] == 200
        held = wait_for(lambda: (s := airtable_status(daemon))["state"] == "blocked" and s, "blocked")
        assert "BASE_RECORD_LIMIT_EXCEEDED" in held["last_error"] and "maximum of 20 records" in held["last_error"]
        assert held["dead"] == 0 and held["pending"] > 0
        assert len(emulator.records("Interactions")) == 15 and emulator.stats()["records"] == 20  # what fitted
        assert "airtable is blocked" in " ".join(daemon.status()["health"]["problems"])
        readable = cli(config, "status")
        assert readable.returncode == 1 and "held, nothing dead-lettered" in readable.stdout
        code, metrics = unix_http(tmp_path / "run/status.sock", "GET", "/metrics")
        assert code == 200 and 'chatledger_sink_state{sink="airtable",state="blocked"} 1.0' in metrics

        emulator.plan(max_records=None)  # the plan is upgraded: no sync, no SIGHUP
        wait_for(lambda: airtable_status(daemon)["delivered"] == 40, "drained by itself")
        status = airtable_status(daemon)
        assert status["state"] == "up" and status["dead"] == 0 and status["rate_limited_429"] == 0
        assert Counter(r["MessageId"] for r in emulator.records("Interactions")) == Counter(
            f"wamid.{i}" for i in range(40)
        )
        assert {r["MessageCount"] for r in emulator.records("Conversations")} == {8}
        assert emulator.stats()["rate_limited"] == 0
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()


def test_a_key_row_typed_twice_by_hand_is_one_dead_letter_that_says_what_to_do(tmp_path, emulator):
    config = write_config(tmp_path, extra=emulator.config())
    assert cli(config, "airtable", "init").returncode == 0
    daemon = Daemon(config).start()
    try:
        assert post(daemon.url, [message(i, i) for i in range(5)])[0] == 200
        wait_for(lambda: airtable_status(daemon)["delivered"] == 5, "the first messages")
        [c2] = [r for r in emulator.records("Conversations") if r["CustomerPhone"] == f"55119{2:08d}"]
        emulator.add_record("Conversations", {"ConversationId": c2["ConversationId"], "CustomerName": "again"})
        later = [message(i, i % 5) for i in range(5, 30) if i % 5 != 2 or i == 17]  # c2 writes once
        assert post(daemon.url, later)[0] == 200
        wait_for(
            lambda: (s := airtable_status(daemon))["delivered"] == 5 + len(later) - 1 and s["dead"] == 1,
            "the others delivered, one dead letter",
        )
        assert airtable_status(daemon)["state"] == "up" and airtable_status(daemon)["pending"] == 0
        dead = cli(config, "dead", "--sink", "airtable")
        assert "wamid.17" in dead.stdout and c2["ConversationId"] in dead.stdout
        assert "Conversations holds ConversationId" in dead.stdout
        assert "delete the duplicate row in Airtable, then run `chatledger replay --dead`" in dead.stdout
        assert "wamid.17" in {r["MessageId"] for r in emulator.records("Interactions")}  # its own record landed
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()
