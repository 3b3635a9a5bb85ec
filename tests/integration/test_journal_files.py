"""The journal's files on a real disk: owner-only modes whatever the umask."""

import json
import os
import stat
import subprocess
import sys

import pytest
from loguru import logger

from daemon.events import normalize
from daemon.journal import Journal
from tests.integration.test_journal import NOW


def message(i: int):
    return normalize({"title": "incoming_message", "info": {"message": {"id": f"m{i}"}},
                      "contact": {"id": f"c{i % 50}", "phone": "5511987654321"},
                      "text": "quero saber o status do meu pedido " * 3}, NOW)


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
    result = subprocess.run([sys.executable, "-c", MODES, str(path)], capture_output=True, text=True,
                            umask=umask, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {
        "journal.sqlite": "0o600", "journal.sqlite-wal": "0o600", "journal.sqlite-shm": "0o600",
        "journal.sqlite.lock": "0o600", "by-us": "0o700", "made": "0o700"}


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
