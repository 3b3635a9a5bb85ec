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
    for expected in ("message from ***7838 [phone=***7838]", "failed for ***7838", "ValueError: bad number ***7838"):
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


def server_error(exc, message="Error handling request from %s", *args):
    import logging

    logging.getLogger("aiohttp.server").error(message, *(args or ("127.0.0.1",)), exc_info=exc)


def raised(exc):
    try:
        raise exc
    except Exception as caught:
        return caught


def test_aiohttp_errors_come_as_one_line_without_any_byte_of_the_request(captured):
    from aiohttp.http_exceptions import BadHttpMessage, BadStatusLine, InvalidHeader, LineTooLong

    setup_logging("INFO", stream=captured)
    # the C parser's shape: a fixed reason, then the bytes; the Python parser's: the bytes in the text
    server_error(raised(BadHttpMessage("Invalid header token:\n\n  b'X-SECRET\\xffd: a'\n       ^")))
    server_error(
        raised(
            BadStatusLine(error="Bad status line:\n  Invalid minor version:\n\n  b'POST /?token=SECRET HTTP/9.x'\n   ^")
        )
    )
    server_error(raised(InvalidHeader(b"Authorization: Bearer SECRET\xff")))
    server_error(raised(LineTooLong(b"Bearer SECRET" + b"A" * 100, 8190)))
    server_error(raised(BadStatusLine("POST /webhooks/sendpulse?token=SECRET HTTP/1.1")))
    server_error(raised(BadHttpMessage("Reason: with 'quotes' SECRET:\n\n  b'x'")))
    lines = captured.getvalue().splitlines()
    assert "SECRET" not in captured.getvalue() and "Bearer" not in captured.getvalue()
    assert [line.split(" WARNING  ", 1)[1] for line in lines] == [
        "bad HTTP request from 127.0.0.1: Invalid header token",
        "bad HTTP request from 127.0.0.1: Invalid minor version",
        "bad HTTP request from 127.0.0.1: invalid header",
        "bad HTTP request from 127.0.0.1: line too long",
        "bad HTTP request from 127.0.0.1: invalid request line",
        "bad HTTP request from 127.0.0.1: malformed request",
    ]


def test_a_request_handler_crash_keeps_its_frames_but_not_its_message(captured):
    setup_logging("INFO", stream=captured)
    server_error(raised(UnicodeEncodeError("utf-8", "Bearer SECRET\udcff", 13, 14, "surrogates not allowed")))
    out = captured.getvalue()
    assert "SECRET" not in out
    assert "ERROR    error handling a request from 127.0.0.1: UnicodeEncodeError" in out
    assert "in raised" in out  # where it happened


def test_other_stdlib_records_reach_the_log(captured):
    import logging

    setup_logging("INFO", stream=captured)
    logging.getLogger("asyncio").error("Task exception was never retrieved for 5582981627838")
    logging.getLogger("aiohttp.access").info('127.0.0.1 "GET /webhooks/sendpulse?token=SECRET HTTP/1.1" 200')
    logging.getLogger("asyncio").debug("hidden at INFO")
    assert captured.getvalue().splitlines() == [
        captured.getvalue().splitlines()[0].split(" ERROR", 1)[0] + " ERROR    Task exception was never retrieved "
        "for ***7838"
    ]


@pytest.mark.parametrize(
    "text, safe",
    [
        ("http://127.0.0.1:8080/hooks/SECRET?token=SECRET", "http://127.0.0.1:8080"),
        ("https://user:SECRET@hooks.example.com/x", "https://hooks.example.com"),
        (
            "failed: URL('https://hooks.example.com/T0/SECRET') answered 500",
            "failed: URL('https://hooks.example.com') answered 500",
        ),
        ("postgresql://u:SECRET@[::1]:5432/db down", "postgresql://[::1]:5432 down"),
        ("no url here", "no url here"),
        ("http://[x/SECRET and on", "http://? and on"),  # urlsplit refuses an unclosed bracket
        ("http://h:port/SECRET", "http://h"),
        ("ftp://]weird[/SECRET", "ftp://?"),
    ],
)
def test_urls_are_logged_by_their_host(text, safe):
    from daemon.logs import scrub_urls

    assert scrub_urls(text) == safe


def test_a_log_call_never_raises_whatever_it_quotes(captured, monkeypatch):
    setup_logging("INFO", stream=captured)
    logger.info("refused event {}", "msg:http://[x/SECRET:m1")  # urlsplit raises on this
    monkeypatch.setattr("daemon.logs.scrub_urls", lambda text: 1 / 0)  # and on anything we did not foresee
    logger.error("event {} for 5582981627838", "SECRET")
    lines = captured.getvalue().splitlines()
    assert lines[0].endswith("refused event msg:http://?")
    assert lines[1].endswith("(a log line chatledger could not mask: ZeroDivisionError)")
    assert "SECRET" not in captured.getvalue() and "5582981627838" not in captured.getvalue()


def test_a_body_that_does_not_decode_is_one_warning_line(captured):
    from aiohttp.http_exceptions import ContentEncodingError
    from aiohttp.web_protocol import RequestPayloadError

    setup_logging("INFO", stream=captured)
    try:
        try:
            raise ContentEncodingError("deflate")
        except ContentEncodingError as inner:
            raise RequestPayloadError("Can not decode content-encoding: deflate") from inner
    except RequestPayloadError as exc:
        server_error(exc)
    out = captured.getvalue()
    assert "Traceback" not in out and "ERROR" not in out
    assert out.split(" WARNING  ", 1)[1].strip() == "bad HTTP request from 127.0.0.1: invalid content encoding"


def test_every_log_line_keeps_urls_to_their_host(captured):
    setup_logging("INFO", stream=captured)
    logger.bind(target="https://hooks.example.com/T0/SECRET").warning("posting to {}", "http://h:81/x?token=SECRET")
    try:
        raise RuntimeError("InvalidUrlClientError: http://127.0.0.1:99999/hooks/SECRET")
    except RuntimeError:
        logger.exception("failed")
    out = captured.getvalue()
    assert "SECRET" not in out
    assert "posting to http://h:81 [target=https://hooks.example.com]" in out
    assert "InvalidUrlClientError: http://127.0.0.1" in out
