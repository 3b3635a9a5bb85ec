"""Logging with loguru: journald-aware format, optional JSON lines, phone numbers and URL credentials masked."""

from __future__ import annotations

import json
import os
import re
import sys
import traceback
from typing import Any, TextIO

from loguru import logger

# Digits, optionally led by '+' and grouped by single spaces or dashes, not glued to a word; a match
# with 8 to 15 digits is a phone number in one of the shapes SendPulse sends. Hex ids contain letters
# and are left alone.
_PHONE = re.compile(r"(?<![\w+])\+?\d{1,15}(?:[ -]\d{2,15})*(?![\w])")

# The user:password@ of a URL (e.g. in a requests error quoting the URL it called), up to the last '@'
# before the path.
_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^\s/?#]*@", re.IGNORECASE)

# journald reads a "<N>" syslog priority prefix on each stderr line (SyslogLevelPrefix=yes).
_SYSLOG_PRIORITY = {
    "TRACE": 7, "DEBUG": 7, "INFO": 6, "SUCCESS": 5, "WARNING": 4, "ERROR": 3, "CRITICAL": 2,
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


def _mask_record(record: dict[str, Any]) -> None:
    record["message"] = mask_text(record["message"])
    for key, value in list(record["extra"].items()):
        if isinstance(value, str):
            record["extra"][key] = mask_text(value)
    exc = record["exception"]
    if exc is not None and exc.type is not None:
        lines = traceback.format_exception(exc.type, exc.value, exc.traceback)
        record["extra"]["_traceback"] = mask_text("".join(lines))
        record["extra"]["_exception"] = mask_text(f"{exc.type.__name__}: {exc.value}")


def _json_line(record: dict[str, Any]) -> str:
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


def _plain_format(journald: bool) -> Any:
    def fmt(record: dict[str, Any]) -> str:
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
