"""`chatledger quarantine` as an operator runs it: the rejected elements listed with why, when and a preview,
one discarded through the running daemon and the rest in the journal itself, recorded, never deleted."""

import json
import re
import sqlite3

import pytest

from tests.support import Daemon, cli, incoming, post, write_config

pytestmark = pytest.mark.acceptance

# A body as SendPulse never sends one: a number, an object without a title (a newline inside it), an empty title.
LONG = '{"title": "", "text": "' + "y" * 400 + '"}'
BODY = (
    b"[" + json.dumps(incoming("wamid.ok")).encode() + b', 42, {"contact": {"phone": "+55 11 98888-7777"},\n'
    b'"note": "no title"}, ' + LONG.encode() + b"]"
)


def test_quarantined_elements_are_listed_and_discarded_with_the_daemon_running_and_stopped(tmp_path):
    config = write_config(tmp_path)
    daemon = Daemon(config).start()
    try:
        assert post(daemon.url, BODY)[1] == {"accepted": 1, "duplicates": 0, "rejected": 3}

        listed = cli(config, "quarantine")
        assert listed.returncode == 0, listed.stderr
        assert re.match(r"1 +\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", listed.stdout)  # its id, when it came
        assert "element is a number, not an object" in listed.stdout and "element has no title" in listed.stdout
        assert '"phone": "+55 11 98888-7777"},\\n"note"' in listed.stdout  # the newline escaped, on one line
        assert f"({len(LONG)} characters)" in listed.stdout and "y" * 200 not in listed.stdout  # cut
        assert "3 open quarantined elements" in listed.stdout
        assert "chatledger quarantine --discard ID|--all --reason TEXT" in listed.stdout

        as_json = json.loads(cli(config, "quarantine", "--json", "--limit", "2").stdout)
        assert (as_json["open"], as_json["discarded"]) == (3, 0)
        assert [(e["id"], e["raw"]) for e in as_json["elements"]] == [
            (1, "42"),
            (2, '{"contact": {"phone": "+55 11 98888-7777"},\n"note": "no title"}'),
        ]

        one = cli(config, "quarantine", "--discard", "1", "--reason", "a test by the integrator")
        assert one.returncode == 0, one.stderr
        assert "element 1 discarded" in one.stdout and "through the running daemon" in one.stdout
        status = daemon.status()["journal"]
        assert (status["quarantined"], status["quarantine_discarded"]) == (2, 1)
        assert "2 quarantined" in cli(config, "status").stdout

        again = cli(config, "quarantine", "--discard", "1", "--reason", "twice")
        assert again.returncode == 1 and "element 1 was already discarded" in again.stderr
        assert "by root" in again.stderr and "a test by the integrator" in again.stderr
        unknown = cli(config, "quarantine", "--discard", "99", "--reason", "typo")
        assert unknown.returncode == 1 and unknown.stdout == ""
        assert "no quarantined element 99" in unknown.stderr
        assert cli(config, "quarantine", "--discard", "2").returncode == 64  # --reason is required
        assert cli(config, "quarantine", "--discard", "two", "--reason", "x").returncode == 64
        assert [e["id"] for e in json.loads(cli(config, "quarantine", "--json").stdout)["elements"]] == [2, 3]
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()

    # no daemon: listed from the journal read-only, discarded in it under its lock
    offline = cli(config, "quarantine")
    assert offline.returncode == 0 and "2 open quarantined elements" in offline.stdout
    rest = cli(config, "quarantine", "--discard", "--all", "--reason", "looked at: nothing to deliver")
    assert rest.returncode == 0, rest.stderr
    assert "2 elements discarded" in rest.stdout and "daemon not running" in rest.stdout
    assert cli(config, "quarantine").stdout.startswith("no open quarantined elements")
    nothing = cli(config, "quarantine", "--discard", "--all", "--reason", "again")
    assert nothing.returncode == 1 and "no open quarantined elements to discard" in nothing.stderr
    kept = json.loads(cli(config, "quarantine", "--discarded", "--json").stdout)["elements"]
    assert [(k["id"], k["discarded_by"], k["discard_reason"]) for k in kept] == [
        (1, "root", "a test by the integrator"),
        (2, "root", "looked at: nothing to deliver"),
        (3, "root", "looked at: nothing to deliver"),
    ]
    readable = cli(config, "quarantine", "--discarded").stdout
    assert "discarded" in readable and "by root" in readable and "reason: a test by the integrator" in readable
    with sqlite3.connect(tmp_path / "state" / "journal.sqlite") as journal:
        assert journal.execute("SELECT count(*) FROM quarantine").fetchone() == (3,)  # recorded, never deleted
    journal.close()
