"""`chatledger recover`: Airtable's copy back into PostgreSQL, for rows PostgreSQL lost that the journal
no longer holds.

Airtable is read page by page (100 records a request, through the same request budget as the
daemon). Each record is read back through the base's write plan (a duration's seconds are our
milliseconds again, a date field holds the day; a field left out of the writes holds none of our
values) and becomes the row the PostgreSQL sink writes; per page, in one transaction: what is missing
is inserted, what is identical is counted as present, and a row that differs keeps PostgreSQL's
values unless prefer="airtable", which replaces the columns that differ, after copying the row to
recover_backup under the run's id (`recover --undo RUN`). Only the fields the base holds as
chatledger writes them are compared, and a field Airtable leaves empty is no difference: an empty or
an assumed value never replaces one PostgreSQL holds. A dry run makes each page's writes and rolls
them back. A selection on a field the base lacks is not sent (Airtable refuses the formula): the
report says which table was not read. Conversations come first (the other tables
reference them); a row whose conversation is in neither store gets a minimal one built from it.
Message counts, spans and statuses are then recomputed from the interactions, as delivery does, so
running it again changes nothing.
"""

from __future__ import annotations

import inspect
import json
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from loguru import logger

from daemon.events import digits_only, has_control
from daemon.records import (
    INTERACTION_STATUS,
    clean_text,
    iso,
    parse_tags,
    parse_time,
    status_key,
    status_rank,
    ticket_for,
)
from daemon.sinks.airtable_client import (
    AirtableClient,
    equals_formula,
    ids_formulas,
    pages,
    patiently,
    phone_formula,
    since_formula,
)
from daemon.sinks.airtable_fields import DATED_BY, FIELD_OF, BaseNames
from daemon.sinks.airtable_schema import BasePlan, cut_text, plan_base, read_back
from daemon.sinks.base import PermanentError, SinkError
from daemon.sinks.postgres_rows import KEYS, PostgresRows

KINDS = ("conversations", "interactions", "escalations")
PROBLEMS_KEPT = 20
DIFFS_KEPT = 1000  # rows whose differences --diff lists; the rest are counted
SHORT = 60  # characters of a value --diff shows

# The columns whose difference is a conflict; the others are derived from the interactions
# (counts, spans, status) or bookkeeping (created/updated).
COMPARED = {
    "conversations": ("customer_phone", "customer_name", "intent", "sentiment", "priority", "assigned_agent", "tags"),
    "interactions": (
        "conversation_id",
        "message_id",
        "direction",
        "content",
        "intent",
        "response",
        "processing_time_ms",
        "status",
        "error_message",
        "occurred_at",
    ),
    "escalations": (
        "ticket_id",
        "conversation_id",
        "reason",
        "priority",
        "status",
        "customer_phone",
        "assigned_agent",
        "created_at",
        "resolved_at",
        "notes",
    ),
}
TIMES = frozenset({"started_at", "last_activity", "created_at", "updated_at", "occurred_at", "resolved_at"})
PHONES = frozenset({"customer_phone"})
# A status only PostgreSQL's status event can explain: the recovered conversation gets one.
STATUS_EVENTS = {"escalated": "open_chat", "closed": "unsubscribe"}
DEFAULT_PRIORITY = "MEDIUM"  # PostgreSQL's column default (schema v2) and the bot API's


class Unselectable(SinkError):
    """The selection asked for needs a field the base does not hold as chatledger writes it: nothing was read."""


class Unusable(ValueError):
    """An Airtable record that cannot become a row (a key missing or unusable, a required value missing)."""


@dataclass(frozen=True)
class Selection:
    conversation: str | None = None
    phone: str | None = None
    since: str | None = None  # journal time text
    everything: bool = False

    def __post_init__(self) -> None:
        given = [
            option
            for option, value in (
                ("--conversation", self.conversation),
                ("--phone", self.phone),
                ("--since", self.since),
                ("--all", self.everything),
            )
            if value
        ]
        if not given:
            raise ValueError("one of the arguments --conversation --phone --since --all is required")
        if len(given) > 1:
            raise ValueError(f"argument {given[1]}: not allowed with argument {given[0]}")
        if self.phone and not re.fullmatch(r"[0-9]+", self.phone):
            raise ValueError(f"--phone {self.phone!r}: digits only")

    def describe(self) -> str:
        if self.conversation:
            return f"conversation {self.conversation}"
        if self.phone:
            return f"phone {self.phone}"
        if self.since:
            return f"activity since {self.since}"
        return "everything"


@dataclass
class Tally:
    read: int = 0
    inserted: int = 0
    present: int = 0
    conflicting: int = 0
    replaced: int = 0
    unusable: int = 0
    built: int = 0  # conversations built from their rows: in neither store


@dataclass
class Report:
    tallies: dict[str, Tally] = field(default_factory=lambda: {kind: Tally() for kind in KINDS})
    problems: list[str] = field(default_factory=list)
    dry_run: bool = False  # the counts are what a run would do: nothing was written
    run_id: str | None = None  # the rows this run replaced are kept under it (None: none were)
    diffs: list[dict[str, Any]] = field(default_factory=list)  # with --diff: per conflicting row
    diffs_left_off: int = 0

    def problem(self, text: str) -> None:
        if len(self.problems) < PROBLEMS_KEPT:
            self.problems.append(text)
        logger.warning("recover: {}", text)

    def difference(self, kind: str, key: str, fields: dict[str, list[str | None]]) -> None:
        if len(self.diffs) < DIFFS_KEPT:
            self.diffs.append({"table": kind, "key": key, "fields": fields})
        else:
            self.diffs_left_off += 1

    def as_dict(self, diffs: bool = True) -> dict[str, Any]:
        """The report as JSON data; diffs=False for a progress line."""
        out = {
            "tables": {kind: asdict(t) for kind, t in self.tallies.items()},
            "problems": self.problems,
            "dry_run": self.dry_run,
            "run_id": self.run_id,
        }
        if diffs:
            out.update(diffs=self.diffs, diffs_left_off=self.diffs_left_off)
        return out


def short(value: Any) -> str | None:
    """A value for --diff: its text, the first SHORT characters of a long one and its length."""
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= SHORT else f"{text[:SHORT]}… ({len(text):,} characters)"


def new_run_id(now: datetime) -> str:
    """A recover run's name in the backup table: its start in UTC and a few random hex digits."""
    return now.strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(2)


# -- Airtable record -> PostgreSQL row (pure) ---------------------------------------------------------


class _Cells:
    """A record's cells (by our field names) read by the PostgreSQL column each copies (airtable_fields.FIELD_OF)."""

    def __init__(self, kind: str, fields: dict[str, Any]):
        self._names, self._fields = FIELD_OF[kind], fields

    def name(self, column: str) -> str:
        return self._names[column]

    def get(self, column: str) -> Any:
        return self._fields.get(self._names[column])


def _text(cells: _Cells, column: str) -> str | None:
    """The field as text, NUL replaced (PostgreSQL text cannot hold it); a multiple select's choices
    comma-separated."""
    value = cells.get(column)
    if isinstance(value, list):
        value = ", ".join(str(item) for item in value)
    if value is None or value == "":
        return None
    return clean_text(value if isinstance(value, str) else str(value))


def _key(cells: _Cells, column: str, required: bool = True) -> str | None:
    """An id field: a control character in it is not cleaned (the id would change) but refused."""
    value = cells.get(column)
    text = None if value is None or value == "" else value if isinstance(value, str) else str(value)
    if text is None:
        if required:
            raise Unusable(f"no {cells.name(column)}")
        return None
    if has_control(text):
        raise Unusable(f"{cells.name(column)} {text!r} holds a control character")
    return text


def _time(cells: _Cells, column: str, required: bool = False) -> str | None:
    """ISO 8601 in UTC; a date field without time stays a bare date (YYYY-MM-DD), which PostgreSQL reads as
    midnight UTC and the comparison reads as that day only."""
    value = _text(cells, column)
    if value is None:
        if required:
            raise Unusable(f"no {cells.name(column)}")
        return None
    try:
        moment = parse_time(value)
    except ValueError:
        raise Unusable(f"{cells.name(column)} is not a date: {value!r}") from None
    if _date_only(value):
        return value
    return iso(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


def _date_only(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value) is not None


def _utc(text: str) -> datetime:
    moment = parse_time(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _int(cells: _Cells, column: str) -> int | None:
    value = cells.get(column)
    if value is None or value == "":
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError):
        raise Unusable(f"{cells.name(column)} is not a number: {value!r}") from None


def _required(cells: _Cells, column: str) -> str:
    value = _text(cells, column)
    if value is None:
        raise Unusable(f"no {cells.name(column)}")
    return value


def _metadata(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = _cleaned(json.loads(text))
    except ValueError:
        return {"airtable_metadata": clean_text(text)}  # kept as it was typed
    return value if isinstance(value, dict) else {"airtable_metadata": value}


def _cleaned(value: Any) -> Any:
    """Parsed JSON with every string made storable (a \\u0000 escape becomes a NUL when parsed)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return [_cleaned(item) for item in value]
    if isinstance(value, dict):
        return {clean_text(k): _cleaned(item) for k, item in value.items()}
    return value


def conversation_row(fields: dict[str, Any], now: str) -> dict[str, Any]:
    cells = _Cells("conversations", fields)
    status = _text(cells, "status")
    status = status if status in ("active", "closed", "escalated") else "active"
    last_activity = _time(cells, "last_activity")
    metadata = _metadata(_text(cells, "metadata"))
    title = STATUS_EVENTS.get(status)
    if title and last_activity:
        metadata.update(
            status_event=title, status_event_at=last_activity, status_key=status_key(_utc(last_activity), "")
        )
    return {
        "conversation_id": _key(cells, "conversation_id"),
        "customer_phone": digits_only(cells.get("customer_phone")),
        "customer_name": _text(cells, "customer_name"),
        "status": status,
        "started_at": _time(cells, "started_at"),
        "last_activity": last_activity,
        "message_count": _int(cells, "message_count") or 0,
        "intent": _text(cells, "intent"),
        "sentiment": _text(cells, "sentiment"),
        "priority": _text(cells, "priority"),
        "assigned_agent": _text(cells, "assigned_agent"),
        "tags": parse_tags(_text(cells, "tags")),
        "metadata": metadata,
        "created_at": _time(cells, "created_at") or now,
        "updated_at": _time(cells, "updated_at") or now,
    }


def interaction_row(fields: dict[str, Any], now: str) -> dict[str, Any]:
    cells = _Cells("interactions", fields)
    direction = _required(cells, "direction")
    if direction not in ("inbound", "outbound"):
        raise Unusable(f"{cells.name('direction')} is {direction!r}, not inbound or outbound")
    return {
        "interaction_id": _key(cells, "interaction_id"),
        "conversation_id": _key(cells, "conversation_id"),
        "message_id": _key(cells, "message_id", required=False),
        "direction": direction,
        "content": _text(cells, "content"),
        "intent": _text(cells, "intent"),
        "response": _text(cells, "response"),
        "processing_time_ms": _int(cells, "processing_time_ms"),
        "status": _text(cells, "status"),
        "error_message": _text(cells, "error_message"),
        "customer_phone": None,
        "occurred_at": _time(cells, "occurred_at", required=True),
        "created_at": _time(cells, "created_at") or now,
    }


def escalation_row(fields: dict[str, Any], now: str) -> dict[str, Any]:
    cells = _Cells("escalations", fields)
    return {
        "escalation_id": _key(cells, "escalation_id"),
        "ticket_id": _key(cells, "ticket_id", required=False),
        "conversation_id": _key(cells, "conversation_id"),
        "reason": _text(cells, "reason"),
        "priority": _text(cells, "priority"),
        "status": _text(cells, "status"),
        "customer_phone": digits_only(cells.get("customer_phone")),
        "assigned_agent": _text(cells, "assigned_agent"),
        "created_at": _time(cells, "created_at", required=True),
        "resolved_at": _time(cells, "resolved_at"),
        "notes": _text(cells, "notes"),
    }


def with_defaults(kind: str, row: dict[str, Any]) -> dict[str, Any]:
    """The row as inserted: what PostgreSQL requires and Airtable left empty, as delivery sets it. Only an insert
    takes these: an assumed value is never compared, nor does it replace one PostgreSQL holds."""
    if kind == "conversations":
        return {**row, "priority": row["priority"] or DEFAULT_PRIORITY}
    if kind == "interactions":
        return {**row, "status": row["status"] or INTERACTION_STATUS[row["direction"]]}
    return {
        **row,
        "ticket_id": row["ticket_id"] or ticket_for(row["escalation_id"]),
        "priority": row["priority"] or DEFAULT_PRIORITY,
        "status": row["status"] or "pending",
    }


ROWS: dict[str, Callable[[dict[str, Any], str], dict[str, Any]]] = {
    "conversations": conversation_row,
    "interactions": interaction_row,
    "escalations": escalation_row,
}


def built_conversation(row: dict[str, Any], now: str) -> dict[str, Any]:
    """A minimal conversation for a row whose conversation neither store has."""
    at = row.get("occurred_at") or row.get("created_at") or now
    return {
        "conversation_id": row["conversation_id"],
        "customer_phone": row.get("customer_phone"),
        "customer_name": None,
        "status": "active",
        "started_at": at,
        "last_activity": at,
        "message_count": 0,
        "intent": None,
        "sentiment": None,
        "priority": DEFAULT_PRIORITY,
        "assigned_agent": None,
        "tags": [],
        "metadata": {"recovered": "built from its rows: the conversation was in neither store"},
        "created_at": now,
        "updated_at": now,
    }


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == []


def _same(column: str, ours: Any, theirs: Any) -> bool:
    if _empty(ours) and _empty(theirs):
        return True
    if ours is None or theirs is None:
        return False
    if column in TIMES:
        if _date_only(ours) or _date_only(theirs):  # a date field without time: the day is all it holds
            return _utc(str(ours)).date() == _utc(str(theirs)).date()
        return _milliseconds(_utc(str(ours))) == _milliseconds(_utc(str(theirs)))
    if column in PHONES:
        return digits_only(ours) == digits_only(theirs)
    if isinstance(ours, str) and isinstance(theirs, str) and ours != theirs:
        return cut_text(theirs) == ours  # a text longer than a cell holds was written cut, with a marker
    return bool(ours == theirs)


def _milliseconds(moment: datetime) -> datetime:
    """Airtable keeps a time to the millisecond: finer digits are not a difference."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def compared(kind: str, plan: BasePlan | None = None) -> tuple[str, ...]:
    """The columns compared: those whose field the base holds as chatledger writes it (all without a plan)."""
    table = plan.tables.get(kind) if plan is not None else None
    if table is None:
        return COMPARED[kind]
    return tuple(c for c in COMPARED[kind] if FIELD_OF[kind][c] in table.written)


def differences(
    kind: str, airtable: dict[str, Any], postgres: dict[str, Any], columns: Sequence[str] | None = None
) -> list[str]:
    """The columns where Airtable's row holds a value and PostgreSQL's differs (`airtable` first: a text it holds
    cut is PostgreSQL's). A field Airtable leaves empty tells nothing: it is not a difference, and so never
    replaces what PostgreSQL holds."""
    return [
        c
        for c in (COMPARED[kind] if columns is None else columns)
        if not _empty(airtable.get(c))
        and not _same(c, airtable.get(c), postgres.get(c))
        and not (kind == "interactions" and c == "status" and _behind(airtable[c], postgres.get(c)))
    ]


def _behind(theirs: Any, ours: Any) -> bool:
    """An interaction's status never moves back (records.STATUS_ORDER), not even by `recover`."""
    return status_rank(theirs) < status_rank(ours)


# -- the run --------------------------------------------------------------------------------------

Progress = Callable[[Report], Any]  # may return an awaitable


class Recovery:
    def __init__(
        self,
        client: AirtableClient,
        tables: dict[str, str],
        pg: PostgresRows,
        *,
        prefer: str = "postgres",
        dry_run: bool = False,
        diff: bool = False,
        progress: Progress | None = None,
    ):
        self.client = client
        self.tables = BaseNames.of(tables)
        self.pg = pg
        self.prefer = prefer
        self.dry_run = dry_run
        self.diff = diff
        self.progress = progress or (lambda report: None)
        self.report = Report(dry_run=dry_run)
        started = datetime.now(UTC)
        self.now = iso(started)
        self.run_id = new_run_id(started)
        self._conversations: set[str] = set()  # in PostgreSQL now (in a dry run: or as a run would have them)
        # A dry run writes in transactions it rolls back: the conversations a run would have inserted are
        # inserted again in each later one, so that what refers to them is tried as a run would.
        self._staged: dict[str, dict[str, Any]] = {}
        self._schema: list[dict[str, Any]] | None = None  # the base's tables; None: the token may not read them
        self._plan: BasePlan | None = None

    @property
    def plan(self) -> BasePlan:
        """The base's write plan, read at the start of `run`."""
        if self._plan is None:
            raise RuntimeError("the base's plan is read by run() first")
        return self._plan

    async def run(self, selection: Selection) -> Report:
        self._schema = await patiently(self.client.schema)
        self._plan = plan_base(self._schema, self.tables)  # without the schema, the documented base's
        self.client.plans.remember(self.tables, self._plan)
        conversations = await self._table("conversations", await self._conversation_formulas(selection))
        if selection.conversation:
            conversations = [selection.conversation]
        for kind in ("interactions", "escalations"):
            if selection.conversation or selection.phone:
                if self._selectable(kind, FIELD_OF[kind]["conversation_id"], "by conversation"):
                    await self._table(kind, ids_formulas(self.tables.field_for(kind, "conversation_id"), conversations))
            elif selection.since:
                if self._selectable(kind, DATED_BY[kind], "by time"):
                    await self._table(kind, [await self._since_formula(kind, selection.since)])
            else:
                await self._table(kind, [None])
        return self.report

    async def _conversation_formulas(self, selection: Selection) -> list[str | None]:
        field = partial(self.tables.field_for, "conversations")
        if selection.conversation:
            return [equals_formula(field("conversation_id"), selection.conversation)]
        if selection.phone:
            why = self.plan.unselectable(self.tables, "conversations", FIELD_OF["conversations"]["customer_phone"])
            if why:
                raise Unselectable(
                    f"--phone selects conversations by their phone, but {why}: nothing was recovered "
                    "(`chatledger airtable init` creates a missing field; --conversation ID selects "
                    "by the key)"
                )
            return [phone_formula(field("customer_phone"), selection.phone)]
        if selection.since:
            if not self._selectable("conversations", DATED_BY["conversations"], "by time"):
                return []  # the conversations of the interactions and escalations read are read by their id
            return [await self._since_formula("conversations", selection.since)]
        return [None]

    def _selectable(self, kind: str, logical: str, how: str) -> bool:
        """Whether records of `kind` can be selected by our field `logical`; if not, the report says why."""
        why = self.plan.unselectable(self.tables, kind, logical)
        if why:
            also = "; `recover --all` reads every record" if how == "by time" else ""
            self.report.problem(
                f"{why}: {kind} cannot be selected {how}, none were read (`chatledger airtable "
                f"init` creates a missing field{also})"
            )
        return why is None

    async def _since_formula(self, kind: str, since: str) -> str:
        """Records of `kind` from `since` on. A date field without time holds only the day (compared as its
        midnight), so there, and when the schema cannot be read, the selection starts at that day's start
        in UTC: a few more records are read, present ones are only counted."""
        name = self.tables.field(kind, DATED_BY[kind])
        table = next((t for t in self._schema or [] if self.tables[kind] in (t.get("id"), t.get("name"))), {})
        type_ = next((f.get("type") for f in table.get("fields", []) if f.get("name") == name), None)
        if type_ != "dateTime":
            day = _utc(since).astimezone(UTC).date()
            since = datetime(day.year, day.month, day.day, tzinfo=UTC).isoformat()
        return since_formula(name, since)

    async def _table(self, kind: str, formulas: Sequence[str | None]) -> list[str]:
        """Recover the records of one table matching any of the formulas; their conversation ids."""
        ids: list[str] = []
        for formula in formulas:
            async for page in pages(self.client, self.tables[kind], formula):
                rows = self._rows(kind, page)
                if kind != "conversations":
                    await self._ensure_conversations(rows)
                await self._apply(kind, rows)
                ids.extend(row["conversation_id"] for row in rows)
                shown = self.progress(self.report)
                if inspect.isawaitable(shown):
                    await shown
        return list(dict.fromkeys(ids))

    def _rows(self, kind: str, page: list[dict[str, Any]]) -> list[dict[str, Any]]:
        tally = self.report.tallies[kind]
        rows: dict[str, dict[str, Any]] = {}
        for record in page:
            tally.read += 1
            try:
                row = ROWS[kind](read_back(self._plan, self.tables, kind, record.get("fields", {})), self.now)
            except Unusable as exc:
                tally.unusable += 1
                self.report.problem(f"{self.tables[kind]} record {record.get('id')}: {exc}; not recovered")
                continue
            rows.setdefault(row[KEYS[kind]], row)  # a record typed twice in Airtable counts once
        return list(rows.values())

    async def _ensure_conversations(self, rows: list[dict[str, Any]]) -> None:
        """Give every row a conversation in PostgreSQL: found there, read from Airtable, or built."""
        wanted = list(
            dict.fromkeys(r["conversation_id"] for r in rows if r["conversation_id"] not in self._conversations)
        )
        if not wanted:
            return
        self._conversations.update(await self.pg.existing("conversations", wanted))
        missing = [c for c in wanted if c not in self._conversations]
        for formula in ids_formulas(self.tables.field_for("conversations", "conversation_id"), missing):
            async for page in pages(self.client, self.tables["conversations"], formula):
                await self._apply("conversations", self._rows("conversations", page))
        first: dict[str, dict[str, Any]] = {}
        for row in rows:
            first.setdefault(row["conversation_id"], row)
        built = [built_conversation(first[c], self.now) for c in missing if c not in self._conversations]
        if built:
            async with self.pg.transaction(rollback=self.dry_run):
                done = await self.pg.insert("conversations", built)
            self.report.tallies["conversations"].built += len(done)
            self._conversations.update(done)
            self._stage([row for row in built if row["conversation_id"] in done])

    def _stage(self, conversations: list[dict[str, Any]]) -> None:
        if self.dry_run:
            self._staged.update((row["conversation_id"], row) for row in conversations)

    async def _insert_staged(self, rows: list[dict[str, Any]]) -> None:
        """In a dry run's transaction: the conversations these rows need that only a run would have inserted."""
        needed = [self._staged[c] for c in dict.fromkeys(row["conversation_id"] for row in rows) if c in self._staged]
        await self.pg.insert("conversations", needed)

    async def _apply(self, kind: str, rows: list[dict[str, Any]]) -> None:
        """Apply rows in one transaction; when PostgreSQL refuses their data, one by one, so that only
        the rows it refuses are left out (and reported)."""
        if not rows:
            return
        try:
            await self._apply_together(kind, rows)
        except PermanentError as exc:
            if len(rows) > 1:
                for row in rows:
                    await self._apply(kind, [row])
                return
            self.report.tallies[kind].unusable += 1
            self.report.problem(f"{kind} {rows[0][KEYS[kind]]}: PostgreSQL refused it ({exc}); not recovered")

    async def _apply_together(self, kind: str, rows: list[dict[str, Any]]) -> None:
        tally = self.report.tallies[kind]
        key = KEYS[kind]
        async with self.pg.transaction(rollback=self.dry_run):
            if kind != "conversations":
                await self._insert_staged(rows)
            existing = await self.pg.existing(kind, [row[key] for row in rows])
            new = [with_defaults(kind, row) for row in rows if row[key] not in existing]
            inserted = await self.pg.insert(kind, new)
            columns = compared(kind, self._plan)
            differ: dict[str, Sequence[str]] = {
                row[key]: differences(kind, row, existing[row[key]], columns) for row in rows if row[key] in existing
            }
            # only the columns that differ: a text Airtable holds cut, a date field's day stay PostgreSQL's
            replace = {k: d for k, d in differ.items() if d} if self.prefer == "airtable" else {}
            await self.pg.replace(kind, [row for row in rows if row[key] in replace], replace, self.run_id)
            changed = [row for row in rows if row[key] in inserted or row[key] in replace]
            if kind == "interactions":
                await self.pg.fill_interaction_phones([row[key] for row in changed])
            await self.pg.refresh(list(dict.fromkeys(row["conversation_id"] for row in changed)))
        # committed (or, in a dry run, done and rolled back): only now is anything counted
        tally.inserted += len(inserted)
        for row in new:
            if row[key] not in inserted:
                tally.conflicting += 1
                self.report.problem(
                    f"{kind} {row[key]}: a unique value (message or ticket id) belongs to "
                    "another row in PostgreSQL; not recovered"
                )
        tally.present += sum(1 for differs in differ.values() if not differs)
        tally.conflicting += sum(1 for differs in differ.values() if differs)
        tally.replaced += len(replace)
        if replace and not self.dry_run:
            self.report.run_id = self.run_id
        if self.diff:
            airtable = {row[key]: row for row in rows}
            for k, differing in differ.items():
                if differing:
                    self.report.difference(
                        kind, k, {c: [short(airtable[k].get(c)), short(existing[k].get(c))] for c in differing}
                    )
        if kind == "conversations":
            self._conversations.update(row[key] for row in rows if row[key] in inserted or row[key] in existing)
            self._stage([row for row in new if row[key] in inserted])
