"""When [airtable] retention_days purges: daily, and soon when the base needs room, never back to back."""

from datetime import date

from daemon.sinks.airtable_retention import RetentionSchedule
from tests.support import HandClock

HOUR, DAY = 3600.0, 86400.0
D1, D2 = date(2026, 11, 3), date(2026, 11, 4)


def schedule():
    clock = HandClock()
    return RetentionSchedule(60.0, DAY, HOUR, clock), clock


def run(s, day, ok=True):
    s.started(day)
    s.finished(ok)


def test_a_first_run_a_minute_after_start_then_daily():
    s, clock = schedule()
    assert not s.due(False, D1)
    clock.now += 60
    assert s.due(False, D1)
    run(s, D1)
    clock.now += DAY - 1
    assert not s.due(False, D2)
    clock.now += 1
    assert s.due(False, D2)


def test_a_blocked_base_starts_a_run_at_once_even_before_the_first_one():
    s, _ = schedule()
    assert s.due(True, D1)


def test_pressure_that_appears_after_a_run_starts_another_but_not_within_the_hour():
    s, clock = schedule()
    clock.now += 60
    run(s, D1)
    clock.now += 10
    assert not s.due(True, D1)  # blocked ten seconds after a run: wait for the hour
    clock.now += HOUR - 10
    assert s.due(True, D1)  # the pressure is new since that run: once
    run(s, D1)
    clock.now += HOUR
    assert not s.due(True, D1)  # the same day's cutoff again would find nothing new
    clock.now += HOUR
    assert s.due(True, D2)  # the cutoff moved to another day: older records qualify now


def test_under_lasting_pressure_a_failed_run_is_tried_again_hourly():
    s, clock = schedule()
    assert s.due(True, D1)
    run(s, D1, ok=False)
    clock.now += HOUR - 1
    assert not s.due(True, D1)
    clock.now += 1
    assert s.due(True, D1)


def test_pressure_that_ends_and_comes_back_is_new_again():
    s, clock = schedule()
    assert s.due(True, D1)
    run(s, D1)
    clock.now += HOUR
    assert not s.due(True, D1)
    assert not s.due(False, D1)  # room made (retention, an operator)
    assert s.due(True, D1)  # full again
