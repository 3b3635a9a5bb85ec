"""The SQLite journal: events, per-sink delivery state, quarantine; one writer with group commit.

- schema.py         the migrations, frozen as the text each release shipped, and their runner
- files.py          the files on disk: modes, the lock, SQLite's settings, the integrity check at open
- writer.py         the group-commit writer: queue, batch, commit (one fsync for many requests)
- intake.py         what intake writes inside a commit: events, quarantined elements, duplicates
- store.py          `Journal`, the facade the daemon uses, made of the parts below
- deliveries.py     per-sink delivery state: pending, delivered, dead, discarded; replay, purge
- conversations.py  the conversation read model (shared with JournalReader)
- erasure.py        `forget` and its audit
- readers.py        offline readers: JournalReader, dead letters, `journal check`

A test that changes the schema's version patches daemon.journal.schema, not the names re-exported here.
"""

from daemon.journal.deliveries import Discard, Requeue
from daemon.journal.erasure import reference_problem
from daemon.journal.errors import JournalError, JournalUnavailable
from daemon.journal.readers import JournalReader, JournalReport, check_journal, read_dead_letters, read_only
from daemon.journal.schema import MIGRATIONS, SCHEMA_VERSION
from daemon.journal.store import COUNT_QUARANTINE, QUARANTINE_COUNTS, Journal
from daemon.journal.writer import COMMIT_BUCKETS, AppendResult, CommitStats

__all__ = [
    "COMMIT_BUCKETS",
    "COUNT_QUARANTINE",
    "MIGRATIONS",
    "QUARANTINE_COUNTS",
    "SCHEMA_VERSION",
    "AppendResult",
    "CommitStats",
    "Discard",
    "Journal",
    "JournalError",
    "JournalReader",
    "JournalReport",
    "JournalUnavailable",
    "Requeue",
    "check_journal",
    "read_dead_letters",
    "read_only",
    "reference_problem",
]
