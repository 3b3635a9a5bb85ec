"""The base's write plan kept for readers (the bot API): read once, reused while recent and for the same names."""

from daemon.sinks.airtable_client import PLAN_MAX_AGE, PlanCache
from daemon.sinks.airtable_schema import BaseNames, parse_field_mapping, plan_base
from tests.support import HandClock

NAMES = {"conversations": "Conversations", "interactions": "Interactions", "escalations": "Escalations"}


async def test_a_plan_is_read_once_then_reused_until_it_is_old_or_the_names_change():
    clock, reads = HandClock(), []

    async def read():
        reads.append(clock.now)
        return plan_base(None, NAMES)

    cache = PlanCache(clock=clock)
    first = await cache.get(BaseNames(NAMES), read)
    clock.now += PLAN_MAX_AGE - 1
    assert await cache.get(NAMES, read) is first and len(reads) == 1
    clock.now += 1
    assert await cache.get(NAMES, read) is not first and len(reads) == 2
    renamed = BaseNames(NAMES, parse_field_mapping({"Interactions.Content": "Message"}))
    await cache.get(renamed, read)
    assert len(reads) == 3  # [airtable.fields] changed (SIGHUP): the old plan names other fields


async def test_a_plan_someone_else_read_is_reused():
    clock, reads = HandClock(), []

    async def read():
        reads.append(clock.now)
        return plan_base(None, NAMES)

    cache = PlanCache(clock=clock)
    theirs = plan_base(None, NAMES)
    cache.remember(BaseNames(NAMES), theirs)  # the sink's check, `airtable check`, a recover
    assert await cache.get(NAMES, read) is theirs and reads == []
