"""Prometheus text exposition of the daemon's status snapshot (pure: snapshot in, text out).

Built at scrape time from the same snapshot `chatledger status` shows, so the two never disagree.
Counters are since the daemon started (Prometheus handles the reset at a restart) except the
webhook ones, which the journal keeps across restarts; gauges are read from the journal.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric

from daemon.snapshot import SinkStats, SinkStatus, Snapshot, SourceStatus

CONTENT_TYPE = CONTENT_TYPE_LATEST
SENDPULSE_STATES = ("disabled", "starting", "up", "down", "misconfigured")
SINK_STATES = ("disabled", "starting", "up", "down", "misconfigured", "blocked", "throttled", "quota")


COUNTER, GAUGE = CounterMetricFamily, GaugeMetricFamily


def _single(kind: type, name: str, help_text: str, value: Any) -> Any:
    """A metric family with one unlabelled sample (None counts as 0, a bool as 0/1)."""
    family = kind(f"chatledger_{name}", help_text)
    family.add_metric([], float(value or 0))
    return family


# Figures that are unknown (not counted yet) or unset (no limit) when None: no sample, never a 0.
UNKNOWN_WHEN_NONE = frozenset({"airtable_monthly_request_limit", "airtable_records", "airtable_max_records"})


class _Snapshot:
    """A prometheus_client collector over one snapshot."""

    def __init__(self, snapshot: Snapshot):
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        value: float | None  # a sample's, of each metric below
        webhook, journal, alerts = snap.get("webhook", {}), snap.get("journal", {}), snap.get("alerts", {})
        commits = journal.get("commits", 0)
        for kind, name, help_text, value in (
            (COUNTER, "events_accepted", "Webhook events journaled, since the journal began", webhook.get("accepted")),
            (
                COUNTER,
                "events_duplicates",
                "Webhook events already journaled (resent), since the journal began",
                webhook.get("duplicates"),
            ),
            (
                COUNTER,
                "events_rejected",
                "Webhook elements quarantined as malformed, since the journal began",
                webhook.get("rejected"),
            ),
            (
                GAUGE,
                "healthy",
                "1 when `chatledger status` would exit 0",
                snap.get("health", {}).get("status") == "healthy",
            ),
            (GAUGE, "journal_writable", "1 while the journal accepts writes", journal.get("writable")),
            (GAUGE, "journal_events", "Events held in the journal", journal.get("events")),
            (COUNTER, "journal_commits", "Journal transactions committed (group commits)", commits),
            (COUNTER, "journal_committed_events", "Events committed by this process", journal.get("committed_events")),
            (
                GAUGE,
                "journal_events_per_commit",
                "Mean events per journal commit",
                journal.get("committed_events", 0) / commits if commits else 0.0,
            ),
            (COUNTER, "journal_commit_failures", "Journal commits that failed", journal.get("commit_failures")),
            (COUNTER, "alerts_sent", "Alerts sent to the command or webhook", alerts.get("sent")),
            (COUNTER, "alerts_failed", "Alerts that could not be sent (logged)", alerts.get("failed")),
        ):
            yield _single(kind, name, help_text, value)
        latency = journal.get("commit_seconds")
        if latency:
            cumulative, buckets = 0, []
            for bound, count in latency["buckets"]:
                cumulative += count
                buckets.append((repr(float(bound)), cumulative))
            buckets.append(("+Inf", cumulative + latency["over"]))
            histogram = HistogramMetricFamily(
                "chatledger_journal_commit_seconds", "Journal commit latency (write + fsync)"
            )
            histogram.add_metric([], buckets, latency["sum"])
            yield histogram

        sinks = snap.get("sinks", {})
        gauges = {
            "pending": GaugeMetricFamily("chatledger_sink_pending", "Deliveries waiting for the sink", labels=["sink"]),
            "delivered": GaugeMetricFamily(
                "chatledger_sink_delivered", "Delivered events still in the journal", labels=["sink"]
            ),
            "dead": GaugeMetricFamily(
                "chatledger_sink_dead", "Open dead letters (`chatledger dead`: replay or discard)", labels=["sink"]
            ),
            "discarded": GaugeMetricFamily(
                "chatledger_sink_discarded", "Dead letters the operator gave up (kept)", labels=["sink"]
            ),
            "oldest_pending_age_s": GaugeMetricFamily(
                "chatledger_sink_oldest_pending_age_seconds",
                "Age of the oldest pending delivery (0 when none)",
                labels=["sink"],
            ),
        }
        counters = {
            "delivered_since_start": CounterMetricFamily(
                "chatledger_sink_delivered_events", "Events delivered by this process", labels=["sink"]
            ),
            "failed_attempts_since_start": CounterMetricFamily(
                "chatledger_sink_failed_attempts", "Delivery attempts that failed", labels=["sink"]
            ),
            "dead_since_start": CounterMetricFamily(
                "chatledger_sink_dead_letters", "Events parked as dead letters by this process", labels=["sink"]
            ),
        }
        state = GaugeMetricFamily("chatledger_sink_state", "1 for the sink's current state", labels=["sink", "state"])
        for name, sink in sinks.items():
            figures = _sink_figures(sink)
            for key, gauge in gauges.items():
                gauge.add_metric([name], figures[key] or 0)
            for key, counter in counters.items():
                counter.add_metric([name], figures[key] or 0)
            current = sink.get("state", "disabled")
            for possible in dict.fromkeys((*SINK_STATES, current)):
                state.add_metric([name, possible], 1 if possible == current else 0)
        yield from gauges.values()
        yield from counters.values()
        yield state

        airtable: SinkStats = sinks.get("airtable") or {}
        if "tokens_left" in airtable:
            for kind, name, help_text, value in (
                (COUNTER, "airtable_requests", "Requests sent to Airtable", airtable.get("requests_total")),
                (COUNTER, "airtable_rate_limited", "429 answers from Airtable", airtable.get("rate_limited_429")),
                (GAUGE, "airtable_tokens", "Requests the budget allows right now", airtable.get("tokens_left")),
                (
                    GAUGE,
                    "airtable_requests_per_window",
                    "The budget's current rate (halved after a 429)",
                    airtable.get("requests_per_window"),
                ),
                (
                    GAUGE,
                    "airtable_paused_seconds",
                    "Seconds left in a pause (429 lockout, quota); 0 when none",
                    airtable.get("paused_for_s"),
                ),
                (
                    GAUGE,
                    "airtable_requests_this_month",
                    "Requests sent to the base this calendar month (UTC)",
                    airtable.get("requests_this_month"),
                ),
                (
                    GAUGE,
                    "airtable_requests_month_forecast",
                    "This month's requests at the pace so far",
                    airtable.get("requests_month_forecast"),
                ),
                (
                    GAUGE,
                    "airtable_monthly_request_limit",
                    "[airtable] monthly_request_limit; no sample when none",
                    airtable.get("monthly_request_limit"),
                ),
                (
                    GAUGE,
                    "airtable_records",
                    "Records the base's three tables hold (when max_records is set; no sample until counted)",
                    airtable.get("records"),
                ),
                (
                    GAUGE,
                    "airtable_max_records",
                    "[airtable] max_records; no sample when none",
                    airtable.get("max_records"),
                ),
                (
                    GAUGE,
                    "airtable_warnings",
                    "Differences of the base that leave fields out of the writes (`chatledger airtable check`)",
                    len(airtable.get("warnings") or ()),
                ),
            ):
                if value is not None or name not in UNKNOWN_WHEN_NONE:
                    yield _single(kind, name, help_text, value)
        yield from _sendpulse(snap.get("sources", {}).get("sendpulse"))


def _sink_figures(sink: SinkStatus) -> dict[str, float | None]:
    """A sink's samples by their key in the snapshot (None: not reported, a disabled sink's worker figures)."""
    return {
        "pending": sink.get("pending"),
        "delivered": sink.get("delivered"),
        "dead": sink.get("dead"),
        "discarded": sink.get("discarded"),
        "oldest_pending_age_s": sink.get("oldest_pending_age_s"),
        "delivered_since_start": sink.get("delivered_since_start"),
        "failed_attempts_since_start": sink.get("failed_attempts_since_start"),
        "dead_since_start": sink.get("dead_since_start"),
    }


def _sendpulse(source: SourceStatus | None) -> Iterator[Metric]:
    """Reconciliation's counters and state (none of it when the daemon predates it)."""
    if source is None:
        return
    state = GaugeMetricFamily(
        "chatledger_sendpulse_state", "1 for SendPulse reconciliation's current state", labels=["state"]
    )
    current = source.get("state", "disabled")
    for possible in dict.fromkeys((*SENDPULSE_STATES, current)):
        state.add_metric([possible], 1 if possible == current else 0)
    yield state
    if current == "disabled":
        return
    for kind, name, help_text, value in (
        (
            COUNTER,
            "reconcile_added",
            "Messages journaled by reconciliation (the webhooks did not bring them)",
            source.get("added_total"),
        ),
        (COUNTER, "reconcile_seen", "Messages SendPulse's API listed to reconciliation", source.get("seen_total")),
        (
            COUNTER,
            "reconcile_statuses",
            "Delivery statuses (delivered, read, failed) reconciliation journaled",
            source.get("statuses_total"),
        ),
        (COUNTER, "reconcile_runs", "Reconciliation runs finished (failed ones included)", source.get("runs")),
        (COUNTER, "reconcile_failed_runs", "Reconciliation runs SendPulse's API ended", source.get("failed_runs")),
        (COUNTER, "sendpulse_requests", "Requests sent to SendPulse's API", source.get("requests_total")),
    ):
        yield _single(kind, name, help_text, value)
    if last := source.get("last_reconciled_at"):
        moment = datetime.fromisoformat(last.replace("Z", "+00:00"))
        yield _single(
            GAUGE,
            "reconcile_last_success_timestamp_seconds",
            "End of the last window reconciliation read whole (Unix time)",
            moment.timestamp(),
        )


def render(snapshot: Snapshot) -> bytes:
    """The Prometheus text of one snapshot, with the process's own figures."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(snapshot))
    ProcessCollector(registry=registry)  # resident memory, CPU, open files (from /proc; nothing elsewhere)
    return generate_latest(registry)
