"""SendPulse webhook payloads -> normalized events (pure, no I/O)."""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# The one table of message titles: what becomes an interaction, in which direction. Records, the journal's
# conversation fold (daemon.journal.schema, checked against this by tests) and the PostgreSQL sink
# see only these titles: an alias is journaled under the title it stands for (its payload keeps it).
MESSAGE_TITLES = {"incoming_message": "inbound", "outgoing_message": "outbound"}
# WhatsApp's own message ids: unique across chats (other platforms' ids count per chat).
WAMID_PREFIX = "wamid."
TITLE_ALIASES = {"outbound_message": "outgoing_message"}  # a variant integrators report receiving
# Events chatledger journals itself: the bot-facing API's (daemon.api) and reconciliation's status reports
# (daemon.reconcile). Their raw text is chatledger's own; a webhook may never bring one.
API_INTERACTION, API_ESCALATION = "api_interaction", "api_escalation"
API_ESCALATION_UPDATE, API_CONVERSATION_UPDATE = "api_escalation_update", "api_conversation_update"
API_TITLES = frozenset({API_INTERACTION, API_ESCALATION, API_ESCALATION_UPDATE, API_CONVERSATION_UPDATE})
DELIVERY_STATUS = "delivery_status"
OWN_TITLES = API_TITLES | {DELIVERY_STATUS}

MEDIA_KINDS = ("image", "video", "audio", "voice", "document", "sticker", "file")

# A `date` above this is milliseconds; as seconds it would be past the year 33658.
_MS_THRESHOLD = 1e12
# A `date` outside these years is not believed (the receive time stands in); the bot API agrees.
EARLIEST_YEAR, LATEST_YEAR = 2000, 2200


class BodyError(ValueError):
    """The request body as a whole is unusable (not JSON, or not an object or array)."""


class TooManyElements(BodyError):
    """The body holds more elements than one request may carry."""


@dataclass(frozen=True)
class Event:
    """One accepted webhook element, normalized; `raw` is the element as JSON text."""

    dedup_key: str
    title: str
    service: str | None
    bot_id: str | None
    contact_id: str | None
    phone: str | None
    contact_name: str | None
    message_id: str | None
    platform_message_id: str | None
    direction: str | None
    message_type: str | None
    text: str | None
    occurred_at: datetime
    received_at: datetime
    raw: str
    conversation_id: str | None = None  # given by the bot API; webhooks derive it from bot and contact
    original: str | None = None  # the element verbatim, when `raw` had to be cleaned to be storable


@dataclass(frozen=True)
class StoredEvent:
    """An event as the journal holds it: its journal id, and times as UTC ISO 8601 text."""

    id: int
    dedup_key: str
    received_at: str
    occurred_at: str
    title: str
    service: str | None
    bot_id: str | None
    contact_id: str | None
    phone: str | None
    contact_name: str | None
    message_id: str | None
    platform_message_id: str | None
    direction: str | None
    message_type: str | None
    text: str | None
    raw: str
    conversation_id: str | None = None


@dataclass(frozen=True)
class Rejected:
    """One element that cannot be an event; kept in quarantine with the reason."""

    reason: str
    raw: str
    received_at: datetime


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


class _Literals(threading.local):
    """Whether the element being decoded has a number literal that may be out of a double's range: the
    decoder hands over each number's text, so the element's text need not be searched for them again."""

    wide = False


_LITERALS = _Literals()
_WIDE_EXPONENT = re.compile(r"[eE][-+]?[0-9]{3}")
WIDE_DIGITS = 300  # a literal of fewer digits and an exponent under 100 is within a double's range


def _float_literal(literal: str) -> float:
    if len(literal) >= WIDE_DIGITS or _WIDE_EXPONENT.search(literal):
        _LITERALS.wide = True
    return float(literal)


def _int_literal(literal: str) -> int:
    if len(literal) >= WIDE_DIGITS:
        _LITERALS.wide = True
    return int(literal)


def _lenient_int(literal: str) -> int | float:
    if len(literal) >= WIDE_DIGITS:
        _LITERALS.wide = True
    return int(literal) if len(literal) <= 4000 else float(literal)  # float(): inf, and no quadratic time


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_float_literal, parse_int=_int_literal)
# Only for a body the fast decoder refused for an integer of more than 4300 digits (Python's limit).
_LENIENT_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_float_literal, parse_int=_lenient_int)
_WHITESPACE = " \t\n\r"
_NOT_DIGITS = re.compile(r"[^0-9]+")
# A phone as people write it: digits, an optional leading +, groups parted by spaces, dashes, dots or
# parentheses ("+55 (11) 98888-7777"). The run is taken whole, so a number inside a longer one never matches.
_PHONE_RUN = re.compile(r"\+?[0-9]+(?:[ .()-]{1,3}[0-9]+)*")
# E.164 numbers have at most 15 digits; intake keeps whatever a contact's phone holds (a trunk 0, an
# extension), and matching is exact, so forget takes up to 20 rather than leave such a contact unerasable.
PHONE_DIGITS_MIN, PHONE_DIGITS_MAX = 7, 20
# C0 and C1 controls, DEL, and lone surrogates (no UTF-8 store can hold one)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


@dataclass(frozen=True)
class Element:
    """One element of a webhook body: its decoded value, its exact text in the body, and whether it has a
    number literal that may be out of a double's range (normalize's `wide_numbers`)."""

    value: Any
    raw: str
    wide_numbers: bool = True


def parse_body(body: bytes, max_elements: int | None = None) -> list[Element]:
    """Split a webhook body into its elements (one object, or an array of anything), each verbatim;
    TooManyElements as soon as there are more than `max_elements`."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(f"body is not valid JSON: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        try:
            return _split_elements(text, _DECODER, max_elements)
        except ValueError as exc:
            if "integer string conversion" not in str(exc):
                raise
            return _split_elements(text, _LENIENT_DECODER, max_elements)
    except json.JSONDecodeError as exc:
        raise BodyError(f"body is not valid JSON: {exc}") from None
    except BodyError:
        raise
    except ValueError as exc:
        raise BodyError(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BodyError("body is not valid JSON: nested too deeply") from None


def _split_elements(text: str, decoder: json.JSONDecoder, max_elements: int | None) -> list[Element]:
    start = _skip(text, 0)
    if start < len(text) and text[start] == "[":
        elements: list[Element] = []
        position = _skip(text, start + 1)
        if position < len(text) and text[position] == "]":
            position += 1
        else:
            while True:
                if max_elements is not None and len(elements) == max_elements:
                    raise TooManyElements(f"body holds more than {max_elements} elements")
                _LITERALS.wide = False
                value, end = decoder.raw_decode(text, position)
                elements.append(Element(value, text[position:end], _LITERALS.wide))
                position = _skip(text, end)
                if position < len(text) and text[position] == ",":
                    position = _skip(text, position + 1)
                    continue
                if position < len(text) and text[position] == "]":
                    position += 1
                    break
                raise json.JSONDecodeError("expected ',' or ']' after an array element", text, position)
        if _skip(text, position) != len(text):
            raise json.JSONDecodeError("extra data after the array", text, _skip(text, position))
        return elements
    _LITERALS.wide = False
    value, end = decoder.raw_decode(text, start)
    if _skip(text, end) != len(text):
        raise json.JSONDecodeError("extra data after the value", text, _skip(text, end))
    if isinstance(value, dict):
        return [Element(value, text[start:end], _LITERALS.wide)]
    raise BodyError(f"body must be a JSON object or an array of objects, not {_json_kind(value)}")


def _skip(text: str, position: int) -> int:
    while position < len(text) and text[position] in _WHITESPACE:
        position += 1
    return position


def normalize(
    element: Any, received_at: datetime, raw: str | None = None, wide_numbers: bool = True
) -> Event | Rejected:
    """Turn one webhook element into an Event, or say why it is rejected; never raises.

    `raw` is the element's text as received; without it the element is serialized again. `wide_numbers`
    False says no number in `raw` can be out of a double's range (parse_body knows: Element.wide_numbers).
    """
    try:
        if raw is None:
            raw = _dumps(element)
        return _normalize(element, received_at, raw, wide_numbers)
    except Exception as exc:
        reason = f"element cannot be read: {type(exc).__name__}: {exc}"[:300]
        return Rejected(reason, raw if raw is not None else _dumps_safely(element), received_at)


def _normalize(element: Any, received_at: datetime, raw: str, wide_numbers: bool) -> Event | Rejected:
    if not isinstance(element, dict):
        return Rejected(f"element is {_json_kind(element)}, not an object", raw, received_at)
    title = element.get("title")
    if not isinstance(title, str) or not title.strip():
        reason = "element has no title" if title is None else f"title is {_json_kind(title)}, not a name"
        if isinstance(title, str):
            reason = "title is empty"
        return Rejected(reason, raw, received_at)

    info = _obj(element.get("info"))
    info_message = _obj(info.get("message"))
    channel_data = _obj(info_message.get("channel_data"))
    message = _obj(channel_data.get("message"))
    contact = _obj(element.get("contact"))
    bot = _obj(element.get("bot"))
    top_message = _obj(element.get("message"))  # seen only in one integrator's WhatsApp outbound payload

    given_id = _text(info_message.get("id"), clean=False) or _text(info.get("message_id"), clean=False)
    title = TITLE_ALIASES.get(title, title)
    if title in OWN_TITLES:
        return Rejected(
            f"title {title!r} is chatledger's own (its bot API and reconciliation journal it), not a webhook's",
            raw,
            received_at,
        )
    direction = MESSAGE_TITLES.get(title)
    cleaned = storable_json(raw, wide_numbers)
    return Event(
        # keyed by what came: two ids that clean alike (m\x001 and m1) are two messages
        dedup_key=dedup_key(element, _key_part(title), _key_part(given_id) if given_id else None),
        title=storable_text(title),
        service=_text(element.get("service")),
        bot_id=_text(bot.get("id")) or _text(element.get("bot_id")),
        contact_id=_text(contact.get("id")),
        phone=_phone(contact, message),
        contact_name=_text(contact.get("name")),
        message_id=storable_text(given_id) if given_id else None,
        platform_message_id=(
            _text(message.get("id"))
            or _text(message.get("mid"))
            or _text(channel_data.get("message_id"))
            or _text(top_message.get("id"))
            # some integrations put the wamid where SendPulse's id goes: it is still WhatsApp's id
            or (_text(given_id) if given_id and given_id.startswith(WAMID_PREFIX) else None)
        ),
        direction=direction,
        message_type=_message_type(message, top_message),
        text=_message_text(message, top_message, contact, direction),
        occurred_at=parse_date(element.get("date"), received_at),
        received_at=received_at,
        raw=cleaned or raw,
        original=raw if cleaned is not None else None,
    )


def api_event(
    title: str,
    dedup_key: str,
    raw: str,
    *,
    conversation_id: str | None,
    occurred_at: datetime,
    received_at: datetime,
    phone: str | None = None,
    message_id: str | None = None,
    direction: str | None = None,
    text: str | None = None,
) -> Event:
    """A write of the bot API as the journal keeps it (one of API_TITLES): its body as `raw`, the fields the
    read model and the sinks take from it beside."""
    return Event(
        dedup_key=dedup_key,
        title=title,
        service="api",
        bot_id=None,
        contact_id=None,
        phone=phone,
        contact_name=None,
        message_id=message_id,
        platform_message_id=None,
        direction=direction,
        message_type="api",
        text=text,
        occurred_at=occurred_at,
        received_at=received_at,
        raw=raw,
        conversation_id=conversation_id,
    )


def dedup_key(element: dict[str, Any], title: str, message_id: str | None) -> str:
    """The SendPulse message id scoped by title, else a hash of the element's canonical JSON.

    Scoping by title keeps a later event about the same message (a status, say) from being
    taken for a resend of the message itself.
    """
    if message_id:
        return f"msg:{title}:{message_id}"
    canonical = json.dumps(element, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def parse_date(value: Any, received_at: datetime) -> datetime:
    """`date` in seconds or milliseconds (number or numeric string) or ISO 8601, UTC; the receive time
    when it is anything else or implausible (outside EARLIEST_YEAR..LATEST_YEAR)."""
    if isinstance(value, bool) or value is None:
        return received_at
    number: float | None = None
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:  # an integer of hundreds of digits
            return received_at
    elif isinstance(value, str) and value.strip():
        try:
            number = float(value.strip())
        except ValueError:
            try:
                parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
                if parsed.tzinfo is None:
                    parsed = parsed.replace(tzinfo=UTC)
                return _plausible(parsed.astimezone(UTC), received_at)
            except (ValueError, OverflowError):  # year 9999 with a negative offset overflows in UTC
                return received_at
    if number is None or not math.isfinite(number) or number <= 0:
        return received_at
    seconds = number / 1000.0 if number > _MS_THRESHOLD else number
    try:
        return _plausible(datetime.fromtimestamp(seconds, tz=UTC), received_at)
    except (OverflowError, OSError, ValueError):
        return received_at


def _plausible(moment: datetime, received_at: datetime) -> datetime:
    return moment if EARLIEST_YEAR <= moment.year <= LATEST_YEAR else received_at


def digits_only(phone: Any) -> str | None:
    """A phone number as its digits alone; None when there are none."""
    if isinstance(phone, bool) or phone is None:
        return None
    if isinstance(phone, float):
        if not math.isfinite(phone) or abs(phone) >= 1e16:  # 1e400 is inf; no phone has 17 digits
            return None
        phone = str(int(phone))
    elif isinstance(phone, int):
        phone = str(phone) if -(10**16) < phone < 10**16 else None
    if not isinstance(phone, str):
        return None
    digits = _NOT_DIGITS.sub("", phone)
    return digits or None


def has_control(text: str) -> bool:
    """Whether `text` holds a control character or a lone surrogate."""
    return _CONTROL.search(text) is not None


def is_phone_number(digits: str) -> bool:
    """Whether these digits can be a whole phone number (7 to 20 ASCII digits)."""
    return digits.isascii() and digits.isdigit() and PHONE_DIGITS_MIN <= len(digits) <= PHONE_DIGITS_MAX


def mentions_phone(text: Any, digits: str) -> bool:
    """Whether `text` holds the phone `digits` whole: as a bare digit run or as one formatted phone-like run."""
    if not isinstance(text, str) or not digits or digits not in _NOT_DIGITS.sub("", text):
        return False  # a run's digits are a slice of all the digits: most texts stop here
    if re.search(f"(?<![0-9]){re.escape(digits)}(?![0-9])", text):
        return True
    return any(_NOT_DIGITS.sub("", run.group()) == digits for run in _PHONE_RUN.finditer(text))


def _phone(contact: dict[str, Any], message: dict[str, Any]) -> str | None:
    variables = _obj(contact.get("variables"))  # sometimes [] instead of {}
    for candidate in (
        contact.get("phone"),
        variables.get("Phone"),
        variables.get("phone"),
        message.get("from"),
    ):
        digits = digits_only(candidate)
        if digits:
            return digits
    return None


def _message_type(message: dict[str, Any], top_message: dict[str, Any]) -> str | None:
    kind = _text(message.get("type")) or _text(top_message.get("type"))
    if kind:
        return kind
    if isinstance(message.get("text"), (str, dict)):
        return "text"
    for media in MEDIA_KINDS:
        if isinstance(message.get(media), dict):
            return media
    return None


def _message_text(
    message: dict[str, Any],
    top_message: dict[str, Any],
    contact: dict[str, Any],
    direction: str | None,
) -> str | None:
    text = message.get("text")
    if isinstance(text, dict):  # inbound WhatsApp, as Meta's Cloud API: {"body": "..."}
        body = _text(text.get("body"))
        if body:
            return body
    elif _text(text):  # outbound WhatsApp, Telegram, Instagram
        return _text(text)
    interactive = _obj(message.get("interactive"))
    for reply in ("button_reply", "list_reply"):
        title = _text(_obj(interactive.get(reply)).get("title"))
        if title:
            return title
    button = _text(_obj(message.get("button")).get("text"))  # template quick-reply buttons
    if button:
        return button
    for media in MEDIA_KINDS:
        item = _obj(message.get(media))
        if item:
            parts = [
                _text(item.get("caption")),
                _text(item.get("url")) or _text(item.get("link")) or _text(item.get("filename")),
            ]
            joined = "\n".join(part for part in parts if part)
            if joined:
                return joined
    comment = _text(message.get("message"))  # Facebook / Instagram comments
    if comment:
        return comment
    top_text = _text(top_message.get("text"))
    if top_text:
        return top_text
    if direction == "inbound":
        # Integrators agree SendPulse fills last_message with the customer's latest text.
        return _text(contact.get("last_message"))
    return None


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any, clean: bool = True) -> str | None:
    """A field's value as text (a number as its digits), made storable; None when there is none."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str) and value.strip():
        return storable_text(value) if clean else value
    return None


def _key_part(value: str) -> str:
    """A value as it came, for a dedup key: if it needs cleaning it is escaped instead, so that values
    that clean alike (\ud800 and \udfff) stay apart."""
    return value if storable_text(value) == value else json.dumps(value)[1:-1]


def storable_text(text: str) -> str:
    """Text every store takes: NUL characters and lone UTF-16 surrogates become U+FFFD."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


# What in valid JSON text a store refuses: a \u0000 escape or a lone surrogate escape (PostgreSQL's
# jsonb), a number out of a double's range (jsonb's numeric stops near 1e131072 and 1e-16383;
# Airtable's numbers are doubles). Cheap to look for (two searches, the escapes' only where a \u is);
# a hit is checked exactly by storable_json. Every branch of the escapes' search begins with the literal
# \u, which the regex engine finds by a fast scan (a branch opening with a lookbehind would be tried at
# every character: 25 times slower on a typical element with accents).
_HEX2 = "[0-9a-fA-F]{2}"
_SUSPECT_ESCAPE = re.compile(
    rf"\\u(?:0000|[dD][89abAB]{_HEX2}(?!\\u[dD][c-fC-F]{_HEX2})"
    rf"|(?<!\\u[dD][89abAB]{_HEX2}\\u)[dD][c-fC-F]{_HEX2})"
)
_SUSPECT_NUMBER = re.compile(r"[0-9](?:[eE][-+]?[0-9]{3}|[0-9]{299})")


def _suspect(raw: str, numbers: bool = True) -> bool:
    return bool(("\\u" in raw and _SUSPECT_ESCAPE.search(raw)) or (numbers and _SUSPECT_NUMBER.search(raw)))


UNWALKED_KEY = "chatledger_element_as_text"


class _Number(str):
    """A JSON number kept as its literal text."""


_LITERAL_DECODER = json.JSONDecoder(parse_float=_Number, parse_int=_Number, parse_constant=_reject_constant)


def storable_json(raw: str, wide_numbers: bool = True) -> str | None:
    """`raw` (JSON text) cleaned so that every store takes it, or None when it already is: strings
    through storable_text, a number no double can hold as its literal text in a string. `wide_numbers`
    False: its numbers are known to be within range."""
    if not _suspect(raw, wide_numbers):
        return None
    changed: list[bool] = []
    try:
        value = _storable(_LITERAL_DECODER.decode(raw), changed)
    except RecursionError:  # nested deeper than this walk goes: delivered as text, kept whole in `original`
        return json.dumps({UNWALKED_KEY: storable_text(raw)}, ensure_ascii=False)
    if not changed:
        return None
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _storable(value: Any, changed: list[bool]) -> Any:
    if isinstance(value, _Number):
        number = float(value)
        underflow = number == 0 and any(c in "123456789" for c in value.split("e")[0].split("E")[0])
        if math.isfinite(number) and not underflow:
            return int(value) if value.lstrip("-").isdigit() else number
        changed.append(True)
        return str(value)
    if isinstance(value, str):
        text = storable_text(value)
        if text != value:
            changed.append(True)
        return text
    if isinstance(value, list):
        return [_storable(item, changed) for item in value]
    if isinstance(value, dict):
        return {_storable(key, changed): _storable(item, changed) for key, item in value.items()}
    return value


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _dumps(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: keep it, escaped, so the raw copy stays exact
        text = json.dumps(value, ensure_ascii=True, separators=(",", ":"))
    return text


def _dumps_safely(value: Any) -> str:
    try:
        return _dumps(value)
    except (ValueError, TypeError, RecursionError):
        try:
            return storable_text(repr(value))[:10_000]
        except (ValueError, RecursionError):
            return f"<an element chatledger cannot print: {type(value).__name__}>"
