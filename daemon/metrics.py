"""Prometheus text exposition of the daemon's status snapshot (pure: snapshot in, text out).

Built at scrape time from the same snapshot `chatledger status` shows, so the two never disagree.
Counters are since the daemon started (Prometheus handles the reset at a restart) except the
webhook ones, which the journal keeps across restarts; gauges are read from the journal.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
SINK_STATES = ("disabled", "starting", "up", "down", "misconfigured", "throttled", "quota")


class _Snapshot:
    """A prometheus_client collector over one snapshot."""

    def __init__(self, snapshot: dict[str, Any]):
        self.snapshot = snapshot

    def collect(self):
        snap = self.snapshot
        webhook = snap.get("webhook", {})
        for key, help_text in (("accepted", "events journaled"), ("duplicates", "events already journaled (resent)"),
                               ("rejected", "webhook elements quarantined as malformed")):
            counter = CounterMetricFamily(f"chatledger_events_{key}", f"Webhook {help_text}, since the journal began")
            counter.add_metric([], webhook.get(key, 0))
            yield counter

        health = GaugeMetricFamily("chatledger_healthy", "1 when `chatledger status` would exit 0")
        health.add_metric([], 1 if snap.get("health", {}).get("status") == "healthy" else 0)
        yield health

        journal = snap.get("journal", {})
        writable = GaugeMetricFamily("chatledger_journal_writable", "1 while the journal accepts writes")
        writable.add_metric([], 1 if journal.get("writable") else 0)
        yield writable
        events = GaugeMetricFamily("chatledger_journal_events", "Events held in the journal")
        events.add_metric([], journal.get("events", 0))
        yield events
        commits = CounterMetricFamily("chatledger_journal_commits", "Journal transactions committed (group commits)")
        commits.add_metric([], journal.get("commits", 0))
        yield commits
        committed = CounterMetricFamily("chatledger_journal_committed_events", "Events committed by this process")
        committed.add_metric([], journal.get("committed_events", 0))
        yield committed
        per_commit = GaugeMetricFamily("chatledger_journal_events_per_commit", "Mean events per journal commit")
        per_commit.add_metric([], journal.get("committed_events", 0) / journal["commits"] if journal.get("commits")
                              else 0.0)
        yield per_commit
        failures = CounterMetricFamily("chatledger_journal_commit_failures", "Journal commits that failed")
        failures.add_metric([], journal.get("commit_failures", 0))
        yield failures
        latency = journal.get("commit_seconds")
        if latency:
            cumulative, buckets = 0, []
            for bound, count in latency["buckets"]:
                cumulative += count
                buckets.append((repr(float(bound)), cumulative))
            buckets.append(("+Inf", cumulative + latency["over"]))
            histogram = HistogramMetricFamily("chatledger_journal_commit_seconds",
                                              "Journal commit latency (write + fsync)")
            histogram.add_metric([], buckets, latency["sum"])
            yield histogram

        alerts = snap.get("alerts", {})
        for key, help_text in (("sent", "Alerts sent to the command or webhook"),
                               ("failed", "Alerts that could not be sent (logged)")):
            counter = CounterMetricFamily(f"chatledger_alerts_{key}", help_text)
            counter.add_metric([], alerts.get(key, 0))
            yield counter

        sinks = snap.get("sinks", {})
        gauges = {
            "pending": GaugeMetricFamily("chatledger_sink_pending", "Deliveries waiting for the sink", labels=["sink"]),
            "delivered": GaugeMetricFamily("chatledger_sink_delivered", "Delivered events still in the journal",
                                           labels=["sink"]),
            "dead": GaugeMetricFamily("chatledger_sink_dead", "Dead letters (need `chatledger replay --dead`)",
                                      labels=["sink"]),
            "oldest_pending_age_s": GaugeMetricFamily("chatledger_sink_oldest_pending_age_seconds",
                                                      "Age of the oldest pending delivery (0 when none)",
                                                      labels=["sink"]),
        }
        counters = {
            "delivered_since_start": CounterMetricFamily("chatledger_sink_delivered_events",
                                                         "Events delivered by this process", labels=["sink"]),
            "failed_attempts_since_start": CounterMetricFamily("chatledger_sink_failed_attempts",
                                                               "Delivery attempts that failed", labels=["sink"]),
            "dead_since_start": CounterMetricFamily("chatledger_sink_dead_letters",
                                                    "Events parked as dead letters by this process", labels=["sink"]),
        }
        state = GaugeMetricFamily("chatledger_sink_state", "1 for the sink's current state", labels=["sink", "state"])
        for name, sink in sinks.items():
            for key, gauge in gauges.items():
                gauge.add_metric([name], sink.get(key) or 0)
            for key, counter in counters.items():
                counter.add_metric([name], sink.get(key, 0))
            current = sink.get("state", "disabled")
            for possible in dict.fromkeys((*SINK_STATES, current)):
                state.add_metric([name, possible], 1 if possible == current else 0)
        yield from gauges.values()
        yield from counters.values()
        yield state

        airtable = sinks.get("airtable", {})
        if "tokens_left" in airtable:
            requests = CounterMetricFamily("chatledger_airtable_requests", "Requests sent to Airtable")
            requests.add_metric([], airtable.get("requests_total", 0))
            yield requests
            limited = CounterMetricFamily("chatledger_airtable_rate_limited", "429 answers from Airtable")
            limited.add_metric([], airtable.get("rate_limited_429", 0))
            yield limited
            tokens = GaugeMetricFamily("chatledger_airtable_tokens", "Requests the budget allows right now")
            tokens.add_metric([], airtable.get("tokens_left", 0))
            yield tokens
            capacity = GaugeMetricFamily("chatledger_airtable_requests_per_window",
                                         "The budget's current rate (halved after a 429)")
            capacity.add_metric([], airtable.get("requests_per_window", 0))
            yield capacity
            paused = GaugeMetricFamily("chatledger_airtable_paused_seconds",
                                       "Seconds left in a pause (429 lockout, quota); 0 when none")
            paused.add_metric([], airtable.get("paused_for_s") or 0)
            yield paused


def render(snapshot: dict[str, Any]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(snapshot))
    return generate_latest(registry)
