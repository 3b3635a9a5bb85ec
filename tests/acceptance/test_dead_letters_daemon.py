"""The installed daemon: dead letters given up with `dead --discard` (offline and through the socket) stop
degrading it; each dead letter is alerted once, not again after a restart; a sink down before a restart
is resolved after it, at once and at INFO."""

import asyncio
import json
import re
from datetime import UTC, datetime

import pytest

from tests.support import Daemon, cli, incoming, wait_for, write_config

pytestmark = pytest.mark.acceptance


def alerts_in(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def told(path, kind):
    return [alert for alert in alerts_in(path) if alert["kind"] == kind]


def plant(journal_path, ids, dead):
    """Journal these messages (the daemon stopped) and make the ones in `dead` dead letters of postgres."""
    from daemon.events import normalize
    from daemon.journal import Journal

    async def run():
        journal = await Journal.open(journal_path, ["postgres"])
        try:
            await journal.append([normalize(incoming(f"wamid.{i}"), datetime.now(UTC)) for i in ids])
            for event in await journal.pending("postgres", 0, 100):
                if event.message_id in {f"wamid.{i}" for i in dead}:
                    await journal.mark_dead("postgres", event.id, f"planted: {event.message_id} refused")
        finally:
            await journal.close()

    asyncio.run(run())


def alerting(tmp_path, dsn, schema="chatledger"):
    alerts_file = tmp_path / "alerts.jsonl"
    config = write_config(
        tmp_path,
        extra=f'[postgres]\ndsn = "{dsn}"\nschema = "{schema}"\n[alerts]\n'
        f"command = \"sh -c 'cat >> {alerts_file}; echo >> {alerts_file}'\"\n",
    )
    return config, alerts_file


def test_dead_letters_are_discarded_offline_and_online_and_the_daemon_is_healthy_again(tmp_path, pg_cluster, pg_schema):
    config, _ = alerting(tmp_path, pg_cluster.dsn(), pg_schema)
    plant(tmp_path / "state" / "journal.sqlite", [1, 2, 3, 4], dead=[1, 2, 3])

    # no daemon: discarded in the journal itself
    offline = cli(config, "dead", "--discard", "1", "--reason", "test data, never a real customer")
    assert offline.returncode == 0, offline.stderr
    assert "postgres: event 1" in offline.stdout and "daemon not running" in offline.stdout
    missing = cli(config, "dead", "--discard", "wamid.99", "--reason", "typo")
    assert missing.returncode == 1 and missing.stdout == ""
    assert "no event wamid.99 in the journal" in missing.stderr
    assert cli(config, "dead", "--discard", "2").returncode == 64  # --reason is required: a usage error

    daemon = Daemon(config).start()
    try:
        status = wait_for(
            lambda: (s := daemon.status())["sinks"]["postgres"]["delivered"] == 1 and s, "the one good event delivered"
        )
        assert (status["sinks"]["postgres"]["dead"], status["sinks"]["postgres"]["discarded"]) == (2, 1)
        assert status["health"]["status"] == "degraded"
        assert "`chatledger dead`" in " ".join(status["health"]["problems"])

        one = cli(config, "dead", "--discard", "wamid.2", "--sink", "postgres", "--reason", "duplicate of wamid.4")
        assert one.returncode == 0, one.stderr
        assert "postgres: event 2" in one.stdout and "through the running daemon" in one.stdout
        again = cli(config, "dead", "--discard", "2", "--reason", "twice")
        assert again.returncode == 1 and "not a dead letter (postgres discarded)" in again.stderr
        rest = cli(config, "dead", "--discard", "--all", "--reason", "checked by hand: nothing to deliver")
        assert rest.returncode == 0 and "postgres: event 3" in rest.stdout and "1 dead letter discarded" in rest.stdout
        nothing = cli(config, "dead", "--discard", "--all", "--reason", "again")
        assert nothing.returncode == 1 and "no dead letters to discard" in nothing.stderr

        healthy = wait_for(lambda: (s := daemon.status())["health"]["status"] == "healthy" and s, "healthy again")
        assert (healthy["sinks"]["postgres"]["dead"], healthy["sinks"]["postgres"]["discarded"]) == (0, 3)
        assert cli(config, "status").returncode == 0
        assert cli(config, "dead").stdout.startswith("no dead letters")
        kept = json.loads(cli(config, "dead", "--discarded", "--json").stdout)["postgres"]
        assert [(k["event_id"], k["state"], k["reason"]) for k in kept] == [
            (1, "discarded", "test data, never a real customer"),
            (2, "discarded", "duplicate of wamid.4"),
            (3, "discarded", "checked by hand: nothing to deliver"),
        ]
        assert all(k["discarded_by"] and k["discarded_at"] and "planted" in k["last_error"] for k in kept)

        cli(config, "replay", "--dead")  # never brings a discarded one back
        after = daemon.status()["sinks"]["postgres"]
        assert (after["discarded"], after["dead"], after["pending"]) == (3, 0, 0)
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()


def test_a_sink_down_before_a_restart_is_resolved_after_it_at_once_and_dead_letters_are_told_once(tmp_path, own_pg):
    config, alerts_file = alerting(tmp_path, own_pg.dsn())
    plant(tmp_path / "state" / "journal.sqlite", [1, 2], dead=[1])
    own_pg.stop("immediate")
    daemon = Daemon(config).start()
    try:
        wait_for(
            lambda: told(alerts_file, "sink_down") and told(alerts_file, "dead_letters"),
            "postgres down and the dead letter alerted",
        )
        [dead_alert] = told(alerts_file, "dead_letters")
        assert dead_alert["details"]["dead"] == 1 and "chatledger dead" in dead_alert["message"]
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()

    own_pg.start()
    daemon = Daemon(config).start()
    try:
        # min_interval_s (300 s) does not hold it, and the restart did not forget what was open
        wait_for(lambda: told(alerts_file, "sink_up"), "the outage told before the restart resolved after it")
        [up] = told(alerts_file, "sink_up")
        assert up["sink"] == "postgres" and up["severity"] == "info"
        assert re.search(r"INFO +alert sink_up: postgres is up again", daemon.log())
        assert len(told(alerts_file, "sink_down")) == 1 and len(told(alerts_file, "dead_letters")) == 1  # not again
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()
