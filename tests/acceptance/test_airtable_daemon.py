"""The installed daemon with the Airtable emulator in its own process (real 5 req/s and 30 s lockout)."""

import signal
from collections import Counter
from datetime import UTC, datetime

import pytest

from tests.support import AirtableEmulator, Daemon, cli, incoming, post, wait_for, write_config

pytestmark = pytest.mark.acceptance


def airtable_status(daemon):
    return daemon.status()["sinks"]["airtable"]


def messages(start, count, contacts=5):
    return [
        incoming(f"wamid.{i}", contact=f"c{i % contacts}", phone=f"55119{i % contacts:08d}")
        for i in range(start, start + count)
    ]


@pytest.fixture
def emulator(tmp_path):
    running = AirtableEmulator(tmp_path).start()
    yield running
    running.stop()


def test_airtable_check_and_init_commands(tmp_path, emulator):
    config = write_config(tmp_path, extra=emulator.config())
    check = cli(config, "airtable", "check")
    assert check.returncode == 1 and "difference: table 'Conversations' (conversations) is missing" in check.stdout
    init = cli(config, "airtable", "init")
    assert init.returncode == 0 and "created table Interactions with 12 fields" in init.stdout
    again = cli(config, "airtable", "check")
    assert again.returncode == 0 and "match what chatledger writes" in again.stdout
    assert emulator.stats()["rate_limited"] == 0
    no_key = tmp_path / "no-key"
    no_key.mkdir()
    assert cli(write_config(no_key), "airtable", "check").returncode == 78


def test_postgres_down_airtable_still_gets_everything(tmp_path, emulator, own_pg):
    own_pg.stop("immediate")
    config = write_config(tmp_path, extra=emulator.config() + f'[postgres]\ndsn = "{own_pg.dsn()}"\n')
    assert cli(config, "airtable", "init").returncode == 0
    daemon = Daemon(config).start()
    try:
        batches = [messages(i, 20) for i in range(0, 200, 20)]
        assert all(post(daemon.url, batch)[0] == 200 for batch in batches)
        wait_for(lambda: airtable_status(daemon)["delivered"] == 200, "airtable has everything")
        status = daemon.status()["sinks"]
        assert status["postgres"]["state"] == "down" and status["postgres"]["pending"] == 200
        assert status["airtable"]["state"] == "up" and status["airtable"]["rate_limited_429"] == 0
        interactions = emulator.records("Interactions")
        assert Counter(r["MessageId"] for r in interactions) == Counter(f"wamid.{i}" for i in range(200))
        counts = {r["CustomerPhone"]: r["MessageCount"] for r in emulator.records("Conversations")}
        assert counts == {f"55119{c:08d}": 40 for c in range(5)}
        assert emulator.stats()["rate_limited"] == 0
        readable = cli(config, "status")
        assert readable.returncode == 1  # degraded: PostgreSQL is down
        assert "postgres is down" in readable.stdout and "x 429" in readable.stdout
        assert "requests in the last minute" in readable.stdout
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()


def test_the_documented_base_gets_every_message_once_with_no_init(tmp_path):
    emulator = AirtableEmulator(tmp_path, documented="date").start()
    config = write_config(tmp_path, extra=emulator.config())
    daemon = Daemon(config).start()
    try:
        days = {datetime.now(UTC).date().isoformat()}
        batches = [messages(i, 20) for i in range(0, 100, 20)]
        assert all(post(daemon.url, batch)[0] == 200 for batch in batches)
        assert post(daemon.url, batches[1][:7])[0] == 200  # SendPulse sends some again
        chat = {
            "title": "open_chat",
            "service": "whatsapp",
            "bot": {"id": "bot1"},
            "contact": {"id": "c1", "phone": "5511900000001", "name": "Cliente"},
            "info": None,
        }
        assert post(daemon.url, [chat])[0] == 200
        done = wait_for(lambda: (s := airtable_status(daemon))["delivered"] == 101 and s, "delivered")
        days.add(datetime.now(UTC).date().isoformat())
        assert (done["state"], done["dead"], done["pending"], done["warnings"]) == ("up", 0, 0, [])
        interactions = emulator.records("Interactions")
        assert Counter(r["MessageId"] for r in interactions) == Counter(f"wamid.{i}" for i in range(100))
        assert {r["Timestamp"] for r in interactions} <= days  # date fields without time: the UTC day
        counts = {r["CustomerPhone"]: r["MessageCount"] for r in emulator.records("Conversations")}
        assert counts == {f"55119{c:08d}": 20 for c in range(5)}
        [escalation] = emulator.records("Escalations")
        assert (escalation["Reason"], escalation["Status"]) == ("live chat opened", "pending")  # a choice made
        check = cli(config, "airtable", "check")
        assert check.returncode == 0, check.stdout + check.stderr
        assert "note: Escalations.Reason is a single select field" in check.stdout
        assert "chatledger writes every field, as the notes say (through the running daemon)" in check.stdout
        assert emulator.stats()["rate_limited"] == 0
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()
        emulator.stop()


def test_a_renamed_field_is_left_out_said_and_then_mapped_on_sighup(tmp_path, emulator):
    alerts_file = tmp_path / "alerts.jsonl"
    alerts = f"[alerts]\ncommand = \"sh -c 'cat >> {alerts_file}; echo >> {alerts_file}'\"\n"
    config = write_config(tmp_path, extra=emulator.config() + alerts)
    assert cli(config, "airtable", "init").returncode == 0
    emulator.rename_field("Interactions", "Content", "Body")
    daemon = Daemon(config).start()
    try:
        assert post(daemon.url, messages(0, 30))[0] == 200
        done = wait_for(lambda: (s := airtable_status(daemon))["delivered"] == 30 and s, "delivered without Content")
        hint = '"Interactions.Content" = "Body" under [airtable.fields]'
        [warning] = done["warnings"]
        assert warning.startswith("Interactions.Content is missing: left out") and hint in warning
        assert done["state"] == "up" and done["dead"] == 0
        assert all(r["Body"] is None for r in emulator.records("Interactions"))
        assert f"warning: {warning}" in cli(config, "status").stdout
        told = wait_for(lambda: [a for a in _alerts(alerts_file) if a["kind"] == "airtable_warnings"], "alerted")
        assert told[0]["details"]["warnings"] == [warning] and told[0]["sink"] == "airtable"

        check = cli(config, "airtable", "check")
        assert check.returncode == 1 and f"warning: {warning}" in check.stdout
        init = cli(config, "airtable", "init")  # no empty Content beside the renamed field
        assert "did not create Interactions.Content: 'Body' looks like it renamed" in init.stdout
        assert "Content" not in emulator.records("Interactions")[0]

        config.write_text(
            config.read_text().replace("[alerts]", '[airtable.fields]\n"Interactions.Content" = "Body"\n[alerts]')
        )
        daemon.signal(signal.SIGHUP)  # reads [airtable.fields] and the schema again
        wait_for(lambda: airtable_status(daemon)["warnings"] == [], "mapped")
        assert post(daemon.url, messages(30, 20))[0] == 200
        wait_for(lambda: airtable_status(daemon)["delivered"] == 50, "delivered through the mapping")
        bodies = {r["MessageId"]: r["Body"] for r in emulator.records("Interactions")}
        assert all(bodies[f"wamid.{i}"] == "oi" for i in range(30, 50))
        again = cli(config, "airtable", "check")
        assert again.returncode == 0 and "through the running daemon" in again.stdout
        assert len([a for a in _alerts(alerts_file) if a["kind"] == "airtable_warnings"]) == 1

        # down for a while: the backlog waits and drains afterwards; nothing is duplicated
        emulator.faults(down_seconds=3600)
        assert post(daemon.url, messages(50, 20))[0] == 200
        wait_for(lambda: airtable_status(daemon)["state"] == "down", "down")
        emulator.faults(clear=True, down_seconds=0)
        assert cli(config, "sync").returncode == 0
        wait_for(lambda: airtable_status(daemon)["delivered"] == 70, "drained after the outage")
        assert Counter(r["MessageId"] for r in emulator.records("Interactions")) == Counter(
            f"wamid.{i}" for i in range(70)
        )
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()


def _alerts(path):
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def test_alerts_reach_the_command_and_the_webhook(tmp_path, emulator):
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from tests.support import free_port

    received = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    alerts_file = tmp_path / "alerts.jsonl"
    dead_pg = f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    config = write_config(
        tmp_path,
        extra=emulator.config() + f'[postgres]\ndsn = "{dead_pg}"\n'
        f"[alerts]\ncommand = \"sh -c 'cat >> {alerts_file}; echo >> {alerts_file}'\"\n"
        f'webhook_url = "http://127.0.0.1:{server.server_port}/hook"\n',
    )
    assert cli(config, "airtable", "init").returncode == 0
    daemon = Daemon(config).start()
    try:
        assert post(daemon.url, messages(0, 5))[0] == 200
        kinds = lambda: {r["kind"] for r in received}  # noqa: E731
        wait_for(lambda: {"sink_down", "fallback_active"} <= kinds(), "alerts posted to the webhook", timeout=60)
        lines = [json.loads(line) for line in alerts_file.read_text().splitlines() if line.strip()]
        assert {"sink_down", "fallback_active"} <= {line["kind"] for line in lines}
        down = next(line for line in lines if line["kind"] == "sink_down")
        assert down["sink"] == "postgres" and down["severity"] == "critical" and down["service"] == "chatledger"
        assert "alert sink_down" in daemon.log()
        alerts = daemon.status()["alerts"]
        assert alerts["enabled"] and alerts["sent"] >= 4 and alerts["failed"] == 0  # 2 alerts x 2 targets
        assert " sent" in cli(config, "status").stdout
        assert daemon.stop() == 0
    finally:
        server.shutdown()
        if daemon.process.poll() is None:
            daemon.kill()


def test_the_monthly_request_limit_holds_the_base_across_a_restart_until_sync(tmp_path, emulator):
    config = write_config(
        tmp_path, extra=emulator.config().replace("[airtable]\n", "[airtable]\nmonthly_request_limit = 8\n")
    )
    assert cli(config, "airtable", "init").returncode == 0  # a command of its own: not the daemon's count
    daemon = Daemon(config).start()
    try:
        assert post(daemon.url, messages(0, 200))[0] == 200
        held = wait_for(lambda: (s := airtable_status(daemon))["state"] == "quota" and s, "held at the limit")
        assert held["requests_this_month"] == 8 and held["monthly_request_limit"] == 8
        assert "monthly_request_limit reached" in held["last_error"] and held["dead"] == 0
        sent = emulator.stats()["requests"]
        readable = cli(config, "status")
        assert "8 this month of 8 (100%)" in readable.stdout
        assert daemon.stop() == 0
        daemon.start()  # the count is in the journal: a restart does not buy a new month
        held = wait_for(lambda: (s := airtable_status(daemon))["state"] == "quota" and s, "still held")
        assert held["requests_this_month"] == 8 and emulator.stats()["requests"] == sent
        assert cli(config, "sync").returncode == 0  # the operator says: go on this month
        wait_for(lambda: airtable_status(daemon)["delivered"] == 200, "everything delivered after sync")
        assert airtable_status(daemon)["requests_this_month"] > 8 and airtable_status(daemon)["dead"] == 0
        daemon.kill()
        daemon.start()  # the operator's sync holds for the rest of the month, across a crash too
        assert post(daemon.url, messages(200, 20))[0] == 200
        wait_for(lambda: airtable_status(daemon)["delivered"] == 220, "delivered after a restart, past the limit")
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()
