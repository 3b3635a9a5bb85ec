"""Bases, tables, typed fields and records of the emulator, with Airtable's validation rules."""

from __future__ import annotations

import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Protocol, TypeVar

MAX_TEXT = 100_000
TEXT_TYPES = {"singleLineText", "multilineText", "phoneNumber", "email", "url", "richText"}
# Types Airtable computes: a write to them is refused (422), never ignored.
COMPUTED_TYPES = {
    "createdTime",
    "lastModifiedTime",
    "autoNumber",
    "formula",
    "rollup",
    "lookup",
    "multipleLookupValues",
    "count",
    "createdBy",
    "lastModifiedBy",
    "button",
    "externalSyncSource",
    "aiText",
}
NO_OPTIONS_TYPES = TEXT_TYPES | {"date"}
MERGEABLE_TYPES = {"singleLineText", "multilineText", "number", "singleSelect", "multipleSelects", "date", "dateTime"}
SUPPORTED_TYPES = TEXT_TYPES | {"number", "dateTime", "date", "singleSelect", "multipleSelects", "checkbox"}
COLORS = [
    "blueLight2",
    "cyanLight2",
    "tealLight2",
    "greenLight2",
    "yellowLight2",
    "orangeLight2",
    "redLight2",
    "pinkLight2",
    "purpleLight2",
    "grayLight2",
]


class ApiError(Exception):
    """An Airtable error answer: status, type and message, in the envelope Airtable uses."""

    def __init__(self, status: int, type_: str, message: str | None = None):
        super().__init__(message or type_)
        self.status = status
        self.type = type_
        self.message = message

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type}
        if self.message is not None:
            error["message"] = self.message
        return {"error": error}


def new_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(14))


def iso_now() -> str:
    return iso(datetime.now(UTC))


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def is_empty(value: Any) -> bool:
    """What Airtable leaves out of a record: null, "", [] and false (but not 0)."""
    return value is None or value is False or (isinstance(value, (str, list)) and not value)


def invalid(name: str, detail: str | None = None) -> ApiError:
    return ApiError(422, "INVALID_VALUE_FOR_COLUMN", detail or f'Field "{name}" cannot accept the provided value')


@dataclass
class Field:
    id: str
    name: str
    type: str
    options: dict[str, Any] | None = None
    description: str | None = None

    def model(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "name": self.name, "type": self.type}
        if self.description:
            out["description"] = self.description
        if self.options is not None:
            out["options"] = self.options
        return out

    @property
    def choices(self) -> list[dict[str, Any]]:
        choices: list[dict[str, Any]] = (self.options or {}).setdefault("choices", [])
        return choices

    def coerce(self, value: Any, typecast: bool) -> Any:
        """The stored cell value for a write, or ApiError; None clears the cell."""
        if value is None:
            return None
        if self.type in COMPUTED_TYPES:
            raise invalid(self.name, f'Field "{self.name}" cannot accept a value because the field is computed')
        if self.type in TEXT_TYPES:
            if typecast and isinstance(value, (int, float)) and not isinstance(value, bool):
                value = str(value)
            if not isinstance(value, str):
                raise invalid(self.name)
            if len(value) > MAX_TEXT:
                raise invalid(self.name, f'Field "{self.name}" cannot accept a value longer than {MAX_TEXT} characters')
            return value
        if self.type in ("number", "duration"):  # a duration is a number of seconds
            if typecast and isinstance(value, str):
                try:
                    value = float(value) if "." in value else int(value)
                except ValueError:
                    raise invalid(self.name, f'Cannot parse value "{value}" for field {self.name}') from None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise invalid(self.name)
            return value
        if self.type == "checkbox":
            if not isinstance(value, bool):
                raise invalid(self.name, f'Cannot parse value "{value}" for field {self.name}')
            return value
        if self.type == "dateTime":
            return iso(_parse_time(self.name, value))
        if self.type == "date":
            return _parse_date(self.name, value, typecast)
        if self.type == "singleSelect":
            if not isinstance(value, str):
                raise invalid(self.name)
            return self._choice(value, typecast)
        if self.type == "multipleSelects":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise invalid(self.name)
            return [self._choice(v, typecast) for v in value]
        raise invalid(self.name)

    def _choice(self, name: str, typecast: bool) -> str:
        if name == "":
            return ""
        if any(choice["name"] == name for choice in self.choices):
            return name
        if not typecast:
            raise ApiError(
                422,
                "INVALID_MULTIPLE_CHOICE_OPTIONS",
                f'Insufficient permissions to create new select option ""{name}""',
            )
        self.choices.append({"id": new_id("sel"), "name": name, "color": COLORS[len(self.choices) % len(COLORS)]})
        return name


def _parse_date(name: str, value: Any, typecast: bool) -> str:
    """A date field takes the documented form, "2022-09-05"; a timestamp only through typecast's best effort
    (its date in UTC): the reference documents nothing else."""
    if isinstance(value, str) and len(value) == 10:
        try:
            return date.fromisoformat(value).isoformat()
        except ValueError:
            pass
    if typecast and isinstance(value, str):
        try:
            return _parse_time(name, value).astimezone(UTC).date().isoformat()
        except ApiError:
            pass
    raise invalid(name, f'Cannot parse date value "{value}" for field {name}')


def _parse_time(name: str, value: Any) -> datetime:
    if not isinstance(value, str):
        raise invalid(name)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise invalid(name, f'Cannot parse date value "{value}" for field {name}') from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def field_from_config(config: Any, existing: list[Field]) -> Field:
    """A new field from a metadata-API field config, validated as Airtable does."""
    if not isinstance(config, dict) or not isinstance(config.get("name"), str) or not config["name"].strip():
        raise ApiError(
            422, "INVALID_REQUEST_UNKNOWN", "Invalid request: parameter validation failed. Check your request data."
        )
    name, type_ = config["name"], config.get("type")
    if any(f.name.lower() == name.lower() for f in existing):
        raise ApiError(422, "DUPLICATE_OR_EMPTY_FIELD_NAME", f'Field name "{name}" already exists')
    if type_ in COMPUTED_TYPES:
        raise ApiError(422, "UNSUPPORTED_FIELD_TYPE_FOR_CREATE", f'Field type "{type_}" cannot be created via the API')
    if type_ not in SUPPORTED_TYPES:
        raise ApiError(422, "INVALID_FIELD_TYPE", f'Unknown field type "{type_}"')
    options = config.get("options")

    def bad(detail: str) -> ApiError:
        return ApiError(
            422,
            "INVALID_FIELD_TYPE_OPTIONS_FOR_CREATE",
            f"Invalid options for {name}: Failed schema validation: {detail}",
        )

    if type_ in NO_OPTIONS_TYPES and "options" in config and type_ != "date":
        raise bad(f"options is not included in the {name}.(type={type_}) schema")
    if type_ == "number":
        if (
            not isinstance(options, dict)
            or not isinstance(options.get("precision"), int)
            or not 0 <= options["precision"] <= 8
        ):
            raise bad(f"{name}.options is missing")
        options = {"precision": options["precision"]}
    elif type_ == "checkbox":
        if not isinstance(options, dict) or "color" not in options or "icon" not in options:
            raise bad(f"{name}.options is missing")
    elif type_ == "dateTime":
        if not isinstance(options, dict) or not all(k in options for k in ("timeZone", "dateFormat", "timeFormat")):
            raise bad(f"{name}.options is missing")
        options = {
            "timeZone": options["timeZone"],
            "dateFormat": {
                "name": options["dateFormat"].get("name", "iso"),
                "format": options["dateFormat"].get("format", "YYYY-MM-DD"),
            },
            "timeFormat": {
                "name": options["timeFormat"].get("name", "24hour"),
                "format": options["timeFormat"].get("format", "HH:mm"),
            },
        }
    elif type_ == "date":
        options = {"dateFormat": {"name": "iso", "format": "YYYY-MM-DD"}}
    elif type_ in ("singleSelect", "multipleSelects"):
        if not isinstance(options, dict) or not isinstance(options.get("choices"), list):
            raise bad(f"{name}.options is missing")
        choices = []
        for i, choice in enumerate(options["choices"]):
            if not isinstance(choice, dict) or not isinstance(choice.get("name"), str):
                raise bad(f"{name}.options.choices[{i}].name is missing")
            choices.append(
                {"id": new_id("sel"), "name": choice["name"], "color": choice.get("color", COLORS[i % len(COLORS)])}
            )
        options = {"choices": choices}
    else:
        options = None
    return Field(new_id("fld"), name, type_, options, config.get("description"))


@dataclass
class Record:
    id: str
    created_time: str
    cells: dict[str, Any] = field(default_factory=dict)  # field id -> value


@dataclass
class Table:
    id: str
    name: str
    fields: list[Field]
    description: str | None = None
    view_id: str = field(default_factory=lambda: new_id("viw"))
    records: dict[str, Record] = field(default_factory=dict)  # insertion order = creation order

    def field(self, key: str) -> Field | None:
        return by_id_or_name(self.fields, key)

    def add_field(self, name: str, type_: str, options: dict[str, Any] | None = None) -> Field:
        """A field of any type, computed ones too: what an operator builds in Airtable's UI."""
        new = Field(new_id("fld"), name, type_, options)
        self.fields.append(new)
        return new

    def remove_field(self, name: str) -> None:
        target = self.field(name)
        assert target is not None and target is not self.fields[0], f"no removable field {name!r}"
        self.fields.remove(target)
        for record in self.records.values():
            record.cells.pop(target.id, None)

    def model(self, visible_field_ids: bool = False) -> dict[str, Any]:
        view: dict[str, Any] = {"id": self.view_id, "name": "Grid view", "type": "grid"}
        if visible_field_ids:
            view["visibleFieldIds"] = [f.id for f in self.fields]
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "primaryFieldId": self.fields[0].id,
            "fields": [f.model() for f in self.fields],
            "views": [view],
        }
        if self.description:
            out["description"] = self.description
        return out

    def render(self, record: Record, by_id: bool = False, only: set[str] | None = None) -> dict[str, Any]:
        """A record as the API returns it: empty values omitted."""
        cells: dict[str, Any] = {}
        for f in self.fields:
            value = record.cells.get(f.id)
            if is_empty(value):
                continue
            if only is not None and f.name not in only and f.id not in only:
                continue
            cells[f.id if by_id else f.name] = value
        return {"id": record.id, "createdTime": record.created_time, "fields": cells}

    def by_name(self, record: Record) -> dict[str, Any]:
        return {f.name: record.cells.get(f.id) for f in self.fields}


# Airtable does not document what it answers at a base's records cap: the emulator's default is a type
# chatledger has never seen, as any unfamiliar refusal must be handled (settable per base).
CAP_ERROR = {
    "status": 422,
    "type": "BASE_RECORD_LIMIT_EXCEEDED",
    "message": "This base has reached the maximum of {max_records} records allowed on its plan",
}


@dataclass
class Base:
    id: str
    name: str
    tables: list[Table] = field(default_factory=list)
    max_records: int | None = None  # the plan's records cap, across all tables; None: no cap
    cap_error: dict[str, Any] = field(default_factory=lambda: dict(CAP_ERROR))

    def table(self, key: str) -> Table | None:
        return by_id_or_name(self.tables, key)

    @property
    def record_count(self) -> int:
        return sum(len(t.records) for t in self.tables)

    def admit_creates(self, count: int) -> None:
        """Refuse a write that would create `count` records past the cap (the whole request fails)."""
        if count and self.max_records is not None and self.record_count + count > self.max_records:
            error = self.cap_error
            raise ApiError(
                int(error["status"]),
                str(error["type"]),
                str(error.get("message", "")).format(max_records=self.max_records) or None,
            )


class _Named(Protocol):
    id: str
    name: str


Named = TypeVar("Named", bound=_Named)


def by_id_or_name(items: Sequence[Named], key: str) -> Named | None:
    """Airtable looks a table or field up by id first, then by exact name."""
    return next((i for i in items if i.id == key), None) or next((i for i in items if i.name == key), None)
