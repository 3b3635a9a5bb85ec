"""The documented base: its tables, each table's key, and every field chatledger writes (the type
`airtable init` creates, and the PostgreSQL column of the same row it copies); and the operator's names
for them (BaseNames, from `[airtable.fields]`).

The one statement of Airtable's field names. The sink's writes, the schema planner, recover, forget,
retention and the bot API's reads name a field through this table: by the column it copies (FIELD_OF)
or by the constants below. Pure and free of pyairtable (airtable_client's), so that loading the
config, which checks `[airtable.fields]` against it, stays cheap for every command.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# What chatledger holds for a field, whatever type the base gives it.
TEXT, CHOICE, NUMBER, TIME, TAGS = "text", "choice", "number", "time", "tags"

DATE_OPTIONS = {"timeZone": "utc", "dateFormat": {"name": "iso"}, "timeFormat": {"name": "24hour"}}
PRIORITIES = ("LOW", "MEDIUM", "HIGH", "CRITICAL")


@dataclass(frozen=True)
class FieldSpec:
    """A field chatledger writes: its name, the PostgreSQL column it copies, the type `airtable init`
    creates, and what chatledger holds."""

    name: str
    column: str
    type: str
    choices: tuple[str, ...] = ()
    value: str = TEXT
    unit: str | None = None  # "ms": a duration field holds seconds

    def config(self, name: str | None = None) -> dict[str, Any]:
        """The metadata-API field config that creates it (under `name`, the operator's, if given)."""
        out: dict[str, Any] = {"name": name or self.name, "type": self.type}
        if self.type == "number":
            out["options"] = {"precision": 0}
        elif self.type == "dateTime":
            out["options"] = DATE_OPTIONS
        elif self.type == "singleSelect":
            out["options"] = {"choices": [{"name": c} for c in self.choices]}
        return out


def _text(name: str, column: str) -> FieldSpec:
    return FieldSpec(name, column, "singleLineText")


def _long(name: str, column: str, value: str = TEXT) -> FieldSpec:
    return FieldSpec(name, column, "multilineText", value=value)


def _phone(name: str, column: str) -> FieldSpec:
    return FieldSpec(name, column, "phoneNumber")


def _date(name: str, column: str) -> FieldSpec:
    return FieldSpec(name, column, "dateTime", value=TIME)


def _number(name: str, column: str, unit: str | None = None) -> FieldSpec:
    return FieldSpec(name, column, "number", value=NUMBER, unit=unit)


def _select(name: str, column: str, *choices: str) -> FieldSpec:
    return FieldSpec(name, column, "singleSelect", choices, value=CHOICE)


# What chatledger writes, in the types it prefers (`airtable init` creates these): the first field of
# each table is its primary field and upsert key.
TABLES: dict[str, tuple[FieldSpec, ...]] = {
    "conversations": (
        _text("ConversationId", "conversation_id"),
        _phone("CustomerPhone", "customer_phone"),
        _text("CustomerName", "customer_name"),
        _select("Status", "status", "active", "closed", "escalated"),
        _date("StartedAt", "started_at"),
        _date("LastActivity", "last_activity"),
        _number("MessageCount", "message_count"),
        _text("Intent", "intent"),
        _text("Sentiment", "sentiment"),
        _select("Priority", "priority", *PRIORITIES),
        _text("AssignedAgent", "assigned_agent"),
        _long("Tags", "tags", TAGS),
        _long("Metadata", "metadata"),
        _date("CreatedAt", "created_at"),
        _date("UpdatedAt", "updated_at"),
    ),
    "interactions": (
        _text("InteractionId", "interaction_id"),
        _text("ConversationId", "conversation_id"),
        _text("MessageId", "message_id"),
        _select("Direction", "direction", "inbound", "outbound"),
        _long("Content", "content"),
        _text("Intent", "intent"),
        _long("Response", "response"),
        _number("ProcessingTime", "processing_time_ms", "ms"),
        _select("Status", "status", "sent", "delivered", "read", "failed"),
        _long("ErrorMessage", "error_message"),
        _date("Timestamp", "occurred_at"),
        _date("CreatedAt", "created_at"),
    ),
    "escalations": (
        _text("EscalationId", "escalation_id"),
        _text("TicketId", "ticket_id"),
        _text("ConversationId", "conversation_id"),
        _long("Reason", "reason"),
        _select("Priority", "priority", *PRIORITIES),
        _select("Status", "status", "pending", "assigned", "resolved"),
        _phone("CustomerPhone", "customer_phone"),
        _text("AssignedAgent", "assigned_agent"),
        _date("CreatedAt", "created_at"),
        _date("ResolvedAt", "resolved_at"),
        _long("Notes", "notes"),
    ),
}
KEYS = {kind: fields[0].name for kind, fields in TABLES.items()}
# kind -> PostgreSQL column -> our field that copies it
FIELD_OF = {kind: {spec.column: spec.name for spec in specs} for kind, specs in TABLES.items()}
# The field each table's records are dated by: what `recover --since` selects on, and retention ages by.
DATED_BY = {
    kind: FIELD_OF[kind][column]
    for kind, column in (
        ("conversations", "last_activity"),
        ("interactions", "occurred_at"),
        ("escalations", "created_at"),
    )
}
# The tables' names in the documentation, as `[airtable.fields]` keys name them ("Interactions.Content").
TITLES = {"conversations": "Conversations", "interactions": "Interactions", "escalations": "Escalations"}
KINDS_BY_TITLE = {title: kind for kind, title in TITLES.items()}


# A field's value that empties its cell in the base (Airtable takes null for a field of any type); the writes
# leave out what they do not know instead, so that an upsert never clears what an operator typed.
CLEARED = None


def as_fields(kind: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """A row of `kind` by PostgreSQL column as our fields (every column must have one)."""
    return {FIELD_OF[kind][column]: value for column, value in row.items()}


class BaseNames(dict[str, str]):
    """kind -> the table's name in the base, with the operator's names for fields ([airtable.fields])."""

    def __init__(self, tables: Mapping[str, str], fields: Mapping[str, Mapping[str, str]] | None = None):
        super().__init__(tables)
        self.fields = {kind: dict((fields or {}).get(kind, {})) for kind in TABLES}

    @classmethod
    def of(cls, names: Mapping[str, str]) -> BaseNames:
        return names if isinstance(names, BaseNames) else cls(names)

    def field(self, kind: str, logical: str) -> str:
        """The base's name for one of our fields."""
        return self.fields[kind].get(logical, logical)

    def field_for(self, kind: str, column: str) -> str:
        """The base's name for our field that copies PostgreSQL's `column`."""
        return self.field(kind, FIELD_OF[kind][column])

    def same(self, other: Mapping[str, str]) -> bool:
        """The same tables and mapped fields (dict equality alone ignores the fields)."""
        return dict(self) == dict(other) and self.fields == BaseNames.of(other).fields

    def logical(self, kind: str, cells: Mapping[str, Any]) -> dict[str, Any]:
        """A record's cells under our field names (what the base calls them mapped back)."""
        return {
            spec.name: cells[self.field(kind, spec.name)]
            for spec in TABLES[kind]
            if self.field(kind, spec.name) in cells
        }
