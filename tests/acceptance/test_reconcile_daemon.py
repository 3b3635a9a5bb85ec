"""The installed daemon fetches back, on its own, what SendPulse could not post while it was down."""

import json
import os
from collections import Counter

import pytest

from tests.support import (
    AirtableEmulator,
    Daemon,
    SendPulseEmulator,
    as_operator,
    cli,
    cli_on_terminal,
    incoming,
    post,
    query,
    unix_http,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.acceptance

SCHEMA = "chatledger"


@pytest.fixture
def sendpulse(tmp_path):
    emulator = SendPulseEmulator(tmp_path).start()
    yield emulator
    emulator.stop()


@pytest.fixture
def airtable(tmp_path):
    emulator = AirtableEmulator(tmp_path).start()
    yield emulator
    emulator.stop()


def stored_ids(cluster):
    if not query(cluster, f"SELECT to_regclass('{SCHEMA}.interactions') IS NOT NULL")[0][0]:
        return []
    return [r[0] for r in query(cluster, f"SELECT message_id FROM {SCHEMA}.interactions")]


def assert_counts_right(cluster, total, events=None):
    s = SCHEMA
    assert query(cluster, f"SELECT count(*) FROM {s}.events")[0][0] == (events or total)
    mismatched = query(
        cluster,
        f"""
        SELECT c.conversation_id, c.message_count, count(i.interaction_id)
        FROM {s}.conversations c LEFT JOIN {s}.interactions i USING (conversation_id)
        GROUP BY 1, 2 HAVING c.message_count <> count(i.interaction_id)""",
    )
    assert mismatched == []
    assert query(cluster, f"SELECT sum(message_count) FROM {s}.conversations")[0][0] == total


def assert_airtable_holds(airtable, expected, counts):
    """Every message once in Interactions, each conversation's MessageCount as `counts` (phone -> n)."""
    assert Counter(r["MessageId"] for r in airtable.records("Interactions")) == Counter(expected)
    assert {r["CustomerPhone"]: r["MessageCount"] for r in airtable.records("Conversations")} == counts


def messages(sendpulse, contacts, phase, count, url):
    return sendpulse.add_messages(
        *(
            {
                "contact_id": contacts[i % len(contacts)]["id"],
                "direction": "in" if i % 3 else "out",
                "text": f"{phase}-{i}",
                "webhook": {"url": url, "timeout": 5},
            }
            for i in range(count)
        )
    )


def test_a_restart_after_kill_9_fetches_back_what_the_webhooks_missed(tmp_path, own_pg, sendpulse, airtable):
    config = write_config(
        tmp_path,
        extra=f'[postgres]\ndsn = "{own_pg.dsn()}"\nschema = "{SCHEMA}"\n'
        + airtable.config()
        + sendpulse.config()
        + "reconcile_interval_s = 0\n",
    )
    assert cli(config, "airtable", "init").returncode == 0
    contacts = [sendpulse.add_contact(f"55119000000{i:02d}", f"Cliente {i}") for i in range(3)]
    phones = {c["id"]: str(c["channel_data"]["phone"]) for c in contacts}
    daemon = Daemon(config).start()
    try:
        live = messages(sendpulse, contacts, "live", 12, daemon.url)
        assert all(m["webhook"].get("status") == 200 for m in live)
        wait_for(lambda: len(stored_ids(own_pg)) == 12, "webhooks of the first phase in PostgreSQL")
        daemon.kill()

        missed = messages(sendpulse, contacts, "missed", 20, daemon.url)
        assert all("error" in m["webhook"] for m in missed)  # posted once, failed, never retried
        # meanwhile WhatsApp reports two of our replies read and one failed: only the API says so
        replies = [m for m in live + missed if m["direction"] == 2]
        learned = {replies[0]["id"]: "read", replies[-1]["id"]: "read", replies[1]["id"]: "failed"}
        for message_id, status in learned.items():
            sendpulse.set_status(message_id, {"read": 4, "failed": 6}[status])

        daemon = Daemon(config).start()  # no command typed from here until every sink holds both phases
        expected = sorted(m["id"] for m in live + missed)
        counts = dict(Counter(phones[m["contact_id"]] for m in live + missed))
        wait_for(lambda: sorted(stored_ids(own_pg)) == expected, "both phases in PostgreSQL exactly once")
        events = len(expected) + len(learned)  # each status learned is an event, not a message
        wait_for(lambda: daemon.status()["sinks"]["postgres"]["delivered"] == events, "statuses in PostgreSQL")
        assert_counts_right(own_pg, len(expected), events)
        assert dict(query(own_pg, f"SELECT customer_phone, message_count FROM {SCHEMA}.conversations")) == counts
        wait_for(
            lambda: (s := daemon.status()["sinks"]["airtable"])["pending"] == 0 and s["delivered"] == events,
            "both phases in Airtable",
        )
        assert_airtable_holds(airtable, expected, counts)
        assert "journaled" in daemon.log()
        statuses = {m["id"]: learned.get(m["id"], "sent") for m in replies}
        wait_for(
            lambda: (
                dict(
                    query(own_pg, f"SELECT message_id, status FROM {SCHEMA}.interactions WHERE direction = 'outbound'")
                )
                == statuses
            ),
            "statuses in PostgreSQL",
        )
        wait_for(lambda: daemon.status()["sinks"]["airtable"]["pending"] == 0, "statuses in Airtable")
        assert {
            r["MessageId"]: r["Status"] for r in airtable.records("Interactions") if r["Direction"] == "outbound"
        } == statuses
        source = wait_for(lambda: (s := daemon.status()["sources"]["sendpulse"])["runs"] and s, "the run reported")
        assert (source["state"], source["added"], source["seen"], source["last_error"]) == ("up", 20, 32, None)
        assert source["statuses"] == 3
        assert source["window"]["since"] < source["window"]["until"] == source["last_reconciled_at"]
        assert "sendpulse up, last run" in cli(config, "status").stdout
        assert "chatledger_reconcile_added_total 20.0" in unix_http(tmp_path / "run/status.sock", "GET", "/metrics")[1]

        # through the running daemon (its journal, its request budget), the same report as offline
        result = cli(config, "reconcile", "--since", "2h", "--json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert (report["added"], report["present"], report["seen"]) == (0, len(expected), len(expected))
        assert sorted(stored_ids(own_pg)) == expected
        source = daemon.status()["sources"]["sendpulse"]
        assert source["runs"] == 2 and source["requests_total"] > 0
        text = cli(config, "reconcile", "--since", "2h")
        assert text.returncode == 0 and f"{len(expected)} message(s) seen, 0 added" in text.stdout
        assert daemon.status()["sources"]["sendpulse"]["runs"] == 3
        sinks = daemon.status()["sinks"]
        assert (sinks["postgres"]["delivered"], sinks["airtable"]["delivered"]) == (events, events)
        assert_airtable_holds(airtable, expected, counts)
        assert airtable.stats()["rate_limited"] == 0
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()


def test_only_the_daemons_user_may_reconcile_through_it(folder, sendpulse):
    config = write_config(folder, extra=sendpulse.config())
    daemon = Daemon(config).start()
    try:
        socket_path = folder / "run/status.sock"
        code, body = unix_http(
            socket_path,
            "POST",
            "/reconcile?since=2026-12-01T00:00:00Z",
            run_as=as_operator(os.stat(socket_path).st_gid),
        )
        assert code == 403 and "reconcile" in body
        code, body = unix_http(socket_path, "POST", "/reconcile?since=yesterday")
        assert code == 400 and "yesterday" in body
        assert daemon.status()["sources"]["sendpulse"]["runs"] <= 1  # only the daemon's own run at start
    finally:
        daemon.stop()


def test_through_the_daemon_progress_shows_and_an_unreadable_sendpulse_exits_1(folder, sendpulse):
    config = write_config(folder, extra=sendpulse.config())
    for phone in ("5511900000001", "5511900000002"):
        person = sendpulse.add_contact(phone)
        sendpulse.add_messages({"contact_id": person["id"], "direction": "in", "text": "oi"})
    daemon = Daemon(config).start()
    try:
        wait_for(lambda: daemon.status()["sources"]["sendpulse"]["runs"], "the run at start")
        code, screen, _ = cli_on_terminal(config, "reconcile", "--since", "1h", stderr_too=True)
        assert code == 0 and "2 chat(s), 2 seen, 0 added" in screen
        assert daemon.status()["sources"]["sendpulse"]["runs"] == 2  # it was the daemon's run

        sendpulse.stop()
        result = cli(config, "reconcile", "--since", "1h", "--json")
        assert result.returncode == 1 and "SendPulse could not be read (down)" in result.stderr
        assert json.loads(result.stdout)["added"] == 0
        assert daemon.status()["sources"]["sendpulse"]["state"] == "down"
    finally:
        daemon.stop()


def test_the_periodic_run_catches_a_webhook_sendpulse_never_sent(tmp_path, own_pg, sendpulse):
    config = write_config(
        tmp_path,
        extra=f'[postgres]\ndsn = "{own_pg.dsn()}"\nschema = "{SCHEMA}"\n'
        + sendpulse.config()
        + "reconcile_interval_s = 1\n",
    )
    person = sendpulse.add_contact("5511900000077", "Ana")
    daemon = Daemon(config).start()
    try:
        wait_for(lambda: daemon.status()["sources"]["sendpulse"]["runs"], "the run at start")
        [never] = sendpulse.add_messages({"contact_id": person["id"], "direction": "in", "text": "no webhook"})
        wait_for(lambda: stored_ids(own_pg) == [never["id"]], "the message in PostgreSQL")
        assert daemon.status()["sources"]["sendpulse"]["added_total"] == 1
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()


def test_bad_credentials_leave_intake_alone_and_are_logged_once(folder, sendpulse):
    config = write_config(folder, extra=sendpulse.config() + "reconcile_interval_s = 0.2\n")
    daemon = Daemon(config, env={"SENDPULSE_CLIENT_SECRET": "a-wrong-secret-value"}).start()
    try:
        source = wait_for(
            lambda: (s := daemon.status()["sources"]["sendpulse"])["failed_runs"] >= 3 and s, "three refused runs"
        )
        assert source["state"] == "misconfigured" and "client_id" in source["last_error"]
        assert "MISCONFIGURED" in cli(config, "status", env=daemon.env).stdout
        assert post(daemon.url, incoming("wamid.1"))[0] == 200
        assert daemon.log().count("reconciliation is misconfigured") == 1
        assert "a-wrong-secret-value" not in daemon.log()
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()
