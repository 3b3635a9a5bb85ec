"""The journal on a small real filesystem (tmpfs) that fills up: 503, nothing acknowledged lost, and
intake resumes by itself when space is freed."""

import sqlite3
import subprocess

import pytest

from tests.support import Daemon, cli, incoming, post, wait_for, write_config

pytestmark = pytest.mark.acceptance


@pytest.fixture
def small_disk(tmp_path):
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mountpoint)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def batch(n, size=20):
    return [incoming(f"wamid.{n}.{i}", text="x" * 2000 + f" {n}.{i}") for i in range(size)]


def test_full_disk_gives_503_loses_nothing_acknowledged_and_resumes(tmp_path, small_disk):
    config = write_config(tmp_path)
    config.write_text(
        config.read_text().replace('path = "state/journal.sqlite"', f'path = "{small_disk}/journal.sqlite"')
    )
    ballast = small_disk / "ballast"  # someone else's files, taking most of the disk
    ballast.write_bytes(b"\0" * 2 * 1024 * 1024)
    daemon = Daemon(config).start()
    try:
        acknowledged, refused, n = [], 0, 0
        while refused < 3:  # fill the disk until the journal cannot write
            status, answer = post(daemon.url, batch(n))
            if status == 200:
                assert answer["accepted"] == 20
                acknowledged += [f"wamid.{n}.{i}" for i in range(20)]
            else:
                assert status == 503 and "nothing was accepted" in answer["error"]
                refused += 1
            n += 1
            assert n < 2000, "the disk never filled"
        assert len(acknowledged) > 100
        assert daemon.status()["journal"]["writable"] is False

        assert post(daemon.url, batch(n))[0] == 503
        ballast.unlink()  # space freed
        # a few blocks may be needed before SQLite can write again: retried, not waited on a clock
        resumed = wait_for(lambda: post(daemon.url, batch(n + 1))[0] == 200, "intake resumed", timeout=60)
        assert resumed
        acknowledged += [f"wamid.{n + 1}.{i}" for i in range(20)]
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()
    with sqlite3.connect(small_disk / "journal.sqlite") as conn:
        stored = {row[0] for row in conn.execute("SELECT message_id FROM events")}
    assert set(acknowledged) <= stored
    assert cli(config, "journal", "check").returncode == 0
