"""Alert rules over status snapshots, and the limiter, on a fake clock."""

from daemon.alerts import AlertLimiter, AlertRules


def snap(postgres=None, airtable=None):
    sinks = {}
    if postgres is not None:
        sinks["postgres"] = {"state": "up", "pending": 0, "dead": 0, "oldest_pending_age_s": None, **postgres}
    if airtable is not None:
        sinks["airtable"] = {"state": "up", "pending": 0, "dead": 0, "oldest_pending_age_s": None, **airtable}
    return {"sinks": sinks}


def kinds(alerts):
    return [(a.kind, a.sink) for a in alerts]


def test_down_fallback_and_back():
    rules = AlertRules(600)
    assert kinds(rules.evaluate(snap({"state": "starting"}, {"state": "starting"}))) == []
    assert kinds(rules.evaluate(snap({}, {}))) == []
    down = rules.evaluate(snap({"state": "down", "last_error": "refused", "pending": 3}, {}))
    assert kinds(down) == [("sink_down", "postgres"), ("fallback_active", None)]
    assert "refused" in down[0].message and down[0].severity == "critical"
    assert kinds(rules.evaluate(snap({"state": "down"}, {}))) == []  # still down: said once
    assert kinds(rules.evaluate(snap({"state": "misconfigured"}, {}))) == []
    assert kinds(rules.evaluate(snap({}, {}))) == [("sink_up", "postgres"), ("fallback_ended", None)]


def test_an_airtable_outage_is_no_fallback():
    rules = AlertRules(600)
    rules.evaluate(snap({}, {}))
    assert kinds(rules.evaluate(snap({}, {"state": "down"}))) == [("sink_down", "airtable")]


def test_a_blocked_base_alerts_like_an_outage_and_is_no_fallback():
    rules = AlertRules(600)
    rules.evaluate(snap({}, {}))
    cap = "HTTP 422 BASE_RECORD_LIMIT_EXCEEDED: the maximum of 1000 records"
    blocked = rules.evaluate(snap({"state": "down"}, {"state": "blocked", "last_error": cap, "pending": 40}))
    assert kinds(blocked) == [("sink_down", "postgres"), ("sink_down", "airtable")]  # nobody has everything
    assert blocked[1].severity == "critical" and cap in blocked[1].message
    assert blocked[1].details["state"] == "blocked"
    assert kinds(rules.evaluate(snap({"state": "down"}, {"state": "blocked"}))) == []
    assert kinds(rules.evaluate(snap({"state": "down"}, {}))) == [("sink_up", "airtable"), ("fallback_active", None)]


def test_a_throttle_between_two_blocked_spells_sends_no_second_down_and_up_comes_after_it():
    rules = AlertRules(600)
    rules.evaluate(snap({}, {}))
    assert kinds(rules.evaluate(snap({}, {"state": "blocked"}))) == [("sink_down", "airtable")]
    assert kinds(rules.evaluate(snap({}, {"state": "throttled"}))) == []  # a 429 during a probe
    assert kinds(rules.evaluate(snap({}, {"state": "blocked"}))) == []  # still the same outage
    assert kinds(rules.evaluate(snap({}, {"state": "throttled"}))) == []
    assert kinds(rules.evaluate(snap({}, {}))) == [("sink_up", "airtable")]  # told, though throttled last
    assert kinds(rules.evaluate(snap({}, {"state": "blocked"}))) == [("sink_down", "airtable")]


def test_dead_letters_backlog_and_quota():
    rules = AlertRules(600)
    rules.evaluate(snap({}, {}))
    first = {"dead": 2, "dead_last_at": "2026-11-25T12:00:00.000Z"}
    assert kinds(rules.evaluate(snap(first, {}))) == [("dead_letters", "postgres")]
    assert kinds(rules.evaluate(snap(first, {}))) == []
    later = {"dead": 5, "dead_last_at": "2026-11-25T12:00:01.000Z"}
    assert rules.evaluate(snap(later, {}))[0].details == {"dead": 5, "dead_last_at": "2026-11-25T12:00:01.000Z"}
    assert kinds(rules.evaluate(snap({"dead": 5, "oldest_pending_age_s": 601}, {}))) == [("backlog_old", "postgres")]
    assert kinds(rules.evaluate(snap({"dead": 5, "oldest_pending_age_s": 900}, {}))) == []
    rules.evaluate(snap({"dead": 5, "oldest_pending_age_s": 10}, {}))
    assert kinds(rules.evaluate(snap({"dead": 5, "oldest_pending_age_s": 700}, {}))) == [("backlog_old", "postgres")]
    quota = {"state": "quota", "pause_reason": "monthly API quota exhausted"}
    assert ("quota_exhausted", "airtable") in kinds(rules.evaluate(snap({"dead": 5}, quota)))
    assert kinds(rules.evaluate(snap({"dead": 5}, quota))) == []


def test_the_limiter_keeps_the_latest_state_of_a_flapping_sink():
    now = [0.0]
    limiter = AlertLimiter(300, lambda: now[0])
    rules = AlertRules(600)
    rules.evaluate(snap({}, {}))
    assert kinds(limiter.admit(rules.evaluate(snap({"state": "down"}, {})))) == [
        ("sink_down", "postgres"),
        ("fallback_active", None),
    ]
    now[0] = 10
    assert kinds(limiter.admit(rules.evaluate(snap({}, {})))) == [
        ("sink_up", "postgres"),
        ("fallback_ended", None),
    ]  # a recovery is never held
    now[0] = 20
    assert limiter.admit(rules.evaluate(snap({"state": "down"}, {}))) == []  # down again, too soon: waits
    now[0] = 301
    assert kinds(limiter.admit([])) == [("sink_down", "postgres"), ("fallback_active", None)]
    now[0] = 302
    assert limiter.admit([]) == []


async def test_a_failing_target_is_logged_and_never_raises(tmp_path):
    import asyncio

    from loguru import logger

    from daemon.alerts import Alert, AlertSender

    lines = []
    handler = logger.add(lines.append, level="ERROR")
    try:
        sender = AlertSender("false", "http://127.0.0.1:9/unreachable")
        task = asyncio.create_task(sender.run())
        sender.submit(Alert("sink_down", "critical", "postgres is down", "postgres"))
        for _ in range(500):
            if sender.failed >= 2:
                break
            await asyncio.sleep(0.01)
        assert not task.done()  # still serving the queue
        task.cancel()
    finally:
        logger.remove(handler)
    assert sender.failed == 2 and sender.sent == 0
    assert any("alert command failed" in line and "exited 1" in line for line in lines)
    assert any("alert webhook failed" in line for line in lines)


async def test_a_failing_webhook_is_logged_by_its_host_alone():
    import asyncio

    from aiohttp import web
    from loguru import logger

    from daemon.alerts import Alert, AlertSender
    from daemon.logs import setup_logging

    async def refuse(request):
        return web.Response(status=500)

    app = web.Application()
    app.router.add_post("/{tail:.*}", refuse)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    lines = []
    setup_logging("ERROR")  # the daemon's patcher: the test sees what the log gets
    handler = logger.add(lines.append, level="ERROR", format="{message}")
    try:
        for url in (
            f"http://127.0.0.1:{port}/hooks/SECRET1?token=SECRET2",
            "http://127.0.0.1:99999/hooks/SECRET1?token=SECRET2",
            "http://u:SECRET3@127.0.0.1:9/hooks/SECRET1?token=SECRET2",
        ):
            sender = AlertSender("", url)
            task = asyncio.create_task(sender.run())
            sender.submit(Alert("sink_down", "critical", "postgres is down", "postgres"))
            for _ in range(1000):
                if sender.failed:
                    break
                await asyncio.sleep(0.01)
            task.cancel()
            assert sender.failed == 1
    finally:
        logger.remove(handler)
        setup_logging("INFO")
        await runner.cleanup()
    assert len(lines) == 3
    assert f"http://127.0.0.1:{port} answered HTTP 500" in lines[0]
    assert not [line for line in lines if "SECRET" in line], lines


def test_the_monthly_request_limit_warns_once_a_month_at_80_percent_then_when_reached():
    rules = AlertRules(600)
    month = {"monthly_request_limit": 1000, "requests_month_forecast": 1500, "month": "2026-12"}
    assert kinds(rules.evaluate(snap({}, {"requests_this_month": 799, **month}))) == []
    high = rules.evaluate(snap({}, {"requests_this_month": 800, **month}))
    assert kinds(high) == [("monthly_requests_high", "airtable")]
    assert "800 of this month's 1,000 requests used (80%); 1,500 at this pace" in high[0].message
    assert kinds(rules.evaluate(snap({}, {"requests_this_month": 950, **month}))) == []  # once a month
    reached = rules.evaluate(
        snap(
            {},
            {
                "state": "quota",
                "requests_this_month": 1000,
                **month,
                "last_error": "upserting: not sent, [airtable] monthly_request_limit reached",
            },
        )
    )
    assert kinds(reached) == [("quota_exhausted", "airtable")]
    assert "monthly_request_limit (1000) is reached" in reached[-1].message
    january = {**month, "month": "2027-01"}
    assert kinds(rules.evaluate(snap({}, {"requests_this_month": 810, **january}))) == [
        ("quota_ended", "airtable"),
        ("monthly_requests_high", "airtable"),
    ]  # the month turned: no longer held


def test_airtable_warnings_are_told_once_per_distinct_set():
    rules = AlertRules(600)
    left_out = ["Interactions.Content is missing: left out of what chatledger writes"]
    [first] = rules.evaluate(snap({}, {"warnings": left_out}))  # true at start: told at once
    assert (first.kind, first.sink, first.severity) == ("airtable_warnings", "airtable", "warning")
    assert left_out[0] in first.message and first.details == {"warnings": left_out}
    assert kinds(rules.evaluate(snap({}, {"warnings": left_out}))) == []
    more = left_out + ["Conversations.MessageCount is a formula field, computed by Airtable"]
    assert kinds(rules.evaluate(snap({}, {"warnings": list(reversed(more))}))) == [("airtable_warnings", "airtable")]
    assert kinds(rules.evaluate(snap({}, {"warnings": more}))) == []  # the same set in another order
    assert kinds(rules.evaluate(snap({}, {"warnings": []}))) == []


def test_the_records_cap_warns_at_80_and_95_percent_and_again_after_room_was_made():
    rules = AlertRules(600)
    cap = {"max_records": 1000}
    assert kinds(rules.evaluate(snap({}, {"records": 799, **cap}))) == []
    [eighty] = rules.evaluate(snap({}, {"records": 800, **cap}))
    assert (eighty.kind, eighty.severity) == ("records_high", "warning") and "800 of its plan's 1,000" in eighty.message
    assert kinds(rules.evaluate(snap({}, {"records": 900, **cap}))) == []
    [ninety_five] = rules.evaluate(snap({}, {"records": 960, **cap}))
    assert ninety_five.severity == "critical"
    assert kinds(rules.evaluate(snap({}, {"records": 990, **cap}))) == []
    assert kinds(rules.evaluate(snap({}, {"records": 500, **cap}))) == []  # retention made room
    assert kinds(rules.evaluate(snap({}, {"records": 820, **cap}))) == [("records_high", "airtable")]
    assert kinds(rules.evaluate(snap({}, {"records": 10**6}))) == []  # no cap set: not counted
