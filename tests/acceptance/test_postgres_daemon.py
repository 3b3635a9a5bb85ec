"""The installed daemon against a real PostgreSQL that is down, comes back, and outlives a kill -9."""

import asyncio
import json
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC

import pytest

from daemon.sinks.postgres import SCHEMA_VERSION
from tests.support import Daemon, cli, incoming, post, query, wait_for, write_config

pytestmark = pytest.mark.acceptance

SCHEMA = "chatledger"


def pg_config(tmp_path, cluster):
    return write_config(tmp_path, extra=f'[postgres]\ndsn = "{cluster.dsn()}"\nschema = "{SCHEMA}"\n')


def batches(count, size, contacts=7):
    """`count` distinct messages from `contacts` contacts, in webhook batches of `size`."""
    events = [
        incoming(f"wamid.{i}", contact=f"c{i % contacts}", phone=f"55119{i % contacts:08d}") for i in range(count)
    ]
    return [events[i : i + size] for i in range(0, count, size)]


def post_all(url, groups, senders=4):
    with ThreadPoolExecutor(senders) as pool:
        return list(pool.map(lambda group: post(url, group), groups))


def postgres_status(daemon):
    return daemon.status()["sinks"]["postgres"]


def assert_exactly_once(cluster, count):
    """Every acknowledged message is in PostgreSQL once, and every count agrees with the interactions."""
    s = SCHEMA
    assert query(cluster, f"SELECT count(*) FROM {s}.events")[0][0] == count
    rows = query(cluster, f"SELECT count(*), count(DISTINCT message_id) FROM {s}.interactions")[0]
    assert tuple(rows) == (count, count)
    expected = {f"wamid.{i}" for i in range(count)}
    assert {r[0] for r in query(cluster, f"SELECT message_id FROM {s}.interactions")} == expected
    mismatched = query(
        cluster,
        f"""
        SELECT c.conversation_id, c.message_count, count(i.interaction_id)
        FROM {s}.conversations c LEFT JOIN {s}.interactions i USING (conversation_id)
        GROUP BY 1, 2 HAVING c.message_count <> count(i.interaction_id)""",
    )
    assert mismatched == []
    assert query(cluster, f"SELECT sum(message_count) FROM {s}.conversations")[0][0] == count


def test_postgres_down_at_start_then_back_everything_arrives_once(tmp_path, own_pg):
    own_pg.stop("immediate")
    config = pg_config(tmp_path, own_pg)
    daemon = Daemon(config).start()
    try:
        answers = post_all(daemon.url, batches(600, 25))
        assert all(status == 200 for status, _ in answers)
        assert sum(body["accepted"] for _, body in answers) == 600
        assert post(daemon.url, incoming("wamid.3", contact="c3", phone="5511900000003")) == (
            200,
            {"accepted": 0, "duplicates": 1, "rejected": 0},
        )

        down = wait_for(lambda: (s := postgres_status(daemon))["state"] == "down" and s, "postgres reported down")
        assert down["pending"] == 600 and down["delivered"] == 0
        assert down["last_error"] and down["last_error_at"] and down["oldest_pending_age_s"] is not None
        assert "postgres is down" in " ".join(daemon.status()["health"]["problems"])
        assert cli(config, "status").returncode == 1  # degraded

        own_pg.start()
        assert cli(config, "sync").returncode == 0  # wakes the replay at once, backoff reset
        up = wait_for(lambda: (s := postgres_status(daemon))["pending"] == 0 and s, "backlog drained")
        assert up["state"] == "up" and up["delivered"] == 600 and up["dead"] == 0
        assert_exactly_once(own_pg, 600)
        assert daemon.status()["health"]["status"] == "healthy"

        # a message after recovery goes straight through, and a replay of everything changes nothing
        assert post(daemon.url, incoming("wamid.600", contact="c0", phone="5511900000000"))[0] == 200
        wait_for(lambda: postgres_status(daemon)["delivered"] == 601, "new message delivered")
        assert_exactly_once(own_pg, 601)
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()


def test_kill_9_in_the_middle_of_a_backlog_still_exactly_once(tmp_path, own_pg):
    own_pg.stop("immediate")
    config = pg_config(tmp_path, own_pg)
    daemon = Daemon(config).start()
    total = 6000
    answers = post_all(daemon.url, batches(total, 200))
    assert [status for status, _ in answers] == [200] * len(answers)
    assert daemon.stop() == 0  # backlog journaled, nothing delivered

    own_pg.start()
    daemon = Daemon(config).start()
    try:
        # kill as soon as PostgreSQL holds part of the backlog
        wait_for(
            lambda: (
                query(own_pg, "SELECT to_regclass('chatledger.events') IS NOT NULL")[0][0]
                and query(own_pg, "SELECT count(*) FROM chatledger.events")[0][0] > 0
            ),
            "first batch landed",
        )
        daemon.kill()
        landed = query(own_pg, "SELECT count(*) FROM chatledger.events")[0][0]
        assert 0 < landed <= total

        daemon = Daemon(config).start()
        done = wait_for(lambda: (s := postgres_status(daemon))["pending"] == 0 and s, "backlog drained")
        assert done["delivered"] == total and done["dead"] == 0
        assert_exactly_once(own_pg, total)
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()


def test_migrate_command_and_newer_schema_refused(tmp_path, own_pg):
    config = pg_config(tmp_path, own_pg)
    first = cli(config, "migrate")
    assert first.returncode == 0 and f"at version {SCHEMA_VERSION}" in first.stdout
    again = cli(config, "migrate")
    assert again.returncode == 0 and f"at version {SCHEMA_VERSION}" in again.stdout
    query(own_pg, "INSERT INTO chatledger.schema_migrations (version) VALUES (99)")
    refused = cli(config, "migrate")
    assert refused.returncode != 0 and "99" in refused.stderr and "newer" in refused.stderr

    (tmp_path / "no-dsn").mkdir()
    no_dsn = write_config(tmp_path / "no-dsn")
    missing = cli(no_dsn, "migrate")
    assert missing.returncode == 78 and "dsn" in missing.stderr


def test_replay_dead_letters_offline_then_online(tmp_path, own_pg):
    """`replay --dead` re-queues in the journal when no daemon runs, and through the socket when one does."""
    from datetime import datetime

    from daemon.events import normalize
    from daemon.journal import Journal

    config = pg_config(tmp_path, own_pg)

    async def plant(ids):
        journal = await Journal.open(tmp_path / "state" / "journal.sqlite", ["postgres"])
        try:
            now = datetime.now(UTC)
            await journal.append([normalize(incoming(f"wamid.{i}"), now) for i in ids])
            for event in await journal.pending("postgres", 0, 100):
                if event.message_id in {f"wamid.{i}" for i in ids[:1]}:
                    await journal.mark_dead("postgres", event.id, "planted: value out of range")
        finally:
            await journal.close()

    asyncio.run(plant([0, 1]))
    listed = cli(config, "dead")
    assert listed.returncode == 0, listed.stderr
    assert "planted: value out of range" in listed.stdout and "1 dead letters" in listed.stdout
    letter = json.loads(cli(config, "dead", "--json").stdout)["postgres"][0]
    assert letter["title"] == "incoming_message"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", letter["updated_at"])  # as status writes times
    offline = cli(config, "replay", "--dead", "--sink", "postgres")
    assert offline.returncode == 0, offline.stderr
    assert "postgres: 1 dead letters re-queued" in offline.stdout and "not running" in offline.stdout
    assert cli(config, "replay", "--dead", "--sink", "airtable").returncode == 78  # not enabled
    nothing = cli(config, "replay", "--event", "nope")  # nothing found is no success
    assert nothing.returncode == 1 and "nothing re-queued" in nothing.stderr and "nope" in nothing.stderr

    asyncio.run(plant([2, 3]))  # one more dead letter while the daemon is stopped
    daemon = Daemon(config).start()
    try:
        first = wait_for(lambda: (s := postgres_status(daemon))["delivered"] == 3 and s, "non-dead delivered")
        assert first["dead"] == 1 and daemon.status()["health"]["status"] == "degraded"
        assert "wamid.2" in cli(config, "dead").stdout  # read beside the running daemon
        online = cli(config, "replay", "--dead")
        assert online.returncode == 0 and "postgres: 1 dead letters re-queued, replay triggered" in online.stdout
        wait_for(lambda: (s := postgres_status(daemon))["delivered"] == 4 and s["dead"] == 0, "dead letter delivered")
        assert_exactly_once(own_pg, 4)

        # the database was restored from a backup without these rows: replay everything since a date
        query(own_pg, "TRUNCATE chatledger.events, chatledger.interactions, chatledger.conversations CASCADE")
        since = cli(config, "replay", "--since", "2000-01-01")
        assert (
            since.returncode == 0 and "postgres: 4 deliveries received since 2000-01-01T00:00:00.000Z" in since.stdout
        )
        wait_for(
            lambda: (
                postgres_status(daemon)["delivered"] == 4
                and query(own_pg, "SELECT count(*) FROM chatledger.events")[0][0] == 4
            ),
            "replayed since",
        )
        assert_exactly_once(own_pg, 4)
        one = cli(config, "replay", "--event", "wamid.1")
        assert one.returncode == 0 and "postgres: 1 deliveries of event wamid.1" in one.stdout
        assert cli(config, "replay", "--since", "yesterday").returncode == 64  # a usage error: not "unreachable"
        nothing = cli(config, "replay", "--event", "nope")  # through the daemon too
        assert nothing.returncode == 1 and "nothing re-queued" in nothing.stderr
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()


def test_events_journaled_before_postgres_was_enabled_are_delivered(tmp_path, own_pg):
    """README's first run is journal only; PostgreSQL enabled later receives what was journaled before."""
    journal_only = write_config(tmp_path)
    daemon = Daemon(journal_only).start()
    try:
        for group in batches(7, 2):
            assert post(daemon.url, group)[0] == 200
        assert daemon.status()["sinks"]["postgres"]["backfill"] is None  # not enabled
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()

    config = pg_config(tmp_path, own_pg)
    assert "7 events have no postgres delivery row" in cli(config, "journal", "check").stdout
    daemon = Daemon(config).start()
    try:
        done = wait_for(
            lambda: (s := postgres_status(daemon))["delivered"] == 7 and s["pending"] == 0 and s,
            "the events journaled before delivered",
        )
        assert done["backfill"] == {"state": "done", "total": 7, "done": 7, "to_go": 0}
        assert (
            "backfill: 7 events journaled before postgres was enabled made pending at start"
            in cli(config, "status").stdout
        )
        assert_exactly_once(own_pg, 7)
        log = daemon.log()
        # readiness did not wait for it: the count is logged once, after the daemon took webhooks
        assert log.count("postgres: 7 events journaled before it was enabled") == 1
        assert log.rindex("accepting webhooks") < log.index("postgres: 7 events journaled before it was enabled")
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()
    checked = cli(config, "journal", "check")
    assert checked.returncode == 0 and "no postgres delivery row" not in checked.stdout
