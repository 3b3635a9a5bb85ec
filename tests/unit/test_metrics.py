"""The Prometheus exposition of a status snapshot."""

from prometheus_client.parser import text_string_to_metric_families

from daemon.metrics import render

SNAPSHOT = {
    "health": {"status": "degraded"},
    "webhook": {"accepted": 120, "duplicates": 3, "rejected": 1},
    "journal": {
        "writable": True,
        "events": 120,
        "commits": 10,
        "committed_events": 40,
        "commit_failures": 0,
        "commit_seconds": {"buckets": [[0.001, 4], [0.01, 5], [0.1, 0]], "over": 1, "sum": 2.5},
    },
    "sinks": {
        "postgres": {
            "state": "down",
            "pending": 80,
            "delivered": 40,
            "dead": 0,
            "oldest_pending_age_s": 12.5,
            "delivered_since_start": 40,
            "failed_attempts_since_start": 7,
            "dead_since_start": 0,
        },
        "airtable": {
            "state": "up",
            "pending": 0,
            "delivered": 120,
            "dead": 2,
            "discarded": 3,
            "oldest_pending_age_s": None,
            "delivered_since_start": 120,
            "failed_attempts_since_start": 0,
            "dead_since_start": 2,
            "requests_total": 30,
            "rate_limited_429": 0,
            "tokens_left": 4,
            "requests_per_window": 5,
            "paused_for_s": None,
            "warnings": ["Interactions.Content is missing", "x"],
        },
    },
}


def samples():
    out = {}
    for family in text_string_to_metric_families(render(SNAPSHOT).decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_counters_gauges_and_labels():
    got = samples()
    assert got[("chatledger_events_accepted_total", ())] == 120
    assert got[("chatledger_events_duplicates_total", ())] == 3
    assert got[("chatledger_healthy", ())] == 0
    assert got[("chatledger_sink_pending", (("sink", "postgres"),))] == 80
    assert got[("chatledger_sink_discarded", (("sink", "airtable"),))] == 3
    assert got[("chatledger_sink_discarded", (("sink", "postgres"),))] == 0
    assert got[("chatledger_sink_oldest_pending_age_seconds", (("sink", "airtable"),))] == 0
    assert got[("chatledger_sink_failed_attempts_total", (("sink", "postgres"),))] == 7
    assert got[("chatledger_sink_state", (("sink", "postgres"), ("state", "down")))] == 1
    assert got[("chatledger_sink_state", (("sink", "postgres"), ("state", "up")))] == 0
    assert got[("chatledger_sink_state", (("sink", "airtable"), ("state", "blocked")))] == 0  # always exported
    assert got[("chatledger_airtable_tokens", ())] == 4
    assert got[("chatledger_airtable_warnings", ())] == 2
    assert got[("chatledger_journal_events_per_commit", ())] == 4.0


def test_commit_latency_is_a_cumulative_histogram():
    got = samples()
    assert got[("chatledger_journal_commit_seconds_bucket", (("le", "0.001"),))] == 4
    assert got[("chatledger_journal_commit_seconds_bucket", (("le", "0.01"),))] == 9
    assert got[("chatledger_journal_commit_seconds_bucket", (("le", "+Inf"),))] == 10
    assert got[("chatledger_journal_commit_seconds_count", ())] == 10
    assert got[("chatledger_journal_commit_seconds_sum", ())] == 2.5


def test_no_airtable_metrics_without_airtable():
    snapshot = {**SNAPSHOT, "sinks": {"postgres": SNAPSHOT["sinks"]["postgres"]}}
    names = {f.name for f in text_string_to_metric_families(render(snapshot).decode())}
    assert "chatledger_airtable_tokens" not in names and "chatledger_sink_pending" in names


def test_an_unknown_or_unset_airtable_figure_has_no_sample_rather_than_a_zero():
    airtable = {
        **SNAPSHOT["sinks"]["airtable"],
        "requests_this_month": 12,
        "requests_month_forecast": 40,
        "monthly_request_limit": None,
        "max_records": 1000,
        "records": None,
    }
    snapshot = {**SNAPSHOT, "sinks": {**SNAPSHOT["sinks"], "airtable": airtable}}
    names = {s.name for f in text_string_to_metric_families(render(snapshot).decode()) for s in f.samples}
    assert {"chatledger_airtable_requests_this_month", "chatledger_airtable_max_records"} <= names
    # not counted yet is not an empty base; no limit is not a limit of 0
    assert not {"chatledger_airtable_records", "chatledger_airtable_monthly_request_limit"} & names


def test_the_process_itself_is_measured():
    got = samples()
    assert got[("process_resident_memory_bytes", ())] > 1_000_000
    assert got[("process_open_fds", ())] >= 3 and got[("process_max_fds", ())] > 0
    assert ("process_cpu_seconds_total", ()) in got and ("process_start_time_seconds", ()) in got
