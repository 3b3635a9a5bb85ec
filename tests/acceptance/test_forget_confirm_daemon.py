"""`forget --dry-run` and the question `forget` asks on a terminal, as an operator meets them: the installed
command on a real pseudo-terminal, the daemon running with PostgreSQL."""

import asyncio
import os
import pty
import select
import sqlite3
import subprocess
import time

import asyncpg
import pytest

from tests.support import Daemon, _env, chatledger_bin, cli, incoming, post, wait_for, write_config

pytestmark = pytest.mark.acceptance

ANA, BIA = "+55 11 90000-0001", "+55 11 90000-0002"


class Terminal:
    """The command with its stdin, stdout and stderr on a pseudo-terminal, as typed at a shell."""

    def __init__(self, config, *args):
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(
            [chatledger_bin(), *args, "--config", str(config)],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=_env(None),
            close_fds=True,
        )
        os.close(slave)
        self.seen = b""

    def read_until(self, text, timeout=120.0):
        """What it printed, once `text` has appeared (the timeout only bounds a failure)."""
        deadline = time.monotonic() + timeout
        while text.encode() not in self.seen:
            assert time.monotonic() < deadline, f"{text!r} never came: {self.seen.decode(errors='replace')}"
            if select.select([self.master], [], [], 0.5)[0]:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # EIO: the command ended and closed the terminal
                    chunk = b""
                if not chunk:
                    assert text.encode() in self.seen, f"{text!r} never came: {self.seen.decode(errors='replace')}"
                self.seen += chunk
        return self.seen.decode(errors="replace")

    def type(self, line):
        os.write(self.master, line.encode() + b"\n")

    def finish(self, timeout=120.0):
        """The exit code, and everything it printed."""
        code = self.process.wait(timeout=timeout)
        while select.select([self.master], [], [], 0.1)[0]:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                break
            if not chunk:
                break
            self.seen += chunk
        os.close(self.master)
        return code, self.seen.decode(errors="replace")


def pg_count(dsn, schema, phone):
    async def run():
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(f'SELECT count(*) FROM "{schema}".interactions WHERE customer_phone = $1', phone)
        finally:
            await conn.close()

    return asyncio.run(run())


def audit_entries(tmp_path):
    with sqlite3.connect(tmp_path / "state" / "journal.sqlite") as journal:
        entries = journal.execute("SELECT last4 FROM audit ORDER BY id").fetchall()
    journal.close()
    return [last4 for (last4,) in entries]


def test_a_dry_run_and_the_question_on_a_terminal_erase_nothing_until_the_operator_says_yes(
    tmp_path, pg_cluster, pg_schema
):
    dsn = pg_cluster.dsn()
    config = write_config(tmp_path, extra=f'[postgres]\ndsn = "{dsn}"\nschema = "{pg_schema}"\n')
    daemon = Daemon(config).start()
    try:
        body = (
            [incoming(f"wamid.a{i}", phone=ANA, contact="ana") for i in range(5)]
            + [incoming(f"wamid.b{i}", phone=BIA, contact="bia") for i in range(3)]
            + [{"no": "title", "from": ANA}]
        )
        assert post(daemon.url, body)[1] == {"accepted": 8, "duplicates": 0, "rejected": 1}
        wait_for(lambda: daemon.status()["sinks"]["postgres"]["delivered"] == 8, "delivered to PostgreSQL")

        dry = cli(config, "forget", "--phone", ANA, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "dry run: nothing was erased" in dry.stdout
        assert "journal   5 events, 1 conversations, 1 quarantined" in dry.stdout
        assert "postgres  1 conversations, 5 interactions, 0 escalations, 5 events" in dry.stdout
        assert "airtable  not configured" in dry.stdout and "0001" in dry.stdout and "90000-0001" not in dry.stdout
        assert '"dry_run": true' in cli(config, "forget", "--phone", ANA, "--dry-run", "--json").stdout
        assert pg_count(dsn, pg_schema, "5511900000001") == 5 and audit_entries(tmp_path) == []
        assert daemon.status()["journal"]["events"] == 8

        # on a terminal it asks first; anything but y or yes erases nothing
        terminal = Terminal(config, "forget", "--phone", ANA)
        question = terminal.read_until("erase? [y/N]")
        assert "journal   5 events, 1 conversations, 1 quarantined" in question
        assert "postgres  1 conversations, 5 interactions" in question
        terminal.type("n")
        code, said = terminal.finish()
        assert code == 1 and "aborted: nothing was erased" in said
        assert pg_count(dsn, pg_schema, "5511900000001") == 5 and audit_entries(tmp_path) == []
        assert daemon.status()["journal"]["events"] == 8

        terminal = Terminal(config, "forget", "--phone", ANA, "--reference", "LGPD-9")
        terminal.read_until("erase? [y/N]")
        terminal.type("y")
        code, said = terminal.finish()
        assert code == 0, said
        assert "forgot phone ...0001" in said and "postgres  1 conversations, 5 interactions" in said
        assert pg_count(dsn, pg_schema, "5511900000001") == 0 and audit_entries(tmp_path) == ["0001"]
        assert daemon.status()["journal"]["events"] == 3

        # --json on a terminal (a report kept) is asked too, the question on stderr, the JSON alone on stdout
        terminal = Terminal(config, "forget", "--phone", BIA, "--json")
        terminal.read_until("erase? [y/N]")
        terminal.type("n")
        code, said = terminal.finish()
        assert code == 1 and "aborted: nothing was erased" in said
        assert pg_count(dsn, pg_schema, "5511900000002") == 3

        # --yes: no question, on a terminal too
        terminal = Terminal(config, "forget", "--phone", BIA, "--yes")
        code, said = terminal.finish()
        assert code == 0 and "erase?" not in said and "forgot phone ...0002" in said, said
        assert pg_count(dsn, pg_schema, "5511900000002") == 0 and audit_entries(tmp_path) == ["0001", "0002"]
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()
