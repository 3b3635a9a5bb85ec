"""SIGHUP: which changed keys apply while running, which replace a sink, which need a restart; and a
sink replaced under a running worker (a real journal, the shipped in-memory sink)."""

import asyncio
import copy
import json
from collections import Counter
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from daemon.alerts import AlertSender
from daemon.app import Daemon
from daemon.config import load_config
from daemon.events import normalize
from daemon.journal import Journal
from daemon.reload import apply_live, describe, plan_reload, retune_airtable
from daemon.sinks.airtable import AirtableSink
from daemon.sinks.base import SinkError
from daemon.testing.fakes import MemorySink
from tests.support import until

TOKEN = "reload-token-0123456789abcdef"
DSN = "postgresql://ledger:first-password@127.0.0.1:5432/ledger"
AIRTABLE = {
    "api_key": "patFIRST000000000.secret",
    "base_id": "appFIRST000000000",
    "endpoint_url": "http://127.0.0.1:8701",
}
BASE = {
    "server": {"listen": "127.0.0.1:8080", "webhook_token": TOKEN},
    "journal": {"path": "state/journal.sqlite"},
    "status": {"socket": "run/status.sock"},
}
FAIL_BOUND = 30.0


def load(tmp_path, **changes):
    """A config: BASE with `changes` merged in, section by section (a key "airtable.fields" is that table)."""
    sections = copy.deepcopy(BASE)
    for section, keys in changes.items():
        sections.setdefault(section, {}).update(keys)
    text = "".join(
        f"[{section}]\n" + "".join(f"{json.dumps(k) if '.' in k else k} = {json.dumps(v)}\n" for k, v in keys.items())
        for section, keys in sections.items()
    )
    path = tmp_path / "chatledger.toml"
    path.write_text(text)
    return load_config(path, {})


def test_nothing_changed_plans_nothing(tmp_path):
    running = load(tmp_path, postgres={"dsn": DSN}, airtable=AIRTABLE, alerts={"webhook_url": "https://chat/x"})
    plan = plan_reload(
        running, load(tmp_path, postgres={"dsn": DSN}, airtable=AIRTABLE, alerts={"webhook_url": "https://chat/x"})
    )
    assert (plan.applied, plan.restart, plan.rebuild) == ([], [], [])
    assert describe(plan) == ("", "nothing changed")


def test_listeners_paths_tokens_and_the_postgres_schema_need_a_restart(tmp_path):
    running = load(tmp_path, postgres={"dsn": DSN}, metrics={"listen": "127.0.0.1:9100"})
    fresh = load(
        tmp_path,
        server={
            "listen": "127.0.0.1:8081",
            "webhook_path": "/hook",
            "webhook_token": "another-token-0123456789",
            "api_token": "api-token-0123456789",
            "max_body_bytes": 4096,
            "read_timeout_s": 3,
            "max_connections": 9,
        },
        journal={"path": "elsewhere.sqlite"},
        postgres={"dsn": DSN, "schema": "other"},
        status={"socket": "run/other.sock"},
        metrics={"listen": "127.0.0.1:9101"},
    )
    plan = plan_reload(running, fresh)
    assert plan.restart == [
        "[server] listen",
        "[server] webhook_path",
        "[server] webhook_token",
        "[server] api_token",
        "[server] max_body_bytes",
        "[server] read_timeout_s",
        "[server] max_connections",
        "[journal] path",
        "[postgres] schema",
        "[status] socket",
        "[metrics] listen",
    ]
    assert plan.applied == [] and plan.rebuild == []
    warning, info = describe(plan)
    assert warning.startswith("needs a restart: [server] listen, [server] webhook_path, ")
    assert "the running values stay in effect" in warning and info == "nothing applied"


def test_alerts_log_retention_and_limits_apply_live_without_replacing_a_sink(tmp_path):
    running = load(tmp_path, airtable=AIRTABLE, postgres={"dsn": DSN})
    fresh = load(
        tmp_path,
        airtable={
            **AIRTABLE,
            "requests_per_second": 3,
            "monthly_request_limit": 900,
            "linger_s": 0,
            "max_records": 1000,
            "retention_days": 60,
        },
        **{"airtable.fields": {"Interactions.Content": "Message"}},
        postgres={"dsn": DSN},
        journal={"retention_days": 7},
        server={"max_elements_per_request": 10},
        alerts={
            "command": "notify-ops",
            "webhook_url": "https://chat.example/hook/abc",
            "pending_age_threshold_s": 60,
            "min_interval_s": 0,
        },
        log={"level": "DEBUG", "json": True},
    )
    plan = plan_reload(running, fresh)
    assert plan.applied == [
        "[server] max_elements_per_request",
        "[journal] retention_days",
        "[airtable] requests_per_second",
        "[airtable] monthly_request_limit",
        "[airtable] linger_s",
        "[airtable] max_records",
        "[airtable] retention_days",
        "[airtable.fields]",
        "[alerts] command",
        "[alerts] webhook_url",
        "[alerts] pending_age_threshold_s",
        "[alerts] min_interval_s",
        "[log] level",
        "[log] json",
    ]
    assert plan.restart == [] and plan.rebuild == []
    assert describe(plan) == ("", "SIGHUP applied: " + ", ".join(plan.applied))


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("airtable", "api_key", "patSECOND00000000.secret"),
        ("airtable", "base_id", "appSECOND00000000"),
        ("airtable", "endpoint_url", "http://127.0.0.1:8702"),
        ("airtable", "interactions_table", "Messages"),
        ("postgres", "dsn", "postgresql://ledger:second-password@127.0.0.1:5433/ledger"),
    ],
)
def test_a_sinks_credentials_and_endpoint_replace_that_sink(tmp_path, section, key, value):
    running = load(tmp_path, airtable=AIRTABLE, postgres={"dsn": DSN})
    changed = {"airtable": dict(AIRTABLE), "postgres": {"dsn": DSN}}
    changed[section][key] = value
    plan = plan_reload(running, load(tmp_path, **changed))
    assert plan.applied == [f"[{section}] {key}"] and plan.rebuild == [section] and plan.restart == []
    assert "replaced" in describe(plan)[1]


def test_switching_a_sink_on_or_off_needs_a_restart_and_applies_none_of_its_keys(tmp_path):
    off = load(tmp_path, alerts={"command": "old"})
    on = load(tmp_path, airtable={**AIRTABLE, "linger_s": 1}, postgres={"dsn": DSN}, alerts={"command": "new"})
    plan = plan_reload(off, on)
    assert plan.restart == [
        "[postgres] dsn",
        "[airtable] api_key",
        "[airtable] base_id",
        "[airtable] endpoint_url",
        "[airtable] linger_s",
    ]
    assert plan.applied == ["[alerts] command"] and plan.rebuild == []
    warning, _ = describe(plan)
    assert "postgres would be switched on" in warning and "airtable would be switched on" in warning
    back = plan_reload(on, off)
    assert "postgres would be switched off" in describe(back)[0] and back.rebuild == []
    assert back.restart == plan.restart


def test_keys_of_a_sink_that_stays_off_apply_and_replace_nothing(tmp_path):
    plan = plan_reload(load(tmp_path), load(tmp_path, airtable={"base_id": "appSECOND00000000", "linger_s": 1}))
    assert plan.applied == ["[airtable] base_id", "[airtable] linger_s"] and plan.rebuild == [] and plan.restart == []


def test_secrets_are_compared_by_value_and_never_written_out(tmp_path):
    secrets = {"hook": "https://chat.example/hook/FIRST-SECRET", "dsn": DSN, "key": AIRTABLE["api_key"], "token": TOKEN}
    running = load(tmp_path, alerts={"webhook_url": secrets["hook"]}, postgres={"dsn": DSN}, airtable=AIRTABLE)
    assert (
        plan_reload(
            running, load(tmp_path, alerts={"webhook_url": secrets["hook"]}, postgres={"dsn": DSN}, airtable=AIRTABLE)
        ).applied
        == []
    )
    fresh = {
        "hook": "https://chat.example/hook/SECOND-SECRET",
        "dsn": "postgresql://ledger:second-password@127.0.0.1:5432/ledger",
        "key": "patSECOND00000000.secret",
        "token": "second-token-0123456789",
    }
    plan = plan_reload(
        running,
        load(
            tmp_path,
            alerts={"webhook_url": fresh["hook"]},
            postgres={"dsn": fresh["dsn"]},
            airtable={**AIRTABLE, "api_key": fresh["key"]},
            server={"webhook_token": fresh["token"]},
        ),
    )
    assert plan.applied == ["[postgres] dsn", "[airtable] api_key", "[alerts] webhook_url"]
    assert plan.restart == ["[server] webhook_token"]
    text = " ".join(describe(plan)) + repr(plan)
    for value in (*secrets.values(), *fresh.values(), "first-password", "second-password", "SECRET"):
        assert value not in text


def test_apply_changes_the_running_config_in_place_and_keeps_what_needs_a_restart(tmp_path):
    running = load(tmp_path, airtable=AIRTABLE)
    server, alerts, airtable = running.server, running.alerts, running.airtable
    fresh = load(
        tmp_path,
        server={"listen": "127.0.0.1:8081", "max_elements_per_request": 10},
        airtable={**AIRTABLE, "endpoint_url": "http://127.0.0.1:8702"},
        **{"airtable.fields": {"Interactions.Content": "Message"}},
        alerts={"command": "notify-ops"},
        metrics={"listen": "127.0.0.1:9100"},
    )
    apply_live(running, fresh, plan_reload(running, fresh))
    # the webhook app holds the [server] section itself: what changes there is read per request
    assert running.server is server and running.alerts is alerts and running.airtable is airtable
    assert server.listen == "127.0.0.1:8080" and server.max_elements_per_request == 10
    assert airtable.endpoint_url == "http://127.0.0.1:8702"
    assert airtable.fields == {"Interactions.Content": "Message"}
    assert alerts.command == "notify-ops" and running.metrics.listen == ""
    assert plan_reload(running, fresh).restart == ["[server] listen", "[metrics] listen"]


def test_retuning_airtable_sets_its_rate_cap_linger_and_fields_on_the_running_sink(tmp_path):
    running = load(tmp_path, airtable=AIRTABLE)
    sink = AirtableSink.from_config(running.airtable, None)
    worker = SimpleNamespace(sink=sink, linger_s=sink.linger_s)
    fresh = load(
        tmp_path,
        airtable={**AIRTABLE, "requests_per_second": 3, "max_records": 1000, "linger_s": 0},
        **{"airtable.fields": {"Interactions.Content": "Message"}},
    )
    plan = plan_reload(running, fresh)
    apply_live(running, fresh, plan)
    retune_airtable(worker, running.airtable, set(plan.applied))
    try:
        stats = sink.stats()
        assert stats["requests_per_window"] == 3 and stats["tokens_left"] <= 3
        assert (stats["max_records"], stats["records"]) == (1000, None)  # counted at the next check
        assert worker.linger_s == sink.linger_s == 0
        assert sink.tables.field("interactions", "Content") == "Message"
    finally:
        sink.client.close()


async def test_a_job_still_holding_a_replaced_airtable_sink_gets_a_sink_error(tmp_path):
    sink = AirtableSink.from_config(load(tmp_path, airtable=AIRTABLE).airtable, None)
    await sink.close()
    with pytest.raises(SinkError, match="the Airtable client was closed"):  # a retention run: retried, not a crash
        await sink.client.list_page("Interactions", None, None)


async def test_a_replaced_airtable_sink_of_the_same_base_keeps_its_budget_and_a_429s_pause(tmp_path):
    from daemon.reload import carry_counters

    config = load(tmp_path, airtable=AIRTABLE).airtable
    old, same, other = (AirtableSink.from_config(config, None) for _ in range(3))
    old.client.budget.pause(30, "a 429: the base locked for 30 s")
    old.client.budget.requests_total = 7
    other.client.base_id = "appOTHER000000001"
    workers = [
        SimpleNamespace(sink=s, delivered_since_start=0, dead_since_start=0, failed_attempts=0)
        for s in (old, same, other)
    ]
    carry_counters(workers[0], workers[1])  # a new api_key for the same base: one base, one budget
    assert same.client.budget is old.client.budget and same.client.budget.stats()["paused_for_s"] > 0
    carry_counters(workers[0], workers[2])  # another base: its own budget, the counts carried
    assert other.client.budget is not old.client.budget and other.client.budget.requests_total == 7
    for sink in (old, same, other):
        await sink.close()


def test_new_alert_targets_take_the_next_alert():
    sender = AlertSender("", "")
    assert not sender.enabled
    sender.configure("notify-ops --to 'on call'", "https://chat.example/hook/abc")
    assert sender.enabled and sender.argv == ["notify-ops", "--to", "on call"]
    assert sender.webhook_url == "https://chat.example/hook/abc"


# -- a sink replaced under its running worker ------------------------------------------------------

RECEIVED = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


class GatedSink(MemorySink):
    """A memory sink whose deliveries wait for `gate` (an in-flight delivery, held open); one through a
    closed sink, or closed under it, fails (MemorySink refuses to be used after close())."""

    def __init__(self, gated=False):
        super().__init__("postgres", 8)
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.in_flight = asyncio.Event()

    async def deliver(self, events):
        self.in_flight.set()
        await self.gate.wait()
        return await super().deliver(events)


def accepted(sink):
    """How often each message was delivered, by message id."""
    return Counter({key.rsplit(":", 1)[-1]: n for key, n in sink.accepted.items()})


def message(i):
    return normalize(
        {
            "title": "incoming_message",
            "contact": {"id": "c1"},
            "info": {"message": {"id": f"m{i}", "channel_data": {"message": {"text": {"body": "x"}}}}},
        },
        RECEIVED,
    )


async def test_a_replaced_sink_finishes_its_delivery_and_the_new_one_takes_the_rest(tmp_path):
    daemon = Daemon(load(tmp_path, postgres={"dsn": DSN}), None)
    daemon.journal = await Journal.open(tmp_path / "j.sqlite", ["postgres"])
    try:
        old, new = GatedSink(gated=True), GatedSink()
        daemon.workers.start(daemon.journal, old)
        [task] = daemon.workers.tasks
        await daemon.journal.append([message(i) for i in range(5)])
        await until(_set(old.in_flight), task, "delivery in flight", FAIL_BOUND)

        replacing = asyncio.create_task(daemon.workers.replace(new))
        await daemon.journal.append([message(i) for i in range(5, 10)])
        await asyncio.sleep(0)  # one turn: the replacement has asked the old worker to stop
        assert not replacing.done() and not old.closed  # the in-flight delivery is not cut short
        assert daemon.workers["postgres"].sink is old  # status shows the worker still delivering
        old.gate.set()
        await asyncio.wait_for(replacing, FAIL_BOUND)
        assert old.closed and not new.closed and daemon.workers["postgres"].sink is new

        await until(_true(lambda: sum(new.accepted.values()) == 5), task, "the rest through the new sink", FAIL_BOUND)
        assert accepted(old) == Counter(f"m{i}" for i in range(5))
        assert accepted(new) == Counter(f"m{i}" for i in range(5, 10))
        assert (await daemon.journal.counts())["sinks"]["postgres"].get("delivered") == 10
        assert not task.done()  # the sink's delivery task goes on: the daemon's supervisor sees no crash
        assert daemon.workers["postgres"].delivered_since_start == 10  # counters since start, not since SIGHUP

        await daemon.workers.stop()
        assert task.done() and not task.cancelled() and new.closed
    finally:
        await daemon.journal.close()


async def test_a_stop_during_a_replacement_closes_both_sinks_and_starts_neither(tmp_path):
    daemon = Daemon(load(tmp_path, postgres={"dsn": DSN}), None)
    daemon.journal = await Journal.open(tmp_path / "j.sqlite", ["postgres"])
    try:
        old, new = GatedSink(gated=True), GatedSink()
        daemon.workers.start(daemon.journal, old)
        [task] = daemon.workers.tasks
        await daemon.journal.append([message(i) for i in range(5)])
        await until(_set(old.in_flight), task, "delivery in flight", FAIL_BOUND)
        replacing = asyncio.create_task(daemon.workers.replace(new))
        stopping = asyncio.create_task(daemon.workers.stop())
        await asyncio.sleep(0)
        old.gate.set()  # the in-flight delivery ends while the daemon stops
        await asyncio.wait_for(stopping, FAIL_BOUND)
        assert await asyncio.wait_for(replacing, FAIL_BOUND) is False
        assert old.closed and new.closed and not new.accepted
        assert accepted(old) == Counter(f"m{i}" for i in range(5)) and task.done() and not task.cancelled()
        late = GatedSink()
        assert await daemon.workers.replace(late) is False and late.closed
    finally:
        await daemon.journal.close()


def _set(event):
    async def check():
        return event.is_set()

    return check


def _true(predicate):
    async def check():
        return predicate()

    return check


# -- [sendpulse] -------------------------------------------------------------------------------------

SENDPULSE = {"client_id": "sp-client-id", "client_secret": "sp-FIRST-secret", "api_url": "http://127.0.0.1:8090"}


@pytest.mark.parametrize(
    "key, value",
    [
        ("client_id", "sp-other-id"),
        ("client_secret", "sp-SECOND-secret"),
        ("api_url", "http://127.0.0.1:8091"),
        ("requests_per_second", 2),
    ],
)
def test_sendpulse_credentials_address_and_rate_replace_its_client(tmp_path, key, value):
    plan = plan_reload(load(tmp_path, sendpulse=SENDPULSE), load(tmp_path, sendpulse={**SENDPULSE, key: value}))
    assert plan.applied == [f"[sendpulse] {key}"] and plan.restart == [] and plan.sendpulse == "replace"
    assert plan.rebuild == []  # no sink is replaced
    warning, info = describe(plan)
    assert warning == "" and info == f"SIGHUP applied: [sendpulse] {key} (replaced: the SendPulse client)"
    assert "SECOND" not in info and "FIRST" not in info


def test_sendpulse_bots_interval_and_first_window_apply_at_the_next_run(tmp_path):
    fresh = load(
        tmp_path,
        sendpulse={
            **SENDPULSE,
            "bot_ids": ["bot2"],
            "reconcile_interval_s": 60,
            "first_window_h": 2,
            "status_window_h": 6,
        },
    )
    plan = plan_reload(load(tmp_path, sendpulse=SENDPULSE), fresh)
    assert plan.applied == [
        "[sendpulse] bot_ids",
        "[sendpulse] reconcile_interval_s",
        "[sendpulse] first_window_h",
        "[sendpulse] status_window_h",
    ]
    assert (plan.restart, plan.sendpulse) == ([], "retune")
    assert describe(plan) == ("", "SIGHUP applied: " + ", ".join(plan.applied))


def test_sendpulse_is_switched_on_and_off_without_a_restart(tmp_path):
    off, on = load(tmp_path), load(tmp_path, sendpulse={**SENDPULSE, "reconcile_interval_s": 60})
    plan = plan_reload(off, on)
    assert plan.applied == [
        "[sendpulse] client_id",
        "[sendpulse] client_secret",
        "[sendpulse] api_url",
        "[sendpulse] reconcile_interval_s",
    ]
    assert (plan.restart, plan.sendpulse) == ([], "on")
    assert describe(plan)[1].endswith("(SendPulse reconciliation switched on)")
    back = plan_reload(on, off)
    assert (back.restart, back.sendpulse) == ([], "off") and back.applied == plan.applied
    assert describe(back)[1].endswith("(SendPulse reconciliation switched off)")
    apply_live(on, off, back)
    assert not on.sendpulse.enabled
    quiet = plan_reload(off, load(tmp_path, sendpulse={"api_url": "http://127.0.0.1:8091"}))  # stays off
    assert quiet.applied == ["[sendpulse] api_url"] and quiet.sendpulse == ""
