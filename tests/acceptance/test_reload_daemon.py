"""SIGHUP on the installed daemon: a new Airtable endpoint, alert target, PostgreSQL DSN and SendPulse secret
take effect while running, with nothing lost or sent twice; what needs a restart is named and left as it was."""

import json
import os
import signal
import socket
from collections import Counter

import pytest

from tests.acceptance.test_postgres_daemon import query
from tests.support import (
    SENDPULSE_CLIENT_SECRET,
    AirtableEmulator,
    Daemon,
    SendPulseEmulator,
    cli,
    free_port,
    incoming,
    post,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.acceptance


def messages(start, count):
    return [incoming(f"wamid.{i}", contact=f"c{i % 3}", phone=f"55119{i % 3:08d}") for i in range(start, start + count)]


def alerts_command(path):
    return f"[alerts]\ncommand = \"sh -c 'cat >> {path}; echo >> {path}'\"\nmin_interval_s = 0\n"


def alerts_in(path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def message_ids(emulator):
    return Counter(record["MessageId"] for record in emulator.records("Interactions"))


def listening(port):
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_sighup_moves_airtable_and_alerts_and_leaves_listen_for_a_restart(tmp_path):
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first = AirtableEmulator(tmp_path / "first", documented="date").start()
    second = AirtableEmulator(tmp_path / "second", documented="date").start()
    alerts_before, alerts_after = tmp_path / "alerts-before.jsonl", tmp_path / "alerts-after.jsonl"
    config = write_config(tmp_path, extra=first.config() + alerts_command(alerts_before))
    daemon = Daemon(config).start()
    try:
        assert post(daemon.url, messages(0, 10))[0] == 200
        wait_for(lambda: daemon.status()["sinks"]["airtable"]["delivered"] == 10, "delivered to the first endpoint")
        requests_before = daemon.status()["sinks"]["airtable"]["requests_total"]

        new_port = free_port()
        config.write_text(
            config.read_text()
            .replace(first.url, second.url)
            .replace(str(alerts_before), str(alerts_after))
            .replace(f"127.0.0.1:{daemon.port}", f"127.0.0.1:{new_port}")
            .replace("[journal]\n", "[journal]\nretention_days = 7\n")
        )
        os.kill(daemon.process.pid, signal.SIGHUP)
        wait_for(lambda: "SIGHUP applied:" in daemon.log(), "the reload applied")
        log = daemon.log()
        assert "needs a restart: [server] listen;" in log
        [applied] = [line for line in log.splitlines() if "SIGHUP applied:" in line]
        for key in ("[journal] retention_days", "[airtable] endpoint_url", "[alerts] command", "(replaced: airtable)"):
            assert key in applied

        # the old listener still answers, the new one was not opened; status tells the live settings
        assert post(daemon.url, messages(10, 10))[0] == 200
        assert not listening(new_port)
        done = wait_for(
            lambda: (s := daemon.status())["sinks"]["airtable"]["delivered"] == 20 and s,
            "the rest delivered to the new endpoint",
        )
        assert message_ids(second) == Counter(f"wamid.{i}" for i in range(10, 20))
        assert message_ids(first) == Counter(f"wamid.{i}" for i in range(10))
        assert done["journal"]["retention_days"] == 7
        assert done["sinks"]["airtable"]["state"] == "up" and done["sinks"]["airtable"]["pending"] == 0
        assert done["sinks"]["airtable"]["requests_total"] > requests_before  # counted on, not from zero

        # the next alert goes to the new command
        second.faults(down_seconds=3600)
        assert post(daemon.url, messages(20, 1))[0] == 200
        told = wait_for(lambda: [a for a in alerts_in(alerts_after) if a["kind"] == "sink_down"], "alerted")
        assert told[0]["sink"] == "airtable"
        assert alerts_in(alerts_before) == []
        second.faults(clear=True, down_seconds=0)
        os.kill(daemon.process.pid, signal.SIGHUP)  # also a replay now; nothing changed since
        wait_for(lambda: daemon.status()["sinks"]["airtable"]["delivered"] == 21, "delivered after the outage")
        assert "nothing applied" in daemon.log()  # listen still differs; nothing else does
        assert message_ids(second) == Counter(f"wamid.{i}" for i in range(10, 21))
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()
        first.stop()
        second.stop()


def test_sighup_fixes_a_wrong_dsn_without_a_restart_and_keeps_the_schema(tmp_path, own_pg):
    wrong = own_pg.dsn().replace(f":{own_pg.port}/", f":{free_port()}/")
    config = write_config(tmp_path, extra=f'[postgres]\ndsn = "{wrong}"\n')
    daemon = Daemon(config).start()
    try:
        assert post(daemon.url, messages(0, 5))[0] == 200
        wait_for(
            lambda: (s := daemon.status()["sinks"]["postgres"])["state"] == "down" and s["pending"] == 5,
            "down on the wrong port",
        )
        config.write_text(config.read_text().replace(wrong, own_pg.dsn()) + 'schema = "elsewhere"\n')
        os.kill(daemon.process.pid, signal.SIGHUP)
        wait_for(lambda: daemon.status()["sinks"]["postgres"]["delivered"] == 5, "delivered through the new DSN")
        log = daemon.log()
        assert "needs a restart: [postgres] schema;" in log
        assert "SIGHUP applied: [postgres] dsn (replaced: postgres)" in log
        assert wrong not in log and own_pg.dsn() not in log
        rows = query(own_pg, "SELECT message_id FROM chatledger.interactions")
        assert Counter(row[0] for row in rows) == Counter(f"wamid.{i}" for i in range(5))
        assert query(own_pg, "SELECT count(*) FROM pg_namespace WHERE nspname = 'elsewhere'")[0][0] == 0
        assert daemon.status()["sinks"]["postgres"]["state"] == "up"
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()


def test_sighup_fixes_sendpulse_credentials_and_what_it_missed_is_fetched_back(tmp_path, own_pg):
    sendpulse = SendPulseEmulator(tmp_path).start()
    wrong = "a-wrong-secret-value-0123"
    alerts = tmp_path / "alerts.jsonl"
    config = write_config(
        tmp_path,
        extra=f'[postgres]\ndsn = "{own_pg.dsn()}"\n'
        + sendpulse.config().replace(SENDPULSE_CLIENT_SECRET, wrong)
        + "reconcile_interval_s = 3600\n"
        + alerts_command(alerts),
    )
    people = [sendpulse.add_contact(f"551190000007{i}") for i in range(2)]
    daemon = Daemon(config).start()
    try:
        source = wait_for(
            lambda: (s := daemon.status())["sources"]["sendpulse"]["state"] == "misconfigured" and s, "misconfigured"
        )
        [problem] = source["health"]["problems"]
        assert problem.startswith("SendPulse reconciliation misconfigured: SendPulse refused the credentials")
        assert "[sendpulse] client_id, client_secret and bot_ids" in problem
        assert cli(config, "status").returncode == 1  # degraded
        told = wait_for(lambda: [a for a in alerts_in(alerts) if a["kind"] == "source_misconfigured"], "alerted")
        assert told[0]["severity"] == "critical" and told[0]["details"]["source"] == "sendpulse"

        # intake and delivery go on meanwhile
        live = sendpulse.add_messages(
            *(
                {
                    "contact_id": people[i % 2]["id"],
                    "direction": "in",
                    "text": f"live {i}",
                    "webhook": {"url": daemon.url, "timeout": 5},
                }
                for i in range(4)
            )
        )
        assert [m["webhook"].get("status") for m in live] == [200] * 4
        wait_for(lambda: daemon.status()["sinks"]["postgres"]["delivered"] == 4, "the webhooks delivered")
        missed = sendpulse.add_messages(
            *({"contact_id": people[i % 2]["id"], "direction": "out", "text": f"never posted {i}"} for i in range(3))
        )

        config.write_text(config.read_text().replace(wrong, SENDPULSE_CLIENT_SECRET))
        os.kill(daemon.process.pid, signal.SIGHUP)
        # the next run comes at once (the interval is an hour) and reads the window the refused runs left
        source = wait_for(lambda: (s := daemon.status()["sources"]["sendpulse"])["state"] == "up" and s, "up")
        assert (source["added_total"], source["failed_runs"], source["failed_in_a_row"]) == (3, source["runs"] - 1, 0)
        expected = Counter(m["id"] for m in live + missed)
        wait_for(
            lambda: Counter(r[0] for r in query(own_pg, "SELECT message_id FROM chatledger.interactions")) == expected,
            "every message in PostgreSQL once",
        )
        assert daemon.status()["health"] == {"status": "healthy", "problems": []}
        assert wait_for(lambda: [a for a in alerts_in(alerts) if a["kind"] == "source_up"], "its end alerted")
        log = daemon.log()
        assert "SIGHUP applied: [sendpulse] client_secret (replaced: the SendPulse client)" in log
        assert "needs a restart" not in log
        for text in (log, alerts.read_text()):
            assert wrong not in text and SENDPULSE_CLIENT_SECRET not in text
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()
        sendpulse.stop()
