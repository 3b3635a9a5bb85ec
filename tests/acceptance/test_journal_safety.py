"""The installed `chatledger` facing a mistaken config, a damaged journal and loose file modes."""

import json
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import urllib.request

import pytest

from tests.damage import first_leaf, flip, root_pages
from tests.support import Daemon, chatledger_bin, cli, incoming, post, write_config

pytestmark = pytest.mark.acceptance


@pytest.fixture
def config(tmp_path):
    return write_config(tmp_path)


def journal_with_events(config, count):
    """Run the daemon once and acknowledge `count` events; return the journal's path."""
    daemon = Daemon(config).start()
    try:
        for start in range(0, count, 500):  # within [server] max_elements_per_request
            assert post(daemon.url, [incoming(f"m{i}") for i in range(start, min(count, start + 500))])[0] == 200
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


def nothing_answers_on(port):
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def sqlite3_can_recover():
    probe = subprocess.run(["sqlite3", ":memory:", "SELECT count(*) FROM sqlite_dbpage"], capture_output=True)
    return probe.returncode == 0


# README, "When the journal is damaged", step 2 and its variant
COPY_READABLE = {
    "recover": ['sqlite3 {old} ".recover" | sqlite3 {new}'],
    "dump": [
        "sqlite3 {old} .dump | sed 's/^ROLLBACK; -- due to errors$/COMMIT;/' | sqlite3 {new}",
        """sqlite3 {new} "PRAGMA user_version = $(sqlite3 {old} 'PRAGMA user_version')\"""",
    ],
}


@pytest.mark.parametrize("method", ["recover", "dump"])
def test_a_damaged_journal_stops_the_start_and_the_readme_steps_recover_it(config, method):
    if shutil.which("sqlite3") is None or (method == "recover" and not sqlite3_can_recover()):
        pytest.skip(f"this sqlite3 cannot {method}")
    journal = journal_with_events(config, 1500)
    flip(journal, [first_leaf(journal, "events")])  # 200 bytes of the oldest events' page
    daemon = Daemon(config).start(wait=False)
    assert daemon.process.wait(timeout=60) == 1
    assert nothing_answers_on(daemon.port)
    log = daemon.log()
    assert f"journal {journal} is damaged" in log and '".recover"' in log and "journal check --repair" in log

    damaged = journal.with_name("journal.sqlite.damaged")
    journal.rename(damaged)
    for command in COPY_READABLE[method]:
        subprocess.run(command.format(old=damaged, new=journal), shell=True, check=True)
    repaired = cli(config, "journal", "check", "--repair")
    assert repaired.returncode == 0 and "no problems found" in repaired.stdout, repaired.stdout + repaired.stderr
    daemon = Daemon(config).start()
    try:
        kept = daemon.status()["journal"]["events"]
        assert 1000 < kept < 1500  # all but the rows of the damaged page
        assert post(daemon.url, incoming("after"))[0] == 200
        assert post(daemon.url, incoming("m1499"))[1]["duplicates"] == 1  # a kept event is still known
    finally:
        assert daemon.stop() == 0


def test_an_emptied_journal_stops_the_start(config):
    journal = journal_with_events(config, 3)
    journal.write_bytes(b"")
    daemon = Daemon(config).start(wait=False)
    assert daemon.process.wait(timeout=60) == 1
    assert "is empty (0 bytes), but its lock file" in daemon.log()
    assert journal.stat().st_size == 0


def test_damage_met_while_running_is_reported_by_status(config):
    journal = journal_with_events(config, 1500)
    daemon = Daemon(config).start()
    try:
        flip(journal, root_pages(journal, "events"))  # the table and every index of it: any count reads one
        with urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}/healthz", timeout=10) as answer:
            assert answer.status == 200  # a write elsewhere: the status reader's cache is dropped
        result = cli(config, "status", "--json")
        assert result.returncode == 1, result.stderr
        snapshot = json.loads(result.stdout)
        assert "malformed" in snapshot["journal"]["read_error"]
        assert any(p.startswith("journal cannot be read") for p in snapshot["health"]["problems"])
        assert "journal cannot be read" in cli(config, "status").stdout
    finally:
        daemon.kill()


def without_root_powers(config, *command):
    """Run chatledger as root stripped of the capabilities that bypass file modes: a user for whom
    the journal's owner is someone else."""
    return subprocess.run(
        [
            "setpriv",
            "--bounding-set",
            "-dac_override,-dac_read_search",
            "--",
            chatledger_bin(),
            *command,
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_a_user_who_cannot_read_the_journal_is_told_why(config):
    journal = journal_with_events(config, 2)
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    assert stat.S_IMODE(journal.parent.stat().st_mode) == 0o750
    owned = [journal.parent, *journal.parent.iterdir()]
    for path in owned:
        os.chown(path, 65534, 65534)  # the daemon's user is now someone else (nobody)
    for folder_mode in (0o700, 0o755):  # the folder closed, then only the file
        journal.parent.chmod(folder_mode)
        for command in (["dead"], ["journal", "check"]):
            result = without_root_powers(config, *command)
            assert result.returncode == 1, (command, result.stdout, result.stderr)
            assert f"journal {journal}: permission denied" in result.stderr
            assert "run the command as that user" in result.stderr and "Traceback" not in result.stderr
    for path in owned:
        os.chown(path, 0, 0)
    assert without_root_powers(config, "dead").returncode == 0  # its owner can
