"""Journal retention: only old events that every enabled sink holds are purged; nothing pending or dead."""

from datetime import UTC, datetime, timedelta

from daemon.events import normalize
from daemon.journal import Journal
from daemon.records import conversation_id_for
from tests.support import incoming

OLD = datetime(2026, 9, 1, tzinfo=UTC)
NEW = datetime(2026, 11, 25, tzinfo=UTC)
CUTOFF = datetime(2026, 10, 26, tzinfo=UTC)


async def ids_by_message(journal):
    rows = await journal.query("SELECT message_id, id FROM events")
    return dict(rows)


async def test_only_old_events_every_sink_holds_are_purged(tmp_path):
    journal = await Journal.open(tmp_path / "j.sqlite", ["postgres", "airtable"])
    try:
        await journal.append([normalize(incoming(f"old{i}"), OLD) for i in range(6)])
        await journal.append([normalize(incoming(f"new{i}"), NEW) for i in range(2)])
        ids = await ids_by_message(journal)
        for sink in ("postgres", "airtable"):
            await journal.mark_delivered(sink, [ids["old0"], ids["old1"], ids["old2"], ids["new0"], ids["new1"]])
        await journal.mark_delivered("postgres", [ids["old3"]])  # airtable still pending
        await journal.mark_delivered("postgres", [ids["old4"]])
        await journal.mark_dead("airtable", ids["old4"], "refused")  # dead for airtable
        # old5: pending everywhere
        before = await journal.conversations([conversation_id_for("bot1", "c1", None)])

        assert await journal.purge(CUTOFF, ["postgres", "airtable"], limit=2) == 2  # small batches
        assert await journal.purge(CUTOFF, ["postgres", "airtable"], limit=2) == 1
        assert await journal.purge(CUTOFF, ["postgres", "airtable"], limit=2) == 0
        left = await ids_by_message(journal)
        assert sorted(left) == ["new0", "new1", "old3", "old4", "old5"]
        states = await journal.query("SELECT count(*) FROM deliveries WHERE event_id NOT IN (SELECT id FROM events)")
        assert states == [(0,)]  # their delivery rows went with them
        # the journal's record of the conversation keeps counting what was purged
        after = await journal.conversations(list(before))
        assert [c.message_count for c in after.values()] == [c.message_count for c in before.values()] == [8]
        assert await journal.purge(NEW + timedelta(days=1), [], limit=100) == 0  # journal only: never
    finally:
        await journal.close()
