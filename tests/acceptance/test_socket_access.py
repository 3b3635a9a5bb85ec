"""The status socket of the installed daemon: who may do what, and hostile parameters."""

import os
import sqlite3

import pytest

from tests.support import (
    AirtableEmulator,
    Daemon,
    as_operator,
    cli,
    incoming,
    post,
    unix_http,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.acceptance


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_an_operator_in_the_socket_group_reads_but_cannot_change_anything(folder):
    config = write_config(folder)
    daemon = Daemon(config).start()
    try:
        socket_path = folder / "run" / "status.sock"
        operator = as_operator(socket_path.stat().st_gid)
        assert post(daemon.url, [incoming(f"m{i}", phone="+55 11 90000-0001") for i in range(3)])[0] == 200

        status = cli(config, "status", run_as=operator)
        assert status.returncode == 0 and "3 events" in status.stdout, status.stderr
        synced = cli(config, "sync", run_as=operator)  # allowed (a refusal exits 1); journal only: nothing to replay
        assert synced.returncode == 78 and "no sink is enabled" in synced.stderr, synced.stderr
        for method, route in (("GET", "/metrics"), ("POST", "/airtable?action=check")):
            assert unix_http(socket_path, method, route, operator)[0] == 200

        forget = cli(config, "forget", "--phone", "5511900000001", run_as=operator)
        assert forget.returncode == 1
        assert "the daemon refused: forget changes data: only the daemon's user" in forget.stderr
        assert "sudo -u root chatledger forget" in forget.stderr
        assert "daemon not running" not in forget.stdout + forget.stderr  # no offline fallback
        quarantine = cli(config, "quarantine", run_as=operator)  # personal data, read as `dead` reads it
        assert quarantine.returncode == 1 and "daemon not running" not in quarantine.stdout + quarantine.stderr
        assert (
            "the daemon refused: quarantine reads the journal's personal data: only the daemon's user"
            in quarantine.stderr
        ), quarantine.stderr
        dry = cli(config, "forget", "--phone", "5511900000001", "--dry-run", run_as=operator)
        assert dry.returncode == 1 and "the daemon refused: forget" in dry.stderr, dry.stderr
        replay = cli(config, "replay", "--since", "2020-01-01", run_as=operator)  # journal only: said before asking
        assert replay.returncode == 78 and "no sink is enabled" in replay.stderr, replay.stderr
        for method, route in (
            ("POST", "/recover?all=1"),
            ("POST", "/airtable?action=init"),
            ("POST", "/replay?dead=1"),
            ("GET", "/quarantine"),
            ("POST", "/quarantine/discard?all=1&reason=x"),
        ):
            status_code, body = unix_http(socket_path, method, route, operator)
            assert status_code == 403 and "or root" in body
        assert daemon.status()["journal"]["events"] == 3  # nothing changed
        with sqlite3.connect(folder / "state" / "journal.sqlite") as journal:
            assert journal.execute("SELECT count(*) FROM audit").fetchone() == (0,)  # no erasure began
        assert "re-queued" not in daemon.log()
        assert "refused to uid" in daemon.log()

        # the daemon's user (here root) may
        forget = cli(config, "forget", "--phone", "5511900000001")
        assert forget.returncode == 0, forget.stderr
        assert daemon.status()["journal"]["events"] == 0
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()


def test_a_formula_injection_over_the_socket_is_refused_before_anything_is_read(tmp_path, pg_cluster, pg_schema):
    emulator = AirtableEmulator(tmp_path).start()
    config = write_config(
        tmp_path, extra=emulator.config() + f'[postgres]\ndsn = "{pg_cluster.dsn()}"\nschema = "{pg_schema}"\n'
    )
    try:
        assert cli(config, "airtable", "init").returncode == 0
        daemon = Daemon(config).start()
        try:
            assert post(daemon.url, [incoming("m1"), incoming("m2", phone="5511900000002", contact="c2")])[0] == 200
            wait_for(lambda: daemon.status()["sinks"]["airtable"]["delivered"] == 2, "delivered to Airtable")
            before = emulator.stats()["requests"]
            socket_path = tmp_path / "run" / "status.sock"
            for route in (
                "/recover?phone=x%27%20!%3D%20%27y",
                "/recover?conversation=a&phone=5511",
                "/recover?since=x%27)%20%26%20TRUE()",
                "/recover?all=1&prefer=everything",
            ):
                status, body = unix_http(socket_path, "POST", route)
                assert status == 400, (route, body)
            assert "is not a phone number" in unix_http(socket_path, "POST", "/recover?phone=x%27%20!%3D%20%27y")[1]
            assert emulator.stats()["requests"] == before  # nothing was read
            assert daemon.stop() == 0
        finally:
            if daemon.process.poll() is None:
                daemon.kill()
    finally:
        emulator.stop()
