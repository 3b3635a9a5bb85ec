"""How chatledger writes to an operator's Airtable base: under which names, and in which form.

The fields chatledger knows are fixed (airtable_fields.TABLES); the operator's base is not. Its field
names can be mapped in `[airtable.fields]` (parse_field_mapping, BaseNames), and from the base's schema
(the metadata API) each table gets a write plan: every field chatledger knows either goes to an actual
field with a converter into the form that field's type takes (and its inverse, for what reads Airtable
back: recover, the API), or is left out with the reason. Pure: no I/O, no pyairtable.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from daemon.records import iso, parse_tags, tags_text
from daemon.sinks.airtable_fields import (
    CHOICE,
    CLEARED,
    KEYS,
    KINDS_BY_TITLE,
    NUMBER,
    TABLES,
    TAGS,
    TEXT,
    TIME,
    TITLES,
    BaseNames,
    FieldSpec,
)

# Airtable's cell limit for text (https://support.airtable.com/using-rich-text-with-airtable).
MAX_CELL_TEXT = 100_000
SCOPE_WARNING = (
    "the token cannot read the base's schema (HTTP 403 on the metadata API: give it the scope "
    "schema.bases:read); chatledger writes as if the base were the documented one, with typecast"
)

# What chatledger holds for a field (airtable_fields' value kinds), in words.
VALUE_WORDS = {TEXT: "text", CHOICE: "a choice", NUMBER: "a number", TIME: "a date and time", TAGS: "tags"}

TEXT_TYPES = frozenset({"singleLineText", "multilineText", "richText", "phoneNumber", "email", "url"})
# fieldsToMergeOn takes text, long text, number, select and date fields, never phone or email: our ids are text.
KEY_TYPES = frozenset({"singleLineText", "multilineText"})
NUMBER_TYPES = frozenset({"number", "currency", "percent"})
COMPUTED_TYPES = frozenset(
    {
        "formula",
        "rollup",
        "multipleLookupValues",
        "lookup",
        "count",
        "autoNumber",
        "createdTime",
        "lastModifiedTime",
        "createdBy",
        "lastModifiedBy",
        "button",
        "externalSyncSource",
        "aiText",
    }
)
TYPE_WORDS = {
    "singleLineText": "single line text",
    "multilineText": "long text",
    "richText": "rich text",
    "phoneNumber": "phone number",
    "email": "email",
    "url": "URL",
    "singleSelect": "single select",
    "multipleSelects": "multiple select",
    "number": "number",
    "currency": "currency",
    "percent": "percent",
    "duration": "duration",
    "date": "date",
    "dateTime": "date and time",
    "checkbox": "checkbox",
    "multipleAttachments": "attachment",
    "multipleRecordLinks": "linked record",
    "multipleLookupValues": "lookup",
    "autoNumber": "autonumber",
    "createdTime": "created time",
    "lastModifiedTime": "last modified time",
}


def type_words(type_: str | None) -> str:
    return TYPE_WORDS.get(type_ or "", type_ or "unknown")


# -- the operator's names ----------------------------------------------------------------------------


def parse_field_mapping(mapping: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """`[airtable.fields]` ("Interactions.Content" = "Message") as kind -> {our field: theirs}; ValueError
    naming the entry at fault."""
    out: dict[str, dict[str, str]] = {kind: {} for kind in TABLES}
    for key, name in mapping.items():
        title, dot, logical = key.partition(".")
        kind = KINDS_BY_TITLE.get(title)
        if not dot or kind is None:
            raise ValueError(
                f"{key!r}: a key is Table.Field with Table one of {', '.join(TITLES.values())} "
                "(the documented names, whatever *_table says)"
            )
        known = [spec.name for spec in TABLES[kind]]
        if logical not in known:
            raise ValueError(f"{key!r}: {title} has no field {logical!r} (its fields: {', '.join(known)})")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{key!r}: the field name in the base must not be empty")
        out[kind][logical] = name
    for kind, renamed in out.items():
        seen: dict[str, str] = {}
        for spec in TABLES[kind]:
            actual = renamed.get(spec.name, spec.name)
            other = seen.get(actual.lower())
            if other is not None:
                raise ValueError(
                    f"{TITLES[kind]}.{other} and {TITLES[kind]}.{spec.name} would both be written "
                    f"to the field {actual!r}"
                )
            seen[actual.lower()] = spec.name
    return out


# -- converters ------------------------------------------------------------------------------------


def _marker(cut: int) -> str:
    return (
        f"\n\n[chatledger: {cut:,} more characters cut here; an Airtable cell holds at most "
        f"{MAX_CELL_TEXT:,}; PostgreSQL has the whole text]"
    )


def cut_text(text: str, limit: int = MAX_CELL_TEXT) -> str:
    """The text, or its start and a visible marker when it is longer than a cell holds.

    Airtable counts as JavaScript does (UTF-16 code units, so an emoji is 2): the cut is measured in
    those units, the marker's count in characters."""
    if len(text) <= limit // 2 or (len(text) <= limit and len(text.encode("utf-16-le")) <= limit * 2):
        return text
    room = limit - len(_marker(len(text)).encode("utf-16-le")) // 2
    # a pair split by the byte cut is dropped, never half-kept
    kept = text.encode("utf-16-le")[: room * 2].decode("utf-16-le", errors="ignore")
    return kept + _marker(len(text) - len(kept))


def _as_text(value: Any) -> str:
    return cut_text(value if isinstance(value, str) else str(value))


def _moment(value: Any) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _as_date(value: Any) -> str:
    return _moment(value).astimezone(UTC).date().isoformat()


def _as_date_time(value: Any) -> str:
    return iso(_moment(value))


def _as_number(value: Any) -> Any:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else float(value)


def _as_seconds(value: Any) -> Any:
    return _as_number(value) / 1000


def _as_choice(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _as_choices(value: Any) -> list[str]:
    return [_as_choice(value)]


def _as_tag_choices(value: Any) -> list[str]:
    return parse_tags(value) if isinstance(value, str) else [str(tag) for tag in value]


# -- inverses: a cell read back as the value chatledger holds --------------------------------------
# What an operator typed that is not in the form chatledger writes is left as it is, for the reader to judge.


def _unchanged(value: Any) -> Any:
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _from_number_text(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        number = float(value.strip())
    except ValueError:
        return value
    if not math.isfinite(number):  # "nan", "inf" and "1e400" are text to Python's float() too
        return value
    return int(number) if number.is_integer() else number


def _from_seconds(value: Any) -> Any:
    # round: 1234.567 * 1000 is 1234566.9999999998
    return round(value * 1000) if _is_number(value) else value


def _from_choices(value: Any) -> Any:
    """A multiple select's choices as the text we hold (tags comma-separated, as tags_text writes them)."""
    return tags_text(str(choice) for choice in value) if isinstance(value, list) else value


def _from_date(value: Any) -> Any:
    try:
        return _as_date(value)
    except (TypeError, ValueError):
        return value


@dataclass(frozen=True)
class Converter:
    convert: Callable[[Any], Any]
    note: str | None = None  # a compatible difference worth telling the operator
    read: Callable[[Any], Any] = _unchanged  # the inverse: a cell of that type as the value we hold


def converter_for(spec: FieldSpec, type_: str | None) -> Converter | str:
    """How a value of `spec` goes into a field of type `type_`, or why it cannot."""
    kind = spec.value
    if type_ in COMPUTED_TYPES:
        return f"is a {type_words(type_)} field, computed by Airtable: nothing can be written to it"
    if type_ in TEXT_TYPES:
        note = None
        if kind in (NUMBER, TIME):
            note = f"is a {type_words(type_)} field: {VALUE_WORDS[kind]} is written as its text"
        elif kind == CHOICE or type_ in ("richText", "email", "url"):
            note = f"is a {type_words(type_)} field: written as text"
        return Converter(_as_text, note, _from_number_text if kind == NUMBER else _unchanged)
    if type_ == "singleSelect" and kind in (TEXT, CHOICE, TAGS):
        note = (
            None
            if spec.type == "singleSelect"
            else "is a single select field: each new value becomes a choice (written with typecast)"
        )
        return Converter(_as_choice, note)
    if type_ == "multipleSelects" and kind in (TEXT, CHOICE, TAGS):
        return Converter(
            _as_tag_choices if kind == TAGS else _as_choices,
            "is a multiple select field: each new value becomes a choice (written with typecast)",
            _from_choices,
        )
    if type_ in NUMBER_TYPES and kind == NUMBER:
        return Converter(
            _as_number, None if type_ == "number" else f"is a {type_words(type_)} field: written as a plain number"
        )
    if type_ == "duration" and kind == NUMBER and spec.unit == "ms":
        return Converter(_as_seconds, "is a duration field: milliseconds are written as seconds", _from_seconds)
    if type_ == "date" and kind == TIME:
        return Converter(_as_date, "is a date field without time: chatledger writes the date in UTC", _from_date)
    if type_ == "dateTime" and kind == TIME:
        return Converter(_as_date_time)
    return f"is a {type_words(type_)} field, which cannot take {VALUE_WORDS[kind]}"


# -- the plan ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    logical: str
    name: str  # in the base
    convert: Callable[[Any], Any]
    read: Callable[[Any], Any] = _unchanged


@dataclass(frozen=True)
class TablePlan:
    """How one table is written: its name, its upsert key's name, and a column per field written."""

    kind: str
    table: str
    key: str
    columns: tuple[Column, ...]
    left_out: dict[str, str] = field(default_factory=dict)  # our field -> why

    def row(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """One record's fields (ours, by our names) as the base takes them."""
        return {
            c.name: CLEARED if values[c.logical] is CLEARED else c.convert(values[c.logical])
            for c in self.columns
            if c.logical in values
        }

    def values(self, cells: Mapping[str, Any]) -> dict[str, Any]:
        """One record's cells (by the base's names) as the values chatledger wrote, by our names: row's inverse."""
        return {c.logical: c.read(cells[c.name]) for c in self.columns if c.name in cells}

    @property
    def written(self) -> frozenset[str]:
        """Our fields this table holds as chatledger writes them."""
        return frozenset(c.logical for c in self.columns)


@dataclass(frozen=True)
class Missing:
    spec: FieldSpec
    name: str  # the name it should have in the base
    twin: str | None  # a field of the base that looks like it, renamed


@dataclass
class BasePlan:
    """The write plan of every table, and what the base's differences mean: problems hold delivery,
    warnings name what is left out, notes are compatible differences."""

    tables: dict[str, TablePlan] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    table_ids: dict[str, str] = field(default_factory=dict)  # kind -> tbl id, for the tables found
    missing: dict[str, list[Missing]] = field(default_factory=dict)  # kind -> fields the base lacks
    missing_tables: list[str] = field(default_factory=list)

    def unselectable(self, names: BaseNames, kind: str, logical: str) -> str | None:
        """Why records of `kind` cannot be selected by our field `logical`, or None: a formula naming a missing
        field is refused (422), and a field left out of the writes holds none of our values."""
        table = self.tables.get(kind)
        why = table.left_out.get(logical) if table is not None else None
        if table is None or why is None:
            return None
        name = names.field(kind, logical)
        where = f"{table.table}.{name}" + (
            f" ({TITLES[kind]}.{logical} in [airtable.fields])" if name != logical else ""
        )
        return f"{where} {'is missing' if why == 'missing' else why}"


def read_back(plan: BasePlan | None, names: BaseNames, kind: str, cells: Mapping[str, Any]) -> dict[str, Any]:
    """A record's cells by our names, as the values chatledger wrote: only what the plan writes (a field left
    out holds the operators' values, not ours); without the table's plan, every cell as it is."""
    table = plan.tables.get(kind) if plan is not None else None
    return table.values(cells) if table is not None else names.logical(kind, cells)


def _find_table(tables: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """By id first, then by exact name, as Airtable resolves a table in a URL."""
    return next((t for t in tables if t.get("id") == name), None) or next(
        (t for t in tables if t.get("name") == name), None
    )


def _normal(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def _similar(ours: str, theirs: str) -> bool:
    a, b = _normal(ours), _normal(theirs)
    if not a or not b:
        return False
    short, long = sorted((a, b), key=len)
    if a == b or (len(short) >= 4 and short in long and len(short) >= 0.6 * len(long)):
        return True
    return difflib.SequenceMatcher(None, a, b).ratio() >= 0.8


def _mapping_hint(kind: str, spec: FieldSpec, twin: str) -> str:
    return (
        f'{twin!r} looks like it renamed: map it with "{TITLES[kind]}.{spec.name}" = "{twin}" under [airtable.fields]'
    )


def plan_base(schema: list[dict[str, Any]] | None, names: Mapping[str, str]) -> BasePlan:
    """The write plan for a base whose schema (the metadata API's tables) is `schema`; None when the
    token may not read it: the documented base is assumed, and a warning says so."""
    names = BaseNames.of(names)
    assumed = schema is None
    if schema is None:
        schema = [
            {
                "id": names[kind],
                "name": names[kind],
                "fields": [{"name": names.field(kind, s.name), "type": s.type} for s in specs],
            }
            for kind, specs in TABLES.items()
        ]
    plan = BasePlan()
    if assumed:
        plan.warnings.append(SCOPE_WARNING)
    for kind, specs in TABLES.items():
        table = _find_table(schema, names[kind])
        if table is None:
            plan.problems.append(f"table {names[kind]!r} ({kind}) is missing")
            plan.missing_tables.append(kind)
            continue
        plan.table_ids[kind] = table.get("id", names[kind])
        _plan_table(plan, kind, specs, table, names)
    return plan


def _plan_table(
    plan: BasePlan, kind: str, specs: tuple[FieldSpec, ...], table: dict[str, Any], names: BaseNames
) -> None:
    label = table.get("name", names[kind])
    fields = {f.get("name"): f for f in table.get("fields", [])}
    wanted = {spec.name: names.field(kind, spec.name) for spec in specs}
    twins = _twins(
        kind,
        [s for s in specs if wanted[s.name] not in fields],
        wanted,
        [f for name, f in fields.items() if name not in wanted.values()],
    )
    columns: list[Column] = []
    left_out: dict[str, str] = {}
    missing: list[Missing] = []
    for spec in specs:
        name = wanted[spec.name]
        where = f"{label}.{name}" + (f" ({TITLES[kind]}.{spec.name} in [airtable.fields])" if name != spec.name else "")
        is_key = spec.name == KEYS[kind]
        found = fields.get(name)
        if found is None:
            twin = twins.get(spec.name)
            missing.append(Missing(spec, name, twin))
            hint = f"; {_mapping_hint(kind, spec, twin)}" if twin else ""
            if is_key:
                plan.problems.append(
                    f"{where} is missing: it is the key chatledger upserts on (single line text){hint}"
                )
            else:
                left_out[spec.name] = "missing"
                plan.warnings.append(
                    f"{where} is missing: left out of what chatledger writes"
                    + (hint or " (`chatledger airtable init` creates it)")
                )
            continue
        type_ = found.get("type")
        if is_key and type_ not in KEY_TYPES:
            plan.problems.append(
                f"{where} is a {type_words(type_)} field: the key chatledger upserts on must be single line text"
            )
            continue
        how = converter_for(spec, type_)
        if isinstance(how, str):
            left_out[spec.name] = how
            plan.warnings.append(f"{where} {how}: left out of what chatledger writes")
            continue
        columns.append(Column(spec.name, name, how.convert, how.read))
        if name != spec.name:
            plan.notes.append(f"{TITLES[kind]}.{spec.name} is written to {label}.{name} ([airtable.fields])")
        if how.note:
            plan.notes.append(f"{where} {how.note}")
        if spec.choices and type_ == "singleSelect":
            have = {c.get("name") for c in ((found.get("options") or {}).get("choices") or [])}
            lacking = [c for c in spec.choices if c not in have]
            if lacking and "options" in found:
                plan.notes.append(f"{where} lacks the choices {', '.join(lacking)} (created on first use)")
    plan.missing[kind] = missing
    if KEYS[kind] in {c.logical for c in columns}:
        plan.tables[kind] = TablePlan(kind, names[kind], wanted[KEYS[kind]], tuple(columns), left_out)


def _twins(
    kind: str, missing: list[FieldSpec], wanted: dict[str, str], unexplained: list[dict[str, Any]]
) -> dict[str, str]:
    """Our missing field -> the base's field that is probably it, renamed. A candidate is a field nothing
    explains whose type takes our value; the best is the one with a similar name, else the only one of
    our type, else the only candidate at all. A field two of ours claim equally is nobody's twin."""

    def fits(spec: FieldSpec, found: dict[str, Any]) -> bool:
        if spec.name == KEYS[kind]:
            return found.get("type") in KEY_TYPES
        return isinstance(converter_for(spec, found.get("type")), Converter)

    guesses: dict[str, tuple[str, int]] = {}  # ours -> (theirs, rank: 2 similar name, 1 same type, 0 fits)
    for spec in missing:
        candidates = [f for f in unexplained if fits(spec, f)]
        for rank, chosen in (
            (2, [f for f in candidates if _similar(wanted[spec.name], f.get("name", ""))]),
            (1, [f for f in candidates if f.get("type") == spec.type]),
            (0, candidates),
        ):
            if chosen:
                if len(chosen) == 1:
                    guesses[spec.name] = (chosen[0]["name"], rank)
                break
    twins = {}
    for ours, (theirs, rank) in guesses.items():
        if all(r < rank for o, (t, r) in guesses.items() if t == theirs and o != ours):
            twins[ours] = theirs
    return twins
