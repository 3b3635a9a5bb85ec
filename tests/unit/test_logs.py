"""Phone numbers are masked to their last 4 digits in every log line."""

import io
import json

import pytest
from loguru import logger

from daemon.logs import mask_phone, mask_text, setup_logging


@pytest.mark.parametrize(
    "text, masked",
    [
        ("from 5582981627838", "from ***7838"),
        ("from +5582981627838.", "from ***7838."),
        ("call +55 82 98162-7838 now", "call ***7838 now"),
        ("id 6a4969158278b1482a02e7f6 stays", "id 6a4969158278b1482a02e7f6 stays"),
        ("event 12345 stays", "event 12345 stays"),
        ("phone=380991234567,", "phone=***4567,"),
        ("401 for url: https://u:hunter2@proxy.example/v0/x", "401 for url: https://***@proxy.example/v0/x"),
        ("at postgresql://u:p@ss@h:5432/db?x=1 down", "at postgresql://***@h:5432/db?x=1 down"),
        ("https://api.airtable.com/v0 and a@example.com stay", "https://api.airtable.com/v0 and a@example.com stay"),
    ],
)
def test_mask_text(text, masked):
    assert mask_text(text) == masked


def test_mask_phone():
    assert mask_phone("+55 82 98162-7838") == "***7838"
    assert mask_phone(None) == ""


@pytest.fixture
def captured():
    stream = io.StringIO()
    yield stream
    setup_logging("INFO")


def test_plain_lines_mask_message_extras_and_tracebacks(captured):
    setup_logging("DEBUG", json_lines=False, stream=captured)
    logger.bind(phone="5582981627838").info("message from {}", "+5582981627838")
    try:
        raise ValueError("bad number 5582981627838 at http://u:hunter2@h/")
    except ValueError:
        logger.exception("failed for 5582981627838")
    out = captured.getvalue()
    assert "5582981627838" not in out and "hunter2" not in out
    for expected in ("message from ***7838 [phone=***7838]", "failed for ***7838",
                     "ValueError: bad number ***7838"):
        assert expected in out


def test_json_lines(captured):
    setup_logging("INFO", json_lines=True, stream=captured)
    logger.debug("hidden")
    logger.info("stored {}", "5511987654321")
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    assert len(lines) == 1
    assert lines[0]["message"] == "stored ***4321" and lines[0]["level"] == "INFO"


def test_journald_lines_have_priority_and_no_timestamp(captured, monkeypatch):
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    setup_logging("INFO", stream=captured)
    logger.warning("careful")
    assert captured.getvalue() == "<4>WARNING: careful\n"
