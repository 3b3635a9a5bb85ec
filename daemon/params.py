"""The operator commands' parameters, checked alike on the command line and on the status socket, with
the same messages."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from daemon.events import PHONE_DIGITS_MAX, PHONE_DIGITS_MIN, digits_only, has_control, is_phone_number
from daemon.records import iso

SINKS = ("postgres", "airtable")
PREFER = ("postgres", "airtable")
REASON_MAX = 500


class BadParameter(ValueError):
    """A parameter no command takes; the message says why, in the command line's words."""


def since(text: str) -> str:
    """A DATE as journal time text (UTC ISO 8601 with ms and Z); UTC unless it gives an offset."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        return iso(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    except ValueError:
        raise BadParameter(f"not an ISO 8601 date: {text!r} (e.g. 2026-11-20 or 2026-11-20T08:00)") from None
    except OverflowError:  # 0001-01-01T00:00+05:00 is before year 1 in UTC
        raise BadParameter(f"not a date chatledger can use: {text!r} is out of range in UTC") from None


def phone_digits(text: str) -> str:
    """A phone, however it was typed, as its digits; 7 to 20 of them, or it is not one."""
    phone = digits_only(text)
    if not phone or not is_phone_number(phone):
        raise BadParameter(
            f"--phone {text!r} is not a phone number ({PHONE_DIGITS_MIN} to {PHONE_DIGITS_MAX} "
            f"digits; it has {len(phone) if phone else 'none'})"
        )
    return phone


def choice(option: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise BadParameter(
            f"argument {option}: invalid choice: {value!r} (choose from {', '.join(repr(c) for c in choices)})"
        )
    return value


def reason(text: str, things: str = "these dead letters") -> str:
    """Why an operator gives things up (`dead --discard --reason`, `quarantine --discard --reason`): kept
    beside them, so it must say something."""
    text = text.strip()
    if not text:
        raise BadParameter(f"--reason is empty: say why {things} are given up (it is kept with them)")
    if len(text) > REASON_MAX:
        raise BadParameter(f"--reason must be at most {REASON_MAX} characters")
    if has_control(text):
        raise BadParameter("--reason must not hold a control character")
    return text


def operator_name(user: str, sudo_user: str | None) -> str:
    """Who asked: the caller's user, and who ran sudo to become it when that is someone else."""
    if sudo_user and sudo_user != user and len(sudo_user) <= 64 and not has_control(sudo_user):
        return f"{user} (sudo from {sudo_user})"
    return user


def conversation_id(text: str) -> str:
    """A conversation's id as the bot API takes one: 1 to 200 characters, no control character."""
    if not 1 <= len(text) <= 200:
        raise BadParameter(f"--conversation must be 1 to 200 characters (it has {len(text)})")
    if has_control(text):
        raise BadParameter("--conversation must not hold a control character")
    return text


def element_id(text: str) -> int:
    """A quarantined element's id (`quarantine --discard ID`)."""
    if not (text.isascii() and text.isdigit() and 0 < len(text) < 19):
        raise BadParameter(
            f"--discard takes an element's id (a whole number, as `chatledger quarantine` lists it), not {text!r}"
        )
    return int(text)


def limit(text: str, most: int) -> int:
    """--limit: a whole number from 1 to `most`."""
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= most):
        raise BadParameter(f"--limit must be a whole number from 1 to {most}, not {text!r}")
    return int(text)


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
WHEN_FORMS = (
    "an ISO 8601 date or date-time (2026-11-30, 2026-11-30T08:00:00-03:00; no offset: UTC) or a duration "
    "back from now (90s, 30m, 2h, 7d)"
)


def reconcile_since(text: str, now: datetime) -> datetime:
    """`reconcile --since WHEN` as a UTC moment before `now`."""
    value = text.strip()
    if value[:-1].isascii() and value[:-1].isdigit() and value[-1:] in _DURATION_UNITS:
        try:
            moment = now - timedelta(seconds=int(value[:-1]) * _DURATION_UNITS[value[-1]])
        except OverflowError:
            raise BadParameter(f"--since {text!r} reaches back before year 1") from None
        if moment >= now:
            raise BadParameter(f"--since {text!r} is no window: give a duration above zero")
        return moment
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        moment = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise BadParameter(f"--since {text!r} is not {WHEN_FORMS}") from None
    if moment >= now:
        raise BadParameter(f"--since {text!r} is not in the past (now is {iso(now)})")
    return moment
