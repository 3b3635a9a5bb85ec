"""`chatledger show`: one conversation, or each of a phone's, with its interactions and escalations, from
the first store that knows it (daemon.reads), and the words an operator reads it in."""

from __future__ import annotations

import re
from typing import Any

from daemon import reads
from daemon.records import INTERACTION_STATUS as USUAL_STATUS
from daemon.records import iso, parse_time

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
SOURCES = {"postgres": "PostgreSQL", "journal": "the journal", "airtable": "Airtable"}
TIMES = {
    "conversation": ("startedAt", "lastActivity"),
    "interactions": ("timestamp",),
    "escalations": ("createdAt", "resolvedAt"),
}


def _time(value: Any) -> Any:
    """A time as every store's answer gives it here (UTC, milliseconds, Z); a day (a date field) stays a day."""
    if not isinstance(value, str) or "T" not in value:
        return value
    try:
        return iso(parse_time(value))
    except ValueError:
        return value


def _times(found: dict[str, Any]) -> dict[str, Any]:
    for part, names in TIMES.items():
        for row in [found[part]] if part == "conversation" else found[part]:
            for name in names:
                row[name] = _time(row.get(name))
    return found


async def show(
    stores: reads.Stores,
    *,
    conversation: str | None = None,
    phone: str | None = None,
    limit: int = DEFAULT_LIMIT,
    down: dict[str, str] | None = None,
) -> dict[str, Any]:
    """What `chatledger show` prints, as JSON-ready data: `conversations` (each with its `source`), the
    `problems` of the stores that did not answer, why a store was `not_asked`, and an `error` when nothing
    was found. `down`: stores already known not to answer (a journal this command cannot open)."""
    down = {} if down is None else down
    not_asked: list[str] = []
    if phone is not None:
        ids, why = await reads.conversations_of_phone(stores, phone, down)
        not_asked += why
    elif conversation is not None:
        ids = [conversation]
    else:
        raise ValueError("show needs a conversation or a phone")
    shown = []
    for conversation_id in ids:
        answer = await reads.whole(stores, conversation_id, limit + 1, down)
        not_asked += [why for why in answer.not_asked if why not in not_asked]
        if answer.source is None:
            continue
        found = _times(answer.found)
        more = len(found["interactions"]) > limit or len(found["escalations"]) > limit
        shown.append(
            {
                "source": answer.source,
                "conversation": found["conversation"],
                "interactions": found["interactions"][:limit],
                "escalations": found["escalations"][:limit],
                "more": more,
            }
        )
    shown.sort(key=lambda c: (c["conversation"].get("startedAt") or "", c["conversation"]["conversationId"]))
    result: dict[str, Any] = {"conversations": shown, "problems": list(down.values()), "not_asked": not_asked}
    if not shown:
        whose = f"of phone {phone}" if phone is not None else conversation
        said = result["problems"] + not_asked
        result["error"] = f"no conversation {whose} in any store that answered" + (
            f" ({'; '.join(said)})" if said else ""
        )
    return result


# -- on a terminal ---------------------------------------------------------------------------------

_UNPRINTABLE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def _printable(text: Any) -> str:
    """A value as it can be printed: a customer's text must not drive the terminal (escape sequences)."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


def _pairs(row: dict[str, Any], names: tuple[tuple[str, str], ...]) -> str:
    return " · ".join(
        f"{label} {_printable(', '.join(value) if isinstance(value, list) else value)}"
        for key, label in names
        for value in [row.get(key)]
        if value not in (None, "", [])
    )


def _text(text: Any, indent: int) -> str:
    if text in (None, ""):
        return "(no text)"
    return ("\n" + " " * indent).join(_printable(line) for line in str(text).split("\n"))


def _interaction(row: dict[str, Any]) -> list[str]:
    direction = str(row.get("direction"))
    way = {"inbound": "in", "outbound": "out"}.get(direction, _printable(direction))
    stamp = row.get("timestamp") or "?"
    lines = [f"    {stamp}  {way:<4} {_text(row.get('content'), 4 + len(stamp) + 7)}"]
    usual = row.get("status") == USUAL_STATUS.get(direction)  # said only when it says something
    extra = _pairs(
        row
        | {
            "processingTime": f"{row['processingTime']} ms" if row.get("processingTime") is not None else None,
            "status": None if usual else row.get("status"),
        },
        (
            ("intent", "intent"),
            ("response", "response"),
            ("processingTime", "took"),
            ("status", "status"),
            ("errorMessage", "error"),
        ),
    )
    if extra:
        lines.append(f"    {'':<{len(stamp)}}       {extra}")
    return lines


def _escalation(row: dict[str, Any]) -> list[str]:
    head = (
        f"    {row.get('createdAt') or '?'}  {_printable(row.get('ticketId') or row.get('id'))}  "
        f"{_printable(row.get('status') or '?')}  {_printable(row.get('priority') or '?')}"
    )
    lines = [f"{head}  {_text(row.get('reason'), len(head) + 2)}"]
    extra = _pairs(row, (("assignedAgent", "agent"), ("resolvedAt", "resolved"), ("notes", "notes")))
    if extra:
        lines.append(f"      {extra}")
    return lines


def render(answer: dict[str, Any]) -> str:
    """The conversations found, one block each, then a note for each store that did not answer."""
    lines: list[str] = []
    for one in answer["conversations"]:
        c = one["conversation"]
        lines.append(f"conversation {_printable(c['conversationId'])} (from {SOURCES[one['source']]})")
        head = _pairs(
            c,
            (
                ("customerPhone", "phone"),
                ("customerName", "name"),
                ("status", "status"),
                ("messageCount", "messages"),
                ("startedAt", "started"),
                ("lastActivity", "last activity"),
            ),
        )
        lines.append(f"  {head}")
        more = _pairs(
            c,
            (
                ("intent", "intent"),
                ("sentiment", "sentiment"),
                ("priority", "priority"),
                ("assignedAgent", "agent"),
                ("tags", "tags"),
            ),
        )
        if more:
            lines.append(f"  {more}")
        shown = len(one["interactions"])
        lines.append(
            f"  interactions, oldest first{f': only {shown} shown (--limit)' if one['more'] else ''}"
            if shown
            else "  no interactions"
        )
        for row in one["interactions"]:
            lines += _interaction(row)
        lines.append("  escalations" if one["escalations"] else "  no escalations")
        for row in one["escalations"]:
            lines += _escalation(row)
        lines.append("")
    for problem in answer["problems"]:
        store, _, why = problem.partition(": ")
        lines.append(f"note: {store} did not answer: {why}")
    lines += [f"note: {why}" for why in answer["not_asked"]]
    return "\n".join(lines).rstrip("\n")
