"""The installed `chatledger` facing a mistaken config, a damaged journal and loose file modes."""

import sqlite3

import pytest

from tests.support import Daemon, cli, incoming, post, write_config

pytestmark = pytest.mark.acceptance


@pytest.fixture
def config(tmp_path):
    return write_config(tmp_path)


def journal_with_events(config, count):
    """Run the daemon once and acknowledge `count` events; return the journal's path."""
    daemon = Daemon(config).start()
    try:
        assert post(daemon.url, [incoming(f"m{i}") for i in range(count)])[0] == 200
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()
    return config.parent / "state" / "journal.sqlite"


def events_in(path):
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT count(*) FROM events").fetchone()[0]


def test_a_status_socket_set_to_the_journal_is_refused_and_the_journal_survives(config):
    journal = journal_with_events(config, 3)
    original = config.read_text()
    config.write_text(original.replace('socket = "run/status.sock"', 'socket = "state/journal.sqlite"'))
    for command in ("run", "check-config", "status", "dead"):
        result = cli(config, command, timeout=30)
        assert result.returncode == 78, (command, result.stderr)
        assert "[status] socket: is the journal" in result.stderr
    assert events_in(journal) == 3
    config.write_text(original)
    daemon = Daemon(config).start()
    try:
        assert daemon.status()["journal"]["events"] == 3
    finally:
        daemon.stop()


def test_a_file_at_the_status_socket_path_is_left_alone(config):
    journal_with_events(config, 1)
    stray = config.parent / "run" / "status.sock"
    stray.write_text("not mine to delete")
    daemon = Daemon(config).start(wait=False)
    assert daemon.process.wait(timeout=30) == 1
    assert "is a regular file, not a socket" in daemon.log()
    assert stray.read_text() == "not mine to delete"
