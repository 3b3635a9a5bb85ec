"""Recoveries pass the limiter at once; what the operator was told outlives a restart (AlertMemory): open
problems resolve after it, dead letters are told once. On a fake clock."""

from loguru import logger

from daemon.alerts import Alert, AlertLimiter, AlertMemory, AlertRules, AlertSender
from tests.support import HandClock
from tests.unit.test_alerts import kinds, snap


def restarted(memory):
    """A new process: rules, limiter and memory built from what the journal kept."""
    kept = AlertMemory.loads(memory.dumps())
    return AlertRules(600, kept), AlertLimiter(300, HandClock(0.0), kept), kept


def test_a_sink_coming_back_is_told_at_once_not_after_the_interval():
    clock = HandClock(0.0)
    memory = AlertMemory()
    rules, limiter = AlertRules(600, memory), AlertLimiter(300, clock, memory)
    limiter.admit(rules.evaluate(snap({}, {})))
    assert kinds(limiter.admit(rules.evaluate(snap({"state": "down"}, {})))) == [
        ("sink_down", "postgres"),
        ("fallback_active", None),
    ]
    clock.now = 10
    back = limiter.admit(rules.evaluate(snap({}, {})))
    assert kinds(back) == [("sink_up", "postgres"), ("fallback_ended", None)]
    assert {a.severity for a in back} == {"info"}
    assert memory.open == {}


def test_a_problem_held_by_the_limiter_and_over_before_it_was_told_says_nothing():
    clock = HandClock(0.0)
    memory = AlertMemory()
    rules, limiter = AlertRules(600, memory), AlertLimiter(300, clock, memory)
    limiter.admit(rules.evaluate(snap({}, {})))
    limiter.admit(rules.evaluate(snap({}, {"state": "down"})))  # told at 0
    clock.now = 10
    assert kinds(limiter.admit(rules.evaluate(snap({}, {})))) == [("sink_up", "airtable")]
    clock.now = 20
    assert limiter.admit(rules.evaluate(snap({}, {"state": "down"}))) == []  # too soon: held
    clock.now = 30
    assert limiter.admit(rules.evaluate(snap({}, {}))) == []  # over before it was told: no "up" either
    clock.now = 400
    assert limiter.admit([]) == []  # and the held "down" is gone, not sent late while the sink is up
    clock.now = 410
    assert kinds(limiter.admit(rules.evaluate(snap({}, {"state": "down"})))) == [("sink_down", "airtable")]


def test_recoveries_are_logged_at_info_problems_at_warning():
    lines = []
    handler = logger.add(lambda m: lines.append((m.record["level"].name, m.record["message"])), level="DEBUG")
    try:
        sender = AlertSender("", "")
        sender.submit(Alert("sink_down", "critical", "postgres is down", "postgres"))
        sender.submit(Alert("sink_up", "info", "postgres is up again", "postgres"))
    finally:
        logger.remove(handler)
    assert lines == [("WARNING", "alert sink_down: postgres is down"), ("INFO", "alert sink_up: postgres is up again")]


def test_a_sink_down_before_a_restart_is_resolved_once_its_state_is_known():
    memory = AlertMemory()
    rules, limiter = AlertRules(600, memory), AlertLimiter(300, HandClock(0.0), memory)
    limiter.admit(rules.evaluate(snap({}, {})))
    limiter.admit(rules.evaluate(snap({"state": "down", "last_error": "refused"}, {})))
    assert memory.dirty and set(memory.open) == {("sink_state", "postgres"), ("fallback", None)}

    rules, limiter, kept = restarted(memory)
    assert limiter.admit(rules.evaluate(snap({"state": "starting"}, {"state": "starting"}))) == []  # not known yet
    assert limiter.admit(rules.evaluate(snap({"state": "down"}, {}))) == []  # still down: not told again
    back = limiter.admit(rules.evaluate(snap({}, {})))
    assert kinds(back) == [("sink_up", "postgres"), ("fallback_ended", None)]
    assert kept.open == {} and kept.dirty

    rules, limiter, _ = restarted(kept)
    assert limiter.admit(rules.evaluate(snap({}, {}))) == []  # resolved before this restart: nothing


def test_a_sink_down_before_a_restart_that_is_up_after_it_is_resolved_at_the_first_known_state():
    memory = AlertMemory()
    rules, limiter = AlertRules(600, memory), AlertLimiter(300, HandClock(0.0), memory)
    limiter.admit(rules.evaluate(snap({}, {"state": "blocked", "last_error": "cap"})))  # true at start: told
    rules, limiter, kept = restarted(memory)
    assert kinds(limiter.admit(rules.evaluate(snap({}, {})))) == [("sink_up", "airtable")]
    assert kept.open == {}


def test_a_sink_no_longer_enabled_after_a_restart_closes_its_alerts():
    memory = AlertMemory()
    rules, limiter = AlertRules(600, memory), AlertLimiter(300, HandClock(0.0), memory)
    limiter.admit(rules.evaluate(snap({}, {"state": "down", "oldest_pending_age_s": 900})))
    assert set(memory.open) == {("sink_state", "airtable"), ("backlog_old", "airtable")}
    rules, limiter, kept = restarted(memory)
    gone = limiter.admit(rules.evaluate({"sinks": {**snap({})["sinks"], "airtable": {"state": "disabled"}}}))
    assert kinds(gone) == [("sink_up", "airtable"), ("backlog_cleared", "airtable")]
    assert "no longer enabled" in gone[0].message and kept.open == {}


def test_quota_and_an_old_backlog_end_with_a_recovery_and_are_not_repeated_after_a_restart():
    memory = AlertMemory()
    clock = HandClock(0.0)
    rules, limiter = AlertRules(600, memory), AlertLimiter(300, clock, memory)
    quota = {"state": "quota", "pause_reason": "monthly API quota exhausted", "oldest_pending_age_s": 700}
    assert kinds(limiter.admit(rules.evaluate(snap({}, quota)))) == [
        ("backlog_old", "airtable"),
        ("quota_exhausted", "airtable"),
    ]
    rules, limiter, kept = restarted(memory)
    assert limiter.admit(rules.evaluate(snap({}, {"state": "starting", "oldest_pending_age_s": 800}))) == []
    assert limiter.admit(rules.evaluate(snap({}, quota))) == []  # still true: told before the restart
    ended = limiter.admit(rules.evaluate(snap({}, {"oldest_pending_age_s": 5})))
    assert kinds(ended) == [("backlog_cleared", "airtable"), ("quota_ended", "airtable")]
    assert {a.severity for a in ended} == {"info"} and kept.open == {}


def test_each_dead_letter_is_told_once_even_across_restarts():
    memory = AlertMemory()
    clock = HandClock(0.0)
    rules, limiter = AlertRules(600, memory), AlertLimiter(300, clock, memory)
    first = {"dead": 1, "dead_last_at": "2026-11-25T12:00:00.000Z"}
    [told] = limiter.admit(rules.evaluate(snap(first, {})))
    assert told.kind == "dead_letters" and told.details["dead_last_at"] == first["dead_last_at"]
    assert "chatledger dead" in told.message
    assert limiter.admit(rules.evaluate(snap(first, {}))) == []
    assert memory.dead_told == {"postgres": first["dead_last_at"]}

    rules, limiter, kept = restarted(memory)
    assert limiter.admit(rules.evaluate(snap(first, {}))) == []  # the same dead letter after a restart
    discarded = {"dead": 0, "dead_last_at": None}
    assert limiter.admit(rules.evaluate(snap(discarded, {}))) == []
    second = {"dead": 1, "dead_last_at": "2026-11-25T13:00:00.000Z"}  # a new one (or one that died again)
    assert kinds(limiter.admit(rules.evaluate(snap(second, {})))) == [("dead_letters", "postgres")]
    assert kept.dead_told == {"postgres": second["dead_last_at"]}


def test_a_dead_letter_held_by_the_limiter_is_not_remembered_as_told():
    memory = AlertMemory()
    clock = HandClock(0.0)
    rules, limiter = AlertRules(600, memory), AlertLimiter(300, clock, memory)
    limiter.admit(rules.evaluate(snap({"dead": 1, "dead_last_at": "2026-11-25T12:00:00.000Z"}, {})))
    clock.now = 10
    later = {"dead": 2, "dead_last_at": "2026-11-25T12:00:10.000Z"}
    assert limiter.admit(rules.evaluate(snap(later, {}))) == []  # held
    assert memory.dead_told == {"postgres": "2026-11-25T12:00:00.000Z"}
    rules, limiter, _ = restarted(memory)  # stopped while it was held: told after the restart
    assert kinds(limiter.admit(rules.evaluate(snap(later, {})))) == [("dead_letters", "postgres")]


def test_memory_that_cannot_be_read_starts_empty():
    for text in (None, "", "not json", "[1, 2]", '{"open": "x"}', '{"open": [{"kind": 3}]}'):
        memory = AlertMemory.loads(text)
        assert memory.open == {} and memory.dead_told == {}


def test_a_recovery_goes_out_when_its_problem_was_told_even_if_a_repeat_of_it_is_held():
    clock = HandClock(0.0)
    limiter = AlertLimiter(300, clock)
    down = Alert("sink_down", "critical", "airtable is blocked", "airtable", {"state": "blocked"})
    assert limiter.admit([down]) == [down]
    clock.now = 10
    assert limiter.admit([down]) == []  # told again too soon: held
    clock.now = 20
    assert kinds(limiter.admit([Alert("sink_up", "info", "airtable is up again", "airtable")])) == [
        ("sink_up", "airtable")
    ]
    clock.now = 400
    assert limiter.admit([]) == []  # the held repeat is gone with it


REFUSED = "SendPulse refused the credentials of [sendpulse] client_id 'abc' (401: invalid_client)"


def sendpulse(state, **more):
    return {"sinks": {}, "sources": {"sendpulse": {"state": state, **more}}}


def test_sendpulse_misconfigured_is_told_once_a_spell_and_its_end_at_once():
    clock = HandClock(0.0)
    memory = AlertMemory()
    rules, limiter = AlertRules(600, memory), AlertLimiter(300, clock, memory)
    assert limiter.admit(rules.evaluate(sendpulse("starting"))) == []
    [told] = limiter.admit(rules.evaluate(sendpulse("misconfigured", last_error=REFUSED, failed_in_a_row=1)))
    assert (told.kind, told.severity, told.sink) == ("source_misconfigured", "critical", None)
    assert REFUSED in told.message and "[sendpulse] client_id, client_secret and bot_ids" in told.message
    assert told.details == {
        "source": "sendpulse",
        "state": "misconfigured",
        "last_error": REFUSED,
        "failed_in_a_row": 1,
    }
    clock.now = 400
    for runs in (2, 3):
        assert limiter.admit(rules.evaluate(sendpulse("misconfigured", last_error=REFUSED, failed_in_a_row=runs))) == []
    clock.now = 410
    [back] = limiter.admit(rules.evaluate(sendpulse("up")))
    assert (back.kind, back.severity, back.details["source"]) == ("source_up", "info", "sendpulse")
    assert memory.open == {}


def test_sendpulse_down_is_told_once_it_lasted_and_a_misconfiguration_during_it_is_told_too():
    rules = AlertRules(600)
    rules.evaluate(sendpulse("up"))
    assert rules.evaluate(sendpulse("down", failed_in_a_row=1, last_error="503")) == []  # a blip, retried whole
    assert rules.evaluate(sendpulse("up")) == []  # and over before it counted: nothing to recover from
    assert rules.evaluate(sendpulse("down", failed_in_a_row=1)) == []
    [down] = rules.evaluate(sendpulse("down", failed_in_a_row=2, last_error="503", failing_since="2026-12-03T14:00Z"))
    assert (down.kind, down.severity) == ("source_down", "warning") and "503" in down.message
    assert "since 2026-12-03T14:00Z" in down.message
    assert rules.evaluate(sendpulse("down", failed_in_a_row=3)) == []
    assert [a.kind for a in rules.evaluate(sendpulse("misconfigured", failed_in_a_row=4))] == ["source_misconfigured"]
    assert rules.evaluate(sendpulse("down", failed_in_a_row=5)) == []  # one spell until it works again
    assert [a.kind for a in rules.evaluate(sendpulse("up"))] == ["source_up"]
    assert rules.evaluate(sendpulse("up")) == []


def test_sendpulse_disabled_is_never_a_problem_and_closes_one_told_before_a_restart():
    memory = AlertMemory()
    rules, limiter = AlertRules(600, memory), AlertLimiter(300, HandClock(0.0), memory)
    assert limiter.admit(rules.evaluate(sendpulse("disabled"))) == []
    assert limiter.admit(rules.evaluate({"sinks": {}})) == []  # an older daemon's snapshot
    limiter.admit(rules.evaluate(sendpulse("misconfigured", last_error=REFUSED)))
    assert set(memory.open) == {("source_state", None)}
    rules, limiter, kept = restarted(memory)
    [closed] = limiter.admit(rules.evaluate(sendpulse("disabled")))
    assert closed.kind == "source_up" and "no longer enabled" in closed.message and kept.open == {}


def test_sendpulse_told_before_a_restart_is_not_told_again_and_its_end_is():
    memory = AlertMemory()
    rules, limiter = AlertRules(600, memory), AlertLimiter(300, HandClock(0.0), memory)
    limiter.admit(rules.evaluate(sendpulse("down", failed_in_a_row=2)))
    rules, limiter, kept = restarted(memory)
    assert limiter.admit(rules.evaluate(sendpulse("starting"))) == []  # not known yet
    assert limiter.admit(rules.evaluate(sendpulse("down", failed_in_a_row=1))) == []  # not over, not anew
    assert limiter.admit(rules.evaluate(sendpulse("down", failed_in_a_row=2))) == []  # still the spell told
    assert [a.kind for a in limiter.admit(rules.evaluate(sendpulse("up")))] == ["source_up"]
    assert kept.open == {}
