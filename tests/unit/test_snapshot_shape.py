"""`chatledger status --json` is a public contract: the daemon's snapshot keeps its keys, in their order."""

import json

from daemon.app import Daemon
from daemon.config import load_config
from daemon.journal import Journal
from tests.support import until

FAIL_BOUND = 30.0


class QuietSink:
    """A sink that answers, with nothing to deliver."""

    name = "postgres"
    batch_size = 8

    async def deliver(self, events):
        raise AssertionError("nothing was journaled")

    async def check(self):
        pass

    async def close(self):
        pass


async def _up(daemon):
    return daemon.workers["postgres"].state == "up"


def shape(value):
    """The keys of every mapping, in order, down to the values (a sink's, the sources')."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    return type(value).__name__


async def test_the_snapshot_keeps_its_keys_in_their_order(tmp_path):
    path = tmp_path / "chatledger.toml"
    path.write_text(
        '[server]\nlisten = "127.0.0.1:0"\nwebhook_token = "shape-token-0123456789abcdef"\n'
        '[journal]\npath = "journal.sqlite"\n[status]\nsocket = "status.sock"\n'
        '[postgres]\ndsn = "postgresql://ledger@127.0.0.1:1/ledger"\n'
    )
    daemon = Daemon(load_config(path, {}), path)
    daemon.journal = await Journal.open(tmp_path / "journal.sqlite", ["postgres"])
    try:
        daemon.workers.start(daemon.journal, QuietSink())
        [task] = daemon.workers.tasks
        await until(lambda: _up(daemon), task, "the sink up", FAIL_BOUND)
        snapshot = json.loads(json.dumps(await daemon.snapshot()))
        await daemon.workers.stop()
    finally:
        await daemon.journal.close()
    sink = {
        "state": "str",
        "pending": "int",
        "delivered": "int",
        "dead": "int",
        "dead_last_at": "NoneType",
        "discarded": "int",
        "oldest_pending_at": "NoneType",
        "oldest_pending_age_s": "NoneType",
        "backfill": "NoneType",
    }
    expected = {
        "version": "str",
        "pid": "int",
        "started_at": "str",
        "uptime_s": "float",
        "journal": {
            "path": "str",
            "events": "int",
            "quarantined": "int",
            "quarantine_discarded": "int",
            "writable": "bool",
            "writer_alive": "bool",
            "commits": "int",
            "committed_events": "int",
            "commit_failures": "int",
            "commit_seconds": {"buckets": "list", "over": "int", "sum": "float"},
            "last_error": "NoneType",
            "read_error": "NoneType",
            "retention_days": "int",
            "purged_since_start": "int",
        },
        "sinks": {
            "postgres": {
                **sink,
                "last_error": "NoneType",
                "last_error_at": "NoneType",
                "last_delivery_at": "NoneType",
                "consecutive_failures": "int",
                "delivered_since_start": "int",
                "dead_since_start": "int",
                "failed_attempts_since_start": "int",
            },
            "airtable": sink,
        },
        "webhook": {"accepted": "int", "duplicates": "int", "rejected": "int"},
        "alerts": {"enabled": "bool", "sent": "int", "failed": "int"},
        "sources": {"sendpulse": {"state": "str"}},
        "health": {"status": "str", "problems": "list"},
    }
    assert shape(snapshot) == expected
    assert json.dumps(shape(snapshot)) == json.dumps(expected)  # in their order too
