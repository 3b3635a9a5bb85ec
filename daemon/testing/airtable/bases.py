"""The operators' base as their documentation describes it, field types included (issue 13).

"date" there is an Airtable date field with or without "include time": `dates` picks `date` (no
time), `dateTime`, or `mixed` (the first date field of each table with time, the others without).
Escalations.Reason is a single select with no choices listed. Built straight into the model (no API
call, no rate limit), as an operator builds it in Airtable's UI.
"""

from __future__ import annotations

from typing import Any

from daemon.testing.airtable.model import COLORS, Base, Field, Table, new_id

DATE = "date"  # stands for the documented "date" field
PRIORITIES = ("LOW", "MEDIUM", "HIGH", "CRITICAL")

DOCUMENTED: dict[str, list[tuple[Any, ...]]] = {
    "Conversations": [
        ("ConversationId", "singleLineText"),
        ("CustomerPhone", "phoneNumber"),
        ("CustomerName", "singleLineText"),
        ("Status", "singleSelect", ("active", "closed", "escalated")),
        ("StartedAt", DATE),
        ("LastActivity", DATE),
        ("MessageCount", "number"),
        ("Intent", "singleLineText"),
        ("Sentiment", "singleLineText"),
        ("Priority", "singleSelect", PRIORITIES),
        ("AssignedAgent", "singleLineText"),
        ("Tags", "multilineText"),
        ("Metadata", "multilineText"),
        ("CreatedAt", DATE),
        ("UpdatedAt", DATE),
    ],
    "Interactions": [
        ("InteractionId", "singleLineText"),
        ("ConversationId", "singleLineText"),
        ("MessageId", "singleLineText"),
        ("Direction", "singleSelect", ("inbound", "outbound")),
        ("Content", "multilineText"),
        ("Intent", "singleLineText"),
        ("Response", "multilineText"),
        ("ProcessingTime", "number"),
        ("Status", "singleSelect", ("sent", "delivered", "read", "failed")),
        ("ErrorMessage", "multilineText"),
        ("Timestamp", DATE),
        ("CreatedAt", DATE),
    ],
    "Escalations": [
        ("EscalationId", "singleLineText"),
        ("TicketId", "singleLineText"),
        ("ConversationId", "singleLineText"),
        ("Reason", "singleSelect", ()),
        ("Priority", "singleSelect", PRIORITIES),
        ("Status", "singleSelect", ("pending", "assigned", "resolved")),
        ("CustomerPhone", "phoneNumber"),
        ("AssignedAgent", "singleLineText"),
        ("CreatedAt", DATE),
        ("ResolvedAt", DATE),
        ("Notes", "multilineText"),
    ],
}
DATE_TYPES = ("date", "dateTime", "mixed")


def _options(type_: str, choices: tuple[str, ...]) -> dict[str, Any] | None:
    """The options Airtable's schema shows for a field of this type."""
    if type_ == "number":
        return {"precision": 0}
    if type_ == "date":
        return {"dateFormat": {"name": "local", "format": "l"}}
    if type_ == "dateTime":
        return {
            "timeZone": "client",
            "dateFormat": {"name": "local", "format": "l"},
            "timeFormat": {"name": "12hour", "format": "h:mma"},
        }
    if type_ == "singleSelect":
        return {
            "choices": [
                {"id": new_id("sel"), "name": c, "color": COLORS[i % len(COLORS)]} for i, c in enumerate(choices)
            ]
        }
    return None


def documented_base(base: Base, dates: str = "date") -> Base:
    """Add the three documented tables to `base` (which must not have them yet)."""
    if dates not in DATE_TYPES:
        raise ValueError(f"dates must be one of {', '.join(DATE_TYPES)}")
    for table_name, specs in DOCUMENTED.items():
        fields = []
        seen_date = False
        for name, type_, *rest in specs:
            if type_ == DATE:
                type_ = "dateTime" if dates == "dateTime" or (dates == "mixed" and not seen_date) else "date"
                seen_date = True
            fields.append(Field(new_id("fld"), name, type_, _options(type_, rest[0] if rest else ())))
        assert base.table(table_name) is None, f"{table_name} exists already"
        base.tables.append(Table(new_id("tbl"), table_name, fields))
    return base


def formula_options(formula: str = "1") -> dict[str, Any]:
    """The options Airtable's schema shows for a formula field (its result text)."""
    return {"formula": formula, "isValid": True, "referencedFieldIds": [], "result": {"type": "singleLineText"}}
