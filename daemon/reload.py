"""SIGHUP: compare the config file read again with the running one, apply what can change while
running, name what needs a restart.

Pure, but for `apply_live` (which sets the running config's values in place: the webhook app and the
loops hold its sections and read them as they go), `retune_airtable` and `carry_counters`. The daemon
does the rest: the log, the alert targets, replacing a sink built from changed keys, and SendPulse
reconciliation (switched on or off, its client replaced, or woken to run with the new keys).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from daemon.config import AirtableConfig, Config
from daemon.sinks.airtable import AirtableSink
from daemon.sinks.airtable_schema import parse_field_mapping

if TYPE_CHECKING:
    from daemon.delivery import DeliveryWorker

SINKS = ("postgres", "airtable")

# What a sink is built from: a change replaces that sink (its worker finishes what is in flight first).
REBUILDS: dict[str, frozenset[str]] = {
    "postgres": frozenset({"dsn"}),
    "airtable": frozenset(
        {"api_key", "base_id", "endpoint_url", "conversations_table", "interactions_table", "escalations_table"}
    ),
}
# What the SendPulse client is built from: a change replaces it (a run in progress finishes with the old one).
SENDPULSE_CLIENT = frozenset({"client_id", "client_secret", "api_url", "requests_per_second"})
# Read as they go, or set on the running object by the daemon; any key not here needs a restart: the
# listeners, the socket and the journal are opened once, the HTTP app keeps its tokens, path, body
# size and timeouts from its start, and a new PostgreSQL schema would split the data in two.
LIVE: dict[str, frozenset[str]] = {
    "server": frozenset({"max_elements_per_request"}),
    "journal": frozenset({"retention_days"}),
    "postgres": REBUILDS["postgres"],
    "airtable": REBUILDS["airtable"]
    | {"requests_per_second", "monthly_request_limit", "linger_s", "max_records", "retention_days", "fields"},
    "sendpulse": SENDPULSE_CLIENT | {"bot_ids", "reconcile_interval_s", "first_window_h", "status_window_h"},
    "alerts": frozenset({"command", "webhook_url", "pending_age_threshold_s", "min_interval_s"}),
    "log": frozenset({"level", "json_"}),
}


@dataclass(frozen=True)
class Key:
    section: str
    attribute: str  # the model's name for it (schema_, json_)
    name: str  # as the file spells it: "[log] json", "[airtable.fields]"


@dataclass
class ReloadPlan:
    live: list[Key] = field(default_factory=list)
    restart: list[str] = field(default_factory=list)  # key names, kept at their running values
    switched: list[str] = field(default_factory=list)  # "airtable would be switched on", ...
    rebuild: list[str] = field(default_factory=list)  # sinks to replace
    # what reconciliation does: "on", "off", "replace" (its client), "retune" (the next run reads the new
    # keys), "" (nothing changed, or it stays off)
    sendpulse: str = ""

    @property
    def applied(self) -> list[str]:
        return [key.name for key in self.live]


def changed_keys(running: Config, fresh: Config) -> list[Key]:
    """The keys whose values differ, in the config's order; secrets compared by value."""
    keys = []
    for section in Config.model_fields:
        old, new = getattr(running, section), getattr(fresh, section)
        for attribute, info in type(old).model_fields.items():
            if _value(getattr(old, attribute)) != _value(getattr(new, attribute)):
                name = f"[{section}.{attribute}]" if attribute == "fields" else f"[{section}] {info.alias or attribute}"
                keys.append(Key(section, attribute, name))
    return keys


def _value(value: Any) -> Any:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def plan_reload(running: Config, fresh: Config) -> ReloadPlan:
    """Sort the changed keys: applied live, replacing a sink, or needing a restart."""
    plan = ReloadPlan()
    switched = {sink for sink in SINKS if getattr(running, sink).enabled != getattr(fresh, sink).enabled}
    for sink in switched:
        plan.switched.append(f"{sink} would be switched {'on' if getattr(fresh, sink).enabled else 'off'}")
    for key in changed_keys(running, fresh):
        # switching a sink on or off takes all of its section with it: half of a new sink's keys
        # beside half of the old one's would be neither
        if key.section in switched or key.attribute not in LIVE.get(key.section, ()):
            plan.restart.append(key.name)
            continue
        plan.live.append(key)
        if (
            key.attribute in REBUILDS.get(key.section, ())
            and getattr(running, key.section).enabled
            and key.section not in plan.rebuild
        ):
            plan.rebuild.append(key.section)
    plan.switched.sort(key=lambda text: SINKS.index(text.split()[0]))
    plan.sendpulse = _sendpulse_change(running, fresh, plan)
    return plan


def _sendpulse_change(running: Config, fresh: Config, plan: ReloadPlan) -> str:
    was, now = running.sendpulse.enabled, fresh.sendpulse.enabled
    changed = {key.attribute for key in plan.live if key.section == "sendpulse"}
    if was != now:
        return "on" if now else "off"
    if not now or not changed:
        return ""
    return "replace" if changed & SENDPULSE_CLIENT else "retune"


def apply_live(running: Config, fresh: Config, plan: ReloadPlan) -> None:
    """Set the running config's live keys to the fresh values, in place (its sections stay the same objects)."""
    for key in plan.live:
        setattr(getattr(running, key.section), key.attribute, getattr(getattr(fresh, key.section), key.attribute))


def describe(plan: ReloadPlan) -> tuple[str, str]:
    """The WARNING (empty when nothing needs a restart) and the INFO line a reload logs: names only."""
    warning = ""
    if plan.restart:
        why = (
            f" ({'; '.join(plan.switched)}: the journal is opened with the sinks enabled at start)"
            if plan.switched
            else ""
        )
        warning = f"needs a restart: {', '.join(plan.restart)}{why}; the running values stay in effect"
    if plan.live:
        replaced = plan.rebuild + (["the SendPulse client"] if plan.sendpulse == "replace" else [])
        notes = [f"replaced: {', '.join(replaced)}"] if replaced else []
        if plan.sendpulse in ("on", "off"):
            notes.append(f"SendPulse reconciliation switched {plan.sendpulse}")
        info = f"SIGHUP applied: {', '.join(plan.applied)}" + "".join(f" ({note})" for note in notes)
    else:
        info = "nothing applied" if plan.restart else "nothing changed"
    return warning, info


def retune_airtable(worker: DeliveryWorker, settings: AirtableConfig, live: set[str]) -> None:
    """Set the running Airtable sink's (and its worker's) live [airtable] keys that `live` names."""
    sink = worker.sink
    if not isinstance(sink, AirtableSink):
        return
    if "[airtable] requests_per_second" in live:
        sink.set_rate(settings.requests_per_second)
    if "[airtable] max_records" in live:
        sink.set_max_records(settings.max_records)
    if "[airtable] linger_s" in live:
        sink.linger_s = worker.linger_s = settings.linger_s
    if "[airtable.fields]" in live:
        sink.rename_fields(parse_field_mapping(settings.fields))


def carry_counters(old: DeliveryWorker, new: DeliveryWorker) -> None:
    """A replacing worker and its sink go on counting where the replaced ones were: the metrics are counters
    since start, not since a SIGHUP."""
    new.delivered_since_start = old.delivered_since_start
    new.dead_since_start = old.dead_since_start
    new.failed_attempts = old.failed_attempts
    if isinstance(old.sink, AirtableSink) and isinstance(new.sink, AirtableSink):
        new.sink.carry_budget(old.sink)
