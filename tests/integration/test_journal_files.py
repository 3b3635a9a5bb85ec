"""The journal's files on a real disk: damage found at open, a lost journal refused, owner-only modes."""

import json
import os
import sqlite3
import stat
import subprocess
import sys

import pytest
from loguru import logger

import daemon.journal.files as journal_files
from daemon.events import normalize
from daemon.journal import Journal, JournalError
from tests.damage import first_leaf, flip
from tests.integration.test_journal import NOW


def message(i: int):
    return normalize(
        {
            "title": "incoming_message",
            "info": {"message": {"id": f"m{i}"}},
            "contact": {"id": f"c{i % 50}", "phone": "5511987654321"},
            "text": "quero saber o status do meu pedido " * 3,
        },
        NOW,
    )


async def filled(path, count=3000):
    journal = await Journal.open(path, ["postgres"])
    try:
        for start in range(0, count, 1000):
            await journal.append([message(i) for i in range(start, min(count, start + 1000))])
    finally:
        await journal.close()
    return path


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def siblings(path):
    return {suffix: path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", ".lock")}


@pytest.fixture
def warnings():
    lines: list[str] = []
    handler = logger.add(lambda m: lines.append(str(m)), level="WARNING")
    yield lines
    logger.remove(handler)


async def test_damage_where_start_reads_nothing_is_found_and_refused(tmp_path):
    path = await filled(tmp_path / "j" / "journal.sqlite")
    flip(path, [first_leaf(path, "events")])  # the oldest events: nothing else at start reads them
    with pytest.raises(JournalError) as caught:
        await Journal.open(path, ["postgres"])
    message_text = str(caught.value)
    assert f"journal {path} is damaged" in message_text
    for step in (
        "stop chatledger",
        f"mv {path} {path}.damaged",
        f'sqlite3 {path}.damaged ".recover" | sqlite3 {path}',
        "chatledger journal check --repair",
        "When the journal is damaged",
    ):
        assert step in message_text
    with pytest.raises(JournalError, match="is damaged"):  # the lock was let go, the file left as it was
        await Journal.open(path, ["postgres"])


async def test_a_check_out_of_time_warns_and_opens(tmp_path, monkeypatch, warnings):
    path = await filled(tmp_path / "journal.sqlite")
    monkeypatch.setattr(journal_files, "QUICK_CHECK_SECONDS", 0.0)
    journal = await Journal.open(path, ["postgres"])
    try:
        assert (await journal.counts())["events"] == 3000
    finally:
        await journal.close()
    assert any("integrity check stopped after" in line and "chatledger journal check" in line for line in warnings)


async def test_an_emptied_journal_is_refused_when_its_lock_file_knows_better(tmp_path):
    path = await filled(tmp_path / "journal.sqlite", 10)
    path.write_bytes(b"")
    with pytest.raises(JournalError) as caught:
        await Journal.open(path, ["postgres"])
    text = str(caught.value)
    assert f"journal {path} is empty (0 bytes), but its lock file {path}.lock shows" in text
    assert f"remove {path} and {path}.lock" in text
    assert path.stat().st_size == 0  # not re-created empty
    path.unlink()
    siblings(path)[".lock"].unlink()  # starting afresh deliberately, as the message says
    journal = await Journal.open(path, ["postgres"])
    try:
        assert (await journal.counts())["events"] == 0
    finally:
        await journal.close()


async def test_a_vanished_journal_is_refused_too(tmp_path):
    path = await filled(tmp_path / "journal.sqlite", 10)
    path.unlink()
    with pytest.raises(JournalError, match=rf"journal {path} is missing, but its lock file"):
        await Journal.open(path, ["postgres"])
    assert not path.exists()


async def test_a_new_journal_is_recorded_in_its_lock_file_after_its_first_migration(tmp_path):
    path = tmp_path / "journal.sqlite"
    journal = await Journal.open(path, [])
    await journal.close()
    pid, initialised = siblings(path)[".lock"].read_text().splitlines()
    assert pid == str(os.getpid()) and initialised.startswith("initialised ")
    journal = await Journal.open(path, [])  # and the next open keeps it
    await journal.close()
    assert siblings(path)[".lock"].read_text().splitlines()[1] == initialised


async def test_a_crash_before_the_first_migration_does_not_block_the_next_start(tmp_path):
    path = tmp_path / "journal.sqlite"
    crash = (
        "import asyncio, os, sys\nfrom pathlib import Path\nimport daemon.journal as j, daemon.journal.schema as s\n"
        "async def die(*args):\n    os._exit(9)\ns.migrate = die\n"
        "asyncio.run(j.Journal.open(Path(sys.argv[1]), []))\n"
    )
    assert subprocess.run([sys.executable, "-c", crash, str(path)]).returncode == 9
    assert path.exists() and siblings(path)[".lock"].exists()
    journal = await Journal.open(path, ["postgres"])
    try:
        await journal.append([message(1)])
    finally:
        await journal.close()


async def test_a_lock_file_from_before_the_record_does_not_block_an_existing_journal(tmp_path):
    path = await filled(tmp_path / "journal.sqlite", 10)
    siblings(path)[".lock"].write_text("12345\n")  # what earlier versions wrote
    journal = await Journal.open(path, ["postgres"])
    try:
        assert (await journal.counts())["events"] == 10
    finally:
        await journal.close()
    assert siblings(path)[".lock"].read_text().splitlines()[1].startswith("initialised ")


MODES = """
import asyncio, json, os, stat, sys
from pathlib import Path
from daemon.journal import Journal
from tests.integration.test_journal_files import message

async def main(path):
    journal = await Journal.open(path, ["postgres"])
    try:
        await journal.append([message(1)])
        files = [path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", ".lock")), path.parent,
                 path.parent.parent]
        print(json.dumps({f.name: oct(stat.S_IMODE(os.stat(f).st_mode)) for f in files}))
    finally:
        await journal.close()

asyncio.run(main(Path(sys.argv[1])))
"""


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_journal_files_are_owner_only_whatever_the_umask(tmp_path, umask):
    path = tmp_path / "made" / "by-us" / "journal.sqlite"
    result = subprocess.run(
        [sys.executable, "-c", MODES, str(path)],
        capture_output=True,
        text=True,
        umask=umask,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {
        "journal.sqlite": "0o600",
        "journal.sqlite-wal": "0o600",
        "journal.sqlite-shm": "0o600",
        "journal.sqlite.lock": "0o600",
        "by-us": "0o750",
        "made": "0o750",
    }


async def test_loose_modes_of_existing_journal_files_are_tightened(tmp_path, warnings):
    path = await filled(tmp_path / "journal.sqlite", 10)
    loose = [path, *siblings(path).values()]
    for file in loose:
        file.touch()  # an empty -wal and -shm, as a crash can leave them
        os.chmod(file, 0o644)
    journal = await Journal.open(path, ["postgres"])
    try:
        assert {file.name: mode(file) for file in loose} == {file.name: 0o600 for file in loose}
        assert (await journal.counts())["events"] == 10
    finally:
        await journal.close()
    assert sum("was mode 644, now 600" in line for line in warnings) == 4


async def test_tables_without_a_schema_version_are_refused_untouched(tmp_path):
    path = await filled(tmp_path / "journal.sqlite", 10)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 0")  # what a restore through .dump leaves
    with pytest.raises(JournalError, match=r"chatledger's tables but no schema version .*PRAGMA user_version = N"):
        await Journal.open(path, ["postgres"])
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 10
