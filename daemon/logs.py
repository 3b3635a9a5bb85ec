"""Logging with loguru: journald-aware format, optional JSON lines, phone numbers and URLs masked, stdlib
logging (aiohttp, asyncio) bridged in without any byte of a request."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO
from urllib.parse import urlsplit

from loguru import logger

if TYPE_CHECKING:
    from loguru import Record

# Digits, optionally led by '+' and grouped by single spaces or dashes, not glued to a word; a match
# with 8 to 15 digits is a phone number in one of the shapes SendPulse sends. Hex ids contain letters
# and are left alone.
_PHONE = re.compile(r"(?<![\w+])\+?\d{1,15}(?:[ -]\d{2,15})*(?![\w])")

# The user:password@ of a URL (e.g. in a requests error quoting the URL it called), up to the last '@'
# before the path.
_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^\s/?#]*@", re.IGNORECASE)

# journald reads a "<N>" syslog priority prefix on each stderr line (SyslogLevelPrefix=yes).
_SYSLOG_PRIORITY = {
    "TRACE": 7,
    "DEBUG": 7,
    "INFO": 6,
    "SUCCESS": 5,
    "WARNING": 4,
    "ERROR": 3,
    "CRITICAL": 2,
}


def mask_phone(phone: str | None) -> str:
    """Keep only the last 4 digits of a phone number."""
    digits = re.sub(r"\D", "", phone or "")
    return "***" + digits[-4:] if digits else ""


def _mask_match(match: re.Match[str]) -> str:
    digits = sum(c.isdigit() for c in match.group(0))
    return mask_phone(match.group(0)) if 8 <= digits <= 15 else match.group(0)


def mask_text(text: str) -> str:
    """Mask every phone-number-looking run of digits and every URL's user:password@ in free text."""
    return _PHONE.sub(_mask_match, _USERINFO.sub(r"\1***@", text))


def _mask_record(record: Record) -> None:
    """Mask the record; never raise (a log call must never fail what it reports on, a commit say)."""
    try:
        _mask(record)
    except Exception as exc:
        record["message"] = f"(a log line chatledger could not mask: {type(exc).__name__})"
        record["extra"] = {key: value for key, value in record["extra"].items() if not isinstance(value, str)}
        record["exception"] = None


def _mask(record: Record) -> None:
    record["message"] = _masked(record["message"])
    for key, value in list(record["extra"].items()):
        if isinstance(value, str):
            record["extra"][key] = _masked(value)
    exc = record["exception"]
    if exc is not None and exc.type is not None:
        lines = traceback.format_exception(exc.type, exc.value, exc.traceback)
        record["extra"]["_traceback"] = _masked("".join(lines))
        record["extra"]["_exception"] = _masked(f"{exc.type.__name__}: {exc.value}")


def _masked(text: str) -> str:
    return mask_text(scrub_urls(text))  # a URL's path and query can hold a secret


def _json_line(record: Record) -> str:
    entry = {
        "time": record["time"].isoformat(),
        "level": record["level"].name,
        "message": record["message"],
        "module": record["name"],
    }
    entry.update({k: v for k, v in record["extra"].items() if not k.startswith("_")})
    if "_exception" in record["extra"]:
        entry["exception"] = record["extra"]["_exception"]
    record["extra"]["_json"] = json.dumps(entry, default=str, ensure_ascii=False)
    return "{extra[_json]}\n"


def _plain_format(journald: bool) -> Callable[[Record], str]:
    def fmt(record: Record) -> str:
        extras = " ".join(f"{k}={v}" for k, v in record["extra"].items() if not k.startswith("_"))
        record["extra"]["_suffix"] = f" [{extras}]" if extras else ""
        tail = "{extra[_suffix]}\n"
        if "_traceback" in record["extra"]:
            tail += "{extra[_traceback]}"
        if journald:
            # No timestamp: journald stamps every line itself.
            return f"\\<{_SYSLOG_PRIORITY.get(record['level'].name, 6)}>" + "{level}: {message}" + tail
        return "{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <8} {message}" + tail

    return fmt


# scheme://authority then the rest of the URL, up to what ends it in free text and in reprs
_URL = re.compile(r"""\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/?#'"<>()]+[^\s'"<>()]*""")


def safe_url(url: str) -> str:
    """A URL fit for a log line: scheme://host[:port]. Its user, path and query can hold a secret (chat
    webhooks carry theirs in the path). Never raises: what cannot be read is `scheme://?`."""
    scheme = url.split("://", 1)[0]
    try:
        parts = urlsplit(url)
    except ValueError:  # an unclosed IPv6 bracket
        return f"{scheme}://?"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # a port that is not a number
        port = ""
    host = parts.hostname or "?"
    return f"{scheme}://{f'[{host}]' if ':' in host else host}{port}"


def scrub_urls(text: str) -> str:
    """Every URL in free text (an exception's message) cut to what safe_url keeps."""
    return _URL.sub(lambda match: safe_url(match.group(0)), text)


# aiohttp's parser errors by class, for when the message cannot be trusted to hold no request bytes
_HTTP_ERRORS = {
    "LineTooLong": "line too long",
    "InvalidHeader": "invalid header",
    "BadHttpMethod": "invalid method",
    "BadStatusLine": "invalid request line",
    "InvalidURLError": "invalid URL",
    "TransferEncodingError": "invalid transfer encoding",
    "ContentLengthError": "body shorter than its Content-Length",
    "ContentEncodingError": "invalid content encoding",
}
# llhttp's reasons are fixed words; anything else in that place is not trusted
_REASON = re.compile(r"[A-Za-z][A-Za-z0-9 ,.'_-]{0,79}")


def _http_error_kind(exc: BaseException) -> str:
    message = str(getattr(exc, "message", ""))
    if ":\n\n" in message:  # the C parser's shape: "<reason>:\n\n  b'<the bytes>'\n  ^"
        reason = message.split(":\n\n", 1)[0].rsplit(":\n", 1)[-1].strip()
        if _REASON.fullmatch(reason) and "b'" not in reason:
            return reason.rstrip(".")
    for cls in type(exc).__mro__:
        if cls.__name__ in _HTTP_ERRORS:
            return _HTTP_ERRORS[cls.__name__]
    return "malformed request"


def _aiohttp_record(record: logging.LogRecord) -> tuple[int, str] | None:
    """aiohttp's record as (level, text) without the request's bytes (request line, query string, header
    values), which its messages and exceptions quote; None to drop it."""
    from aiohttp.http_exceptions import HttpProcessingError
    from aiohttp.web_protocol import RequestPayloadError

    if record.name == "aiohttp.access":  # request lines with their query strings: never enabled, never logged
        return None
    args = record.args if isinstance(record.args, tuple) else ()
    peer = f" from {args[0]}" if "from %s" in str(record.msg) and args else ""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, HttpProcessingError):
        return min(record.levelno, logging.WARNING), f"bad HTTP request{peer}: {_http_error_kind(exc)}"
    if isinstance(exc, RequestPayloadError):  # a body that does not decode, met again while draining it
        cause = exc.__cause__ if isinstance(exc.__cause__, HttpProcessingError) else exc
        return min(record.levelno, logging.WARNING), f"bad HTTP request{peer}: {_http_error_kind(cause)}"
    if exc is not None:  # a handler crashed: where, but not the message, which may quote the request
        frames = "".join(traceback.format_tb(exc.__traceback__))
        return record.levelno, (
            f"error handling a request{peer}: {type(exc).__name__} (its message is not "
            f"logged)\nTraceback (most recent call last):\n{frames.rstrip()}"
        )
    return record.levelno, re.sub(r"%[-#0 +]*\d*(?:\.\d+)?[a-zA-Z]", "…", str(record.msg))


class _StdlibBridge(logging.Handler):
    """Stdlib logging into loguru (the one sink, masked); without it Python's last-resort handler writes
    aiohttp's records, raw request bytes included, to stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        exc_info = record.exc_info
        if record.name.split(".")[0] == "aiohttp":
            reduced = _aiohttp_record(record)
            if reduced is None:
                return
            levelno, text = reduced
            exc_info = None
        else:
            levelno, text = record.levelno, record.getMessage()
        name = logging.getLevelName(levelno)
        level: str | int = name if name in _SYSLOG_PRIORITY else levelno
        logger.patch(lambda r: r.update({"name": record.name})).opt(exception=exc_info).log(level, "{}", text)


_BRIDGE = _StdlibBridge()


def setup_logging(level: str = "INFO", json_lines: bool = False, stream: TextIO | None = None) -> None:
    """(Re)configure the single loguru sink; safe to call again on SIGHUP."""
    logger.remove()
    journald = bool(os.environ.get("JOURNAL_STREAM"))
    logger.configure(patcher=_mask_record)
    logger.add(
        stream or sys.stderr,
        level=level,
        format=_json_line if json_lines else _plain_format(journald),
        backtrace=False,
        diagnose=False,  # diagnose would print local variables: secrets and phone numbers
        colorize=False,
    )
    root = logging.getLogger()
    if _BRIDGE not in root.handlers:
        root.addHandler(_BRIDGE)
    # Libraries' WARNING and above, what Python's last resort printed; their debug stays out (aiosqlite's
    # repeats every statement with its parameters, raw events included).
    root.setLevel(logging.WARNING)
