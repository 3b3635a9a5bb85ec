"""The memory sink's test-only knobs: injected failures, refusals, a records cap, counters (its rows are held
to the real sinks' by tests/integration/test_sink_contract.py)."""

from datetime import UTC, datetime

import pytest

from daemon.events import StoredEvent, normalize
from daemon.records import iso
from daemon.sinks.base import PermanentError, RefusedError, SetupError, TransientError
from daemon.testing.fakes import MemorySink

RECEIVED = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def stored(i, contact="c1"):
    event = normalize(
        {
            "title": "incoming_message",
            "contact": {"id": contact},
            "date": 1_790_000_000 + i,
            "info": {"message": {"id": f"m{i}", "channel_data": {"message": {"text": {"body": "x"}}}}},
        },
        RECEIVED,
    )
    return StoredEvent(
        i,
        event.dedup_key,
        iso(event.received_at),
        iso(event.occurred_at),
        event.title,
        event.service,
        event.bot_id,
        event.contact_id,
        event.phone,
        event.contact_name,
        event.message_id,
        event.platform_message_id,
        event.direction,
        event.message_type,
        event.text,
        event.raw,
    )


async def test_injected_failures_come_one_per_delivery_and_are_counted():
    sink = MemorySink("postgres", 8)
    sink.failures = [TransientError("timeout"), PermanentError("bad")]
    with pytest.raises(TransientError):
        await sink.deliver([stored(1)])
    with pytest.raises(PermanentError):
        await sink.deliver([stored(1), stored(2)])
    assert await sink.deliver([stored(1)]) == 2  # a conversation and an interaction
    assert (sink.calls, sink.batch_sizes, sink.records) == (3, [1, 2, 1], 2)
    assert sink.accepted == {stored(1).dedup_key: 1}


@pytest.mark.parametrize("refusal", [PermanentError, RefusedError])
async def test_a_refused_event_fails_its_whole_batch_with_the_refusal_given(refusal):
    sink = MemorySink(refusal=refusal)
    sink.refused = {stored(2).dedup_key}
    with pytest.raises(refusal, match="m2"):
        await sink.deliver([stored(1), stored(2)])
    assert sink.records == 0 and not sink.tables.events and not sink.accepted
    assert await sink.deliver([stored(1)]) == 2


async def test_at_the_records_cap_a_batch_that_creates_is_refused_whole_and_one_that_updates_passes():
    sink = MemorySink("airtable", max_records=3)
    assert await sink.deliver([stored(1), stored(2)]) == 3
    with pytest.raises(RefusedError, match="BASE_RECORD_LIMIT_EXCEEDED"):
        await sink.deliver([stored(2), stored(3)])
    assert sink.records == 3 and stored(3).dedup_key not in sink.tables.events
    assert await sink.deliver([stored(1), stored(2)]) == 0
    sink.max_records = None
    assert await sink.deliver([stored(3)]) == 1


async def test_down_fails_deliver_and_check_with_the_error_given_and_a_closed_sink_is_not_used():
    sink = MemorySink()
    sink.down = SetupError("password authentication failed")
    for call in (sink.check(), sink.deliver([stored(1)])):
        with pytest.raises(SetupError):
            await call
    sink.down = None
    await sink.check()
    assert sink.checks == 2
    await sink.close()
    await sink.close()
    assert sink.closes == 2
    with pytest.raises(RuntimeError, match="after close"):
        await sink.deliver([stored(1)])
