"""Normalization over every payload shape in the SendPulse reference."""

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.events import (
    BodyError,
    Event,
    Rejected,
    digits_only,
    is_phone_number,
    mentions_phone,
    normalize,
    parse_body,
    parse_date,
    storable_json,
)

NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)

S1 = """[
  {"info": {"message": {"channel_data": {"message": {"text": "hi test bot"},
                                         "message_id": 2121, "chat_id": 380485157},
                        "id": "6a496b4f67a824bf17040c06"}},
   "service": "telegram", "title": "incoming_message", "bot": {"channel": "TELEGRAM"},
   "contact": {"username": "aptashenko", "name": "Ptashenko Artem",
               "telegram_id": "380485157", "id": "6a4969158278b1482a02e7f6"}},
  {"info": null, "service": "telegram", "title": "open_chat"}
]"""

S2 = """[
  {"title": "outgoing_message", "service": "telegram", "bot": {"id": "bot-id", "name": "Bot"},
   "contact": {"id": "c1", "telegram_id": "1", "username": "u", "name": "n",
               "variables": {"email": "e@x", "phone": "+380501112233"}}},
  {"title": "outgoing_message", "service": "telegram", "bot": {"id": "bot-id", "name": "Bot"},
   "contact": {"id": "c2", "telegram_id": "2", "name": "m", "variables": {"phone": "+380501112244"}},
   "info": {"message": {"channel_data": {"message_id": 93867, "message": {"text": "Broadcast message"}}}}}
]"""

S3 = """{
  "service": "telegram", "title": "incoming_message",
  "bot": {"id": "a1b2c3d4-e5f6-7890-abcd-ef1234567890", "name": "MyShopBot", "external_id": "123456789"},
  "contact": {"id": "f9e8d7c6", "name": "Іван Петренко", "phone": "+380991234567",
              "last_message": "Доброго дня! Цікавить ваш товар", "variables": {"username": "ivan"}},
  "date": 1617401679000
}"""

S4 = (
    '[{"title":"incoming_message","service":"whatsapp","info":{"message":{"id":"test123","channel_data":'
    '{"message":{"type":"text","text":{"body":"olá"}}}}},"contact":{"phone":"5533998980026","name":"Test"}}]'
)

S5 = """{"service": "messenger", "title": "incoming_message",
  "contact": {"id": "sendpulse-uuid", "name": "Client", "last_message": null, "variables": []},
  "info": {"message": {"channel_data": {"message": {"item": "comment", "verb": "add",
    "comment_id": "966_241", "message": "Дитині 8, яка вартість?", "from": {"id": "917", "name": "x"}}}}}}"""

S6 = """{"service": "whatsapp", "title": "outgoing_message", "bot_id": "xxx",
  "contact": {"id": "xxx", "phone": "5582981627838", "name": "Nome do Contato"},
  "date": 1736092619000, "message": {"id": "wamid.xxx", "type": "template", "text": "..."},
  "info": {"message": {"channel_data": {"message_id": "wamid.xxx"}}}}"""

S7_INSTAGRAM = """{"service": "instagram", "title": "incoming_message", "date": 1713225600,
 "bot": {"id": "bot-1"}, "contact": {"id": "sp_123", "username": "testuser", "last_message": "Yes"},
 "info": {"message_id": "msg-1"}}"""

S7_TELEGRAM = (
    '{"service": "telegram", "title": "incoming_message", '
    '"bot": {"id": "different", "external_id": 6934241673}, "contact": {"id": "business"}}'
)


def events_of(body: str) -> list:
    return [normalize(element.value, NOW, element.raw) for element in parse_body(body.encode())]


def whatsapp(message: dict, title: str = "incoming_message", **extra) -> dict:
    return {
        "title": title,
        "service": "whatsapp",
        "bot": {"id": "b1"},
        "contact": {"id": "c1", "phone": "+55 82 98162-7838", "name": "Ana"},
        "info": {"message": {"id": "sp1", "channel_data": {"message": message}}},
        **extra,
    }


def test_s1_real_telegram_batch_keeps_both_events():
    incoming, open_chat = events_of(S1)
    assert isinstance(incoming, Event) and isinstance(open_chat, Event)
    assert incoming.message_id == "6a496b4f67a824bf17040c06"
    assert incoming.dedup_key == "msg:incoming_message:6a496b4f67a824bf17040c06"
    assert incoming.platform_message_id == "2121"
    assert incoming.text == "hi test bot"
    assert incoming.direction == "inbound"
    assert incoming.contact_id == "6a4969158278b1482a02e7f6"
    assert incoming.contact_name == "Ptashenko Artem"
    assert incoming.occurred_at == NOW  # no date: receive time
    assert open_chat.title == "open_chat" and open_chat.message_id is None
    assert open_chat.dedup_key.startswith("sha256:")
    assert open_chat.direction is None


def test_s2_outgoing_without_info_and_with_text():
    first, second = events_of(S2)
    assert first.direction == second.direction == "outbound"
    assert first.phone == "380501112233"  # from contact.variables.phone
    assert first.text is None and first.message_id is None
    assert second.text == "Broadcast message"
    assert second.platform_message_id == "93867"
    assert first.bot_id == "bot-id"
    assert first.dedup_key != second.dedup_key


def test_s3_single_object_with_ms_date_and_plus_phone():
    (event,) = events_of(S3)
    assert event.occurred_at == datetime(2021, 4, 2, 22, 14, 39, tzinfo=UTC)
    assert event.phone == "380991234567"
    assert event.contact_name == "Іван Петренко"
    # no message text anywhere: the inbound fallback is contact.last_message
    assert event.text == "Доброго дня! Цікавить ваш товар"


def test_s4_whatsapp_inbound_text_body():
    (event,) = events_of(S4)
    assert (event.text, event.message_type, event.service) == ("olá", "text", "whatsapp")
    assert event.phone == "5533998980026"
    assert event.message_id == "test123"
    assert json.loads(event.raw) == json.loads(S4)[0]


def test_s5_comment_with_list_variables():
    (event,) = events_of(S5)
    assert event.text == "Дитині 8, яка вартість?"
    assert event.phone is None  # variables is [] and there is no phone


def test_s6_outbound_with_top_level_message():
    (event,) = events_of(S6)
    assert event.bot_id == "xxx"
    assert event.platform_message_id == "wamid.xxx"
    assert event.message_type == "template"
    assert event.text == "..."
    assert event.occurred_at == datetime(2025, 1, 5, 15, 56, 59, tzinfo=UTC)


def test_s7_instagram_message_id_under_info_and_seconds_date():
    (event,) = events_of(S7_INSTAGRAM)
    assert event.message_id == "msg-1"
    assert event.occurred_at == datetime(2024, 4, 16, 0, 0, tzinfo=UTC)
    assert event.text == "Yes"


def test_s7_telegram_minimal():
    (event,) = events_of(S7_TELEGRAM)
    assert event.bot_id == "different" and event.contact_id == "business"
    assert event.dedup_key.startswith("sha256:")


@pytest.mark.parametrize(
    "message, expected",
    [
        (
            {
                "type": "interactive",
                "interactive": {"type": "button_reply", "button_reply": {"id": "b", "title": "Sim"}},
            },
            "Sim",
        ),
        (
            {
                "type": "interactive",
                "interactive": {"type": "list_reply", "list_reply": {"id": "l", "title": "Plano B"}},
            },
            "Plano B",
        ),
        ({"type": "button", "button": {"text": "Quero"}}, "Quero"),
        ({"type": "image", "image": {"caption": "receipt", "url": "https://x/img.jpg"}}, "receipt\nhttps://x/img.jpg"),
        ({"type": "document", "document": {"url": "https://x/r.pdf"}}, "https://x/r.pdf"),
        ({"type": "document", "file": {"link": "https://x/f.pdf"}}, "https://x/f.pdf"),
        ({"type": "text", "text": {"body": "a\u0000b"}}, "a\ufffdb"),  # what no store takes is marked, not dropped
    ],
)
def test_message_text_shapes(message, expected):
    event = normalize(whatsapp(message), NOW)
    assert event.text == expected
    assert event.message_type == message["type"]


def test_outbound_plain_string_text_and_no_last_message_fallback():
    element = whatsapp({"text": "Olá, como posso ajudar?"}, title="outgoing_message")
    element["contact"]["last_message"] = "customer text"
    assert normalize(element, NOW).text == "Olá, como posso ajudar?"
    element["info"]["message"]["channel_data"]["message"] = {}
    assert normalize(element, NOW).text is None  # last_message is the customer's, not ours


def test_phone_fallback_to_whatsapp_sender():
    element = whatsapp({"from": "5511987654321", "text": {"body": "x"}})
    element["contact"] = {"id": "c"}
    assert normalize(element, NOW).phone == "5511987654321"


def test_unknown_title_is_accepted():
    event = normalize({"title": "run_custom_flow", "contact": {"id": "c"}}, NOW)
    assert isinstance(event, Event) and event.title == "run_custom_flow" and event.direction is None


@pytest.mark.parametrize(
    "element, reason",
    [
        (5, "element is a number, not an object"),
        ("text", "element is a string, not an object"),
        ([1], "element is an array, not an object"),
        (None, "element is null, not an object"),
        ({"service": "whatsapp"}, "element has no title"),
        ({"title": ""}, "title is empty"),
        ({"title": 7}, "title is a number, not a name"),
    ],
)
def test_rejections_keep_the_raw_element(element, reason):
    rejected = normalize(element, NOW)
    assert isinstance(rejected, Rejected)
    assert rejected.reason == reason
    assert json.loads(rejected.raw) == element


def test_dedup_key_is_the_message_id_scoped_by_title():
    a = normalize(whatsapp({"text": {"body": "x"}}), NOW)
    b = normalize(whatsapp({"text": {"body": "different retry body"}}), NOW)
    c = normalize(whatsapp({"text": {"body": "x"}}, title="message_read"), NOW)
    assert a.dedup_key == b.dedup_key == "msg:incoming_message:sp1"
    assert c.dedup_key != a.dedup_key


def test_dedup_hash_ignores_key_order_but_not_content():
    one = normalize(json.loads('{"title": "open_chat", "contact": {"id": "c", "name": "n"}}'), NOW)
    same = normalize(json.loads('{"contact": {"name": "n", "id": "c"}, "title": "open_chat"}'), NOW)
    other = normalize({"title": "open_chat", "contact": {"id": "d", "name": "n"}}, NOW)
    assert one.dedup_key == same.dedup_key
    assert one.dedup_key != other.dedup_key


@pytest.mark.parametrize(
    "value, expected",
    [
        (1713225600, datetime(2024, 4, 16, tzinfo=UTC)),
        (1713225600000, datetime(2024, 4, 16, tzinfo=UTC)),
        (1713225600.5, datetime(2024, 4, 16, 0, 0, 0, 500000, tzinfo=UTC)),
        ("1713225600000", datetime(2024, 4, 16, tzinfo=UTC)),
        ("2024-04-16T03:00:00+03:00", datetime(2024, 4, 16, tzinfo=UTC)),
        ("2024-04-16T00:00:00Z", datetime(2024, 4, 16, tzinfo=UTC)),
        (None, NOW),
        (True, NOW),
        ("soon", NOW),
        (-5, NOW),
        (0, NOW),
        ({"a": 1}, NOW),
        (1e300, NOW),
    ],
)
def test_dates_in_seconds_or_milliseconds(value, expected):
    assert parse_date(value, NOW) == expected


@pytest.mark.parametrize(
    "phone, digits",
    [
        ("+55 (82) 98162-7838", "5582981627838"),
        (5582981627838, "5582981627838"),
        ("", None),
        ("abc", None),
        (None, None),
        (True, None),
    ],
)
def test_phone_digits_only(phone, digits):
    assert digits_only(phone) == digits


@pytest.mark.parametrize(
    "text, mentioned",
    [
        ("5511988887777", True),
        ('{"phone": "+55 11 98888-7777"}', True),
        ("call +55 (11) 98888-7777 now", True),
        ("55.11.98888.7777", True),
        ('{"phone": 5511988887777, "n": 1}', True),
        ("x+5511988887777x", True),
        ("155119888877770", False),
        ("5511988887777 0", True),
        ("15511988887777", False),
        ("55119888877771", False),
        ("+55 11 98888-77770", False),
        ("1", False),
        ("+55 11 98888", False),
        ("", False),
        (None, False),
        ("55 11 98888/7777", False),
    ],
)
def test_a_phone_is_mentioned_only_as_a_whole_number(text, mentioned):
    assert mentions_phone(text, "5511988887777") is mentioned


def test_mentions_phone_stays_linear_on_hostile_text():
    text = "1 " * 200_000 + "5511988887777"
    # one phone-like run of 200,001 groups: not the phone 1111111; its last bare digit run is the phone
    assert mentions_phone(text, "5511988887777") and not mentions_phone(text, "1111111")


@pytest.mark.parametrize(
    "digits, valid",
    [
        ("5511988887777", True),
        ("1234567", True),
        ("123456789012345", True),
        ("123456", False),
        ("1234567890123456", True),
        ("123456789012345678901", False),
        ("1", False),
        ("", False),
        ("12345\u0661789", False),
    ],
)
def test_a_phone_number_has_7_to_15_digits(digits, valid):
    assert is_phone_number(digits) is valid


@pytest.mark.parametrize(
    "body, message",
    [
        (b"not json", "body is not valid JSON"),
        (b"\xff\xfe", "body is not valid JSON"),
        (b'"a string"', "body must be a JSON object or an array of objects, not a string"),
        (b"42", "not a number"),
        (b"null", "not null"),
        (b'[{"title": NaN}]', "body is not valid JSON"),
        (b"[" * 100000 + b"]" * 100000, "body is not valid JSON"),
    ],
)
def test_bad_bodies(body, message):
    with pytest.raises(BodyError, match=message.replace("(", r"\(")):
        parse_body(body)


def test_empty_array_is_no_events():
    assert parse_body(b"[]") == []


def test_lone_surrogate_is_cleaned_in_raw_and_kept_verbatim_in_original():
    (element,) = parse_body(b'[{"title": "incoming_message", "x": "\\ud800"}]')
    for event in (normalize(element.value, NOW, element.raw), normalize(element.value, NOW)):
        event.raw.encode("utf-8")  # storable
        assert json.loads(event.raw)["x"] == "\ufffd"  # what the stores receive (jsonb refuses \ud800)
        assert json.loads(event.original)["x"] == "\ud800"  # the element as received, for inspection
    assert normalize(element.value, NOW, element.raw).original == element.raw


def test_raw_is_each_element_verbatim():
    body = b'[ {"title": "a",  "n": 1.50}\n, 7 ,{"title":"b","t":"\\u00e9"}]'
    assert [element.raw for element in parse_body(body)] == [
        '{"title": "a",  "n": 1.50}',
        "7",
        '{"title":"b","t":"\\u00e9"}',
    ]
    assert parse_body(b'\xef\xbb\xbf {"title": "x"} ')[0].raw == '{"title": "x"}'


@pytest.mark.parametrize("body", [b"[1,]", b"[1 2]", b"[1]x", b"{} {}", b"[", b"", b"[{}"])
def test_malformed_arrays(body):
    with pytest.raises(BodyError, match="not valid JSON"):
        parse_body(body)


@pytest.mark.parametrize(
    "element",
    [
        {"title": "incoming_message", "contact": {"phone": 1e400}},
        {"title": "incoming_message", "contact": {"phone": float("nan")}},
        {"title": "incoming_message", "contact": {"phone": 10**20}},
        {"title": "incoming_message", "date": "9999-12-31T23:59:59-05:00"},
        {"title": "incoming_message", "date": "0001-01-01T00:00:00+05:00"},
        {"title": "incoming_message", "date": 1e400},
        {"title": "\ud800", "contact": {"name": "\udfff"}},
    ],
)
def test_normalizing_never_raises(element):
    event = normalize(element, NOW)
    assert isinstance(event, Event)
    assert event.occurred_at == NOW  # an unreadable date is the receive time
    for value in (event.title, event.raw, event.dedup_key, event.contact_name or ""):
        value.encode("utf-8")  # every field is storable


def test_an_element_python_cannot_print_is_rejected_not_raised():
    rejected = normalize({"title": "x", "n": 10**5000}, NOW)  # only code, not a body, can hand us one
    assert isinstance(rejected, Rejected) and "cannot be read" in rejected.reason


def test_a_body_with_a_5000_digit_number_is_read():
    (element,) = parse_body(b'{"title": "incoming_message", "contact": {"phone": ' + b"5" * 5000 + b"}}")
    event = normalize(element.value, NOW, element.raw)
    assert event.phone is None and json.loads(event.raw)["contact"]["phone"] == "5" * 5000


def test_an_element_that_cannot_be_read_is_rejected_alone(monkeypatch):
    monkeypatch.setattr("daemon.events._message_text", lambda *args: 1 / 0)
    rejected = normalize({"title": "incoming_message"}, NOW, '{"title": "incoming_message"}')
    assert isinstance(rejected, Rejected)
    assert rejected.reason == "element cannot be read: ZeroDivisionError: division by zero"
    assert rejected.raw == '{"title": "incoming_message"}'


@pytest.mark.parametrize("date", ["1999-12-31T23:59:59Z", "2201-01-01T00:00:00Z", 1, 946684799])
def test_implausible_dates_are_the_receive_time(date):
    assert parse_date(date, NOW) == NOW


@pytest.mark.parametrize(
    "raw, delivered",
    [
        ('{"title":"a\\u0000b"}', {"title": "a\ufffdb"}),
        ('{"title":"x","n":"\\udc00\\ud800"}', {"title": "x", "n": "\ufffd\ufffd"}),
        ('{"title":"x","\\ud800":1}', {"title": "x", "\ufffd": 1}),
        (
            '{"title":"x","big":1e400,"small":-1e-400,"n":1.5}',
            {"title": "x", "big": "1e400", "small": "-1e-400", "n": 1.5},
        ),
        ('{"title":"x","huge":' + "9" * 400 + "}", {"title": "x", "huge": "9" * 400}),
        ('{"title":"x","huger":' + "9" * 5000 + "}", {"title": "x", "huger": "9" * 5000}),
    ],
)
def test_what_no_store_takes_is_cleaned_and_the_original_kept(raw, delivered):
    (element,) = parse_body(raw.encode())
    event = normalize(element.value, NOW, element.raw)
    assert json.loads(event.raw) == delivered
    assert event.original == raw


@pytest.mark.parametrize(
    "raw",
    [
        '{"title":"x","emoji":"\\ud83d\\ude00","e":"\\u00e9"}',
        '{"title":"x","n":1e300,"s":"e100"}',
        '{"title":"x","path":"C:\\\\ud800"}',
        '{"title":"x","zero":0e999}',
    ],
)
def test_storable_elements_are_kept_verbatim(raw):
    (element,) = parse_body(raw.encode())
    event = normalize(element.value, NOW, element.raw)
    assert (event.raw, event.original) == (raw, None)


# Strings of what the escapes' search must tell apart: NULs, lone surrogates, pairs, escaped backslashes.
_TRICKY = st.text(
    alphabet=st.sampled_from(
        ["a", "\x00", "\ud800", "\udbff", "\udc00", "\udfff", "\ud83d", "\ude00", "\u00e9", "\\", "u", "0", "d"]
    ),
    max_size=6,
)
_VALUES = st.recursive(
    st.none() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _TRICKY,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TRICKY, inner, max_size=3),
    max_leaves=8,
)


def _storable(value):
    if isinstance(value, str):
        return "\x00" not in value and not any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, list):
        return all(_storable(item) for item in value)
    if isinstance(value, dict):
        return all(_storable(key) and _storable(item) for key, item in value.items())
    return True


@given(value=_VALUES)
def test_every_element_a_store_refuses_is_found_and_no_other(value):
    raw = json.dumps({"title": "x", "v": value})  # ASCII: every NUL and surrogate an escape
    received = json.loads(raw)  # adjacent high and low surrogates are one character again
    cleaned = storable_json(raw)
    assert (cleaned is None) == _storable(received)
    assert _storable(json.loads(cleaned if cleaned is not None else raw))


_NUMBER = st.from_regex(r"-?(0|[1-9][0-9]{0,320})(\.[0-9]{1,340})?([eE][-+]?0*[0-9]{1,4})?", fullmatch=True)


_EDGES = [
    "9" * 299,
    "9" * 310,
    "-" + "9" * 400,
    "9" * 5000,
    "0." + "0" * 330 + "1",
    "1." + "0" * 400,
    "1e400",
    "-1E-999",
    "1e+0400",
    "1e99",
    "4.9e-324",
]  # beyond a double (and Python's int limit), or just within


def assert_found_without_search(numbers):
    raw = '{"title":"x","n":[' + ",".join(numbers) + "]}"
    (element,) = parse_body(raw.encode())
    assert storable_json(raw, element.wide_numbers) == storable_json(raw)


@given(numbers=st.lists(_NUMBER, min_size=1, max_size=4))
def test_numbers_parse_body_finds_within_range_need_no_search(numbers):
    assert_found_without_search(numbers)


@pytest.mark.parametrize("number", _EDGES)
def test_numbers_at_the_edge_of_a_double_are_found_by_parse_body(number):
    assert_found_without_search([number])


def test_a_date_of_hundreds_of_digits_is_the_receive_time():
    (element,) = parse_body(b'{"title": "incoming_message", "date": ' + b"9" * 400 + b"}")
    event = normalize(element.value, NOW, element.raw)
    assert isinstance(event, Event) and event.occurred_at == NOW


def test_a_deep_element_that_needs_cleaning_is_accepted_and_delivered_as_text():
    raw = '{"title": "incoming_message", "x": ' + "[" * 900 + '"a\\u0000b"' + "]" * 900 + "}"
    (element,) = parse_body(raw.encode())
    event = normalize(element.value, NOW, element.raw)
    assert isinstance(event, Event) and event.original == raw
    assert json.loads(event.raw) == {"chatledger_element_as_text": raw}  # its escapes are plain text now


def test_ids_that_clean_alike_are_still_two_messages():
    def with_id(message_id):
        return normalize({"title": "incoming_message", "info": {"message": {"id": message_id}}}, NOW)

    keys = [with_id(i).dedup_key for i in ("m1", "m\x001", "m\ufffd1", "m\ud800", "m\udfff")]
    assert len(set(keys)) == 5
    assert with_id("m\x001").message_id == "m\ufffd1" and with_id("m1").dedup_key == "msg:incoming_message:m1"
    for key in keys:
        key.encode("utf-8")  # storable
