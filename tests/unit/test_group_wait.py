"""How long a group commit waits for company: sized by the traffic, never for a lone request at a quiet time."""

import pytest

from daemon.journal.writer import GROUP_TARGET, GROUP_WAIT_SECONDS, ArrivalRate, group_wait


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_lone_request_at_a_quiet_time_does_not_wait():
    clock = Clock()
    rate = ArrivalRate(clock)
    clock.now += 30.0  # the last webhook came half a minute ago
    assert group_wait(1, rate.took(1)) == 0.0


def test_a_group_with_enough_events_does_not_wait():
    assert group_wait(GROUP_TARGET, 1e6) == 0.0
    assert group_wait(GROUP_TARGET + 40, 5000.0) == 0.0


@pytest.mark.parametrize(
    ("events", "per_second", "wait"),
    [
        (1, 2000.0, GROUP_WAIT_SECONDS),  # nine more would take 4.5 ms: the cap
        (5, 5000.0, 0.001),  # five more in 1 ms
        (9, 2000.0, 0.0005),
        (1, 400.0, GROUP_WAIT_SECONDS),  # about one more within the cap: worth the wait
    ],
)
def test_a_short_group_waits_what_the_rate_needs_within_the_cap(events, per_second, wait):
    assert group_wait(events, per_second) == pytest.approx(wait)


def test_no_wait_when_not_even_one_more_event_is_due_within_the_cap():
    assert group_wait(1, 0.9 / GROUP_WAIT_SECONDS) == 0.0


def test_the_rate_follows_the_traffic_up_and_back_down():
    clock = Clock()
    rate = ArrivalRate(clock)
    for _ in range(30):  # 2,000 events/s, taken in groups of 10 every 5 ms
        clock.now += 0.005
        busy = rate.took(10)
    assert busy == pytest.approx(2000.0, rel=0.01)
    assert group_wait(1, busy) == GROUP_WAIT_SECONDS
    waits = []
    for _ in range(20):  # then one webhook a second
        clock.now += 1.0
        waits.append(group_wait(1, rate.took(1)))
    assert waits[-1] == 0.0  # quiet again: a lone request goes at once
    assert waits.index(0.0) <= 12  # within a dozen webhooks of the burst's end
    assert all(wait == 0.0 for wait in waits[waits.index(0.0) :])
