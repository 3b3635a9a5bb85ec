"""Bots, contacts and message history of the SendPulse emulator, rendered in the API's shapes."""

from __future__ import annotations

import base64
import itertools
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

IN, OUT = 1, 2  # message `direction`
NEW, SENT, DELIVERED, OPENED, REDIRECTED, REJECTED = 1, 2, 3, 4, 5, 6  # message `status`
ACTIVE = 1  # contact `status` (2 unsubscribed, 3 disabled, 4 blocked by the user)

_counter = itertools.count(secrets.randbelow(1 << 20))
_process = secrets.token_hex(5)


class ApiError(Exception):
    """A SendPulse error answer: a non-2xx status with the `success: false` envelope."""

    def __init__(self, status: int, message: str, errors: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or {}

    def body(self) -> dict[str, Any]:
        return {"success": False, "message": self.message, "errors": self.errors}


def new_id(moment: datetime | None = None) -> str:
    """A 24-hex id laid out as a MongoDB ObjectId (seconds, process, counter), as SendPulse's look."""
    seconds = int((moment or datetime.now(UTC)).timestamp())
    return f"{seconds & 0xFFFFFFFF:08x}{_process}{next(_counter) & 0xFFFFFF:06x}"


def new_wamid() -> str:
    return "wamid." + base64.b64encode(b"\x15\x02\x00\x11\x18\x12" + secrets.token_bytes(24)).decode()


def parse_time(value: Any) -> datetime:
    """An ISO 8601 date-time (no offset: UTC) or epoch seconds, to the second as the API shows it."""
    if isinstance(value, (int, float)):
        moment = datetime.fromtimestamp(value, UTC)
    else:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(microsecond=0)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def digits(phone: Any) -> int:
    text = "".join(ch for ch in str(phone) if ch.isdigit())
    if not text:
        raise ValueError(f"not a phone number: {phone!r}")
    return int(text)


@dataclass
class Bot:
    id: str
    name: str
    phone: int
    status: int = 3  # active

    def render(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "channel": "WHATSAPP",
            "channel_data": {"phone": self.phone, "name": self.name},
        }


@dataclass
class Message:
    id: str
    contact_id: str
    bot_id: str
    direction: int
    status: int
    created_at: datetime
    data: dict[str, Any]
    wamid: str | None = None
    channel: str | None = None

    @property
    def key(self) -> tuple[datetime, str]:
        """The history's order: by time, then by id for messages of the same second."""
        return self.created_at, self.id

    @property
    def text(self) -> str | None:
        text = self.data.get("text")
        return text.get("body") if isinstance(text, dict) else text

    def render(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "contact_id": self.contact_id,
            "bot_id": self.bot_id,
            "campaign_id": None,
            "direction": self.direction,
            "status": self.status,
            "type": self.data.get("type", "text"),
            "channel": self.channel,
            "data": self.data,
            "is_paid": False,
            "price_cbp": None,
            "created_at": iso(self.created_at),
        }


def message_data(direction: int, text: str | None, wamid: str | None, phone: int, moment: datetime) -> dict[str, Any]:
    """The API's `data`: inbound, WhatsApp's own message object (wamid in `id`); outbound, what was sent
    (wamid in `message_id`)."""
    if direction == IN:
        data: dict[str, Any] = {
            "from": str(phone),
            "timestamp": str(int(moment.timestamp())),
            "type": "text",
            "text": {"body": text or ""},
        }
        if wamid:
            data["id"] = wamid
        return data
    data = {"type": "text", "text": {"body": text or ""}}
    if wamid:
        data["message_id"] = wamid
    return data


@dataclass
class Contact:
    id: str
    bot_id: str
    phone: int
    name: str
    created_at: datetime
    status: int = ACTIVE
    is_chat_opened: bool = False
    tags: list[str] = field(default_factory=list)
    variables: dict[str, Any] = field(default_factory=dict)
    messages: list[Message] = field(default_factory=list)  # kept in `Message.key` order

    @property
    def last_activity_at(self) -> datetime:
        return max(self.created_at, self.messages[-1].created_at) if self.messages else self.created_at

    def add(self, message: Message) -> None:
        index = len(self.messages)
        while index and self.messages[index - 1].key > message.key:  # usually appended at the end
            index -= 1
        self.messages.insert(index, message)

    def render(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "bot_id": self.bot_id,
            "status": self.status,
            "channel_data": {"phone": self.phone, "name": self.name},
            "tags": list(self.tags),
            "variables": dict(self.variables),
            "is_chat_opened": self.is_chat_opened,
            "last_activity_at": iso(self.last_activity_at),
            "created_at": iso(self.created_at),
        }

    def chat(self) -> dict[str, Any]:
        inbound = [m for m in self.messages if m.direction == IN]
        unread = 0
        for message in reversed(self.messages):
            if message.direction == OUT:
                break
            unread += 1
        return {
            "contact": self.render(),
            "inbox_last_message": inbound[-1].render() if inbound else None,
            "inbox_unread": unread,
        }


def webhook_body(bot: Bot, contact: Contact, message: Message, options: dict[str, Any]) -> Any:
    """The POST SendPulse would make for `message`: an array of one event unless `single`.

    Options: `id` / `wamid` override the ids the webhook carries (null leaves one out), `date_unit`
    "ms" (default) or "s", `single` for a bare object.
    """
    sendpulse_id = options.get("id", message.id)
    wamid = options.get("wamid", message.wamid)
    info: dict[str, Any] = {}
    if sendpulse_id is not None:
        info["id"] = sendpulse_id
    if message.direction == IN:
        payload = {k: v for k, v in message.data.items() if k != "id"}
        if wamid is not None:
            payload["id"] = wamid
        info["channel_data"] = {"message": payload}
        title = "incoming_message"
    else:
        # integrators read an outbound text as a plain string, the wamid beside the message
        info["channel_data"] = {"message": {"type": message.data.get("type", "text"), "text": message.text}}
        if wamid is not None:
            info["channel_data"]["message_id"] = wamid
        title = "outgoing_message"
    seconds = message.created_at.timestamp()
    last_inbound = next((m for m in reversed(contact.messages) if m.direction == IN), None)
    event = {
        "title": title,
        "service": "whatsapp",
        "bot": {"id": bot.id, "name": bot.name, "channel": "WHATSAPP", "url": f"https://wa.me/{bot.phone}"},
        "contact": {
            "id": contact.id,
            "phone": str(contact.phone),
            "name": contact.name,
            "tags": list(contact.tags),
            "variables": dict(contact.variables),
            "is_chat_opened": contact.is_chat_opened,
            "last_message": last_inbound.text if last_inbound else None,
        },
        "info": {"message": info},
        "date": int(seconds) if options.get("date_unit") == "s" else int(seconds * 1000),
    }
    return event if options.get("single") else [event]
