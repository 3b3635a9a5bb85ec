"""The recover selection: built by one function from the command line's words and the socket's alike."""

from urllib.parse import parse_qsl

import pytest

from daemon.operations import recover_query, recover_selection

NOTHING = {"conversation": None, "phone": None, "since": None, "everything": False}


@pytest.mark.parametrize(
    ("words", "field", "value"),
    [
        ({"conversation": "c-42"}, "conversation", "c-42"),
        ({"phone": "+55 (11) 98765-4321"}, "phone", "5511987654321"),
        ({"since": "2026-11-20T08:00-03:00"}, "since", "2026-11-20T11:00:00.000Z"),
        ({"everything": True}, "everything", True),
    ],
)
def test_the_daemon_reads_back_the_selection_the_command_sent(words, field, value):
    selection = recover_selection(**NOTHING | words)
    assert getattr(selection, field) == value

    query = dict(parse_qsl(recover_query(selection, prefer="airtable", dry_run=True, diff=False)))
    read_back = recover_selection(
        query.get("conversation"), query.get("phone"), query.get("since"), query.get("all") == "1"
    )

    assert read_back == selection
    assert (query["prefer"], query["dry_run"], "diff" in query) == ("airtable", "1", False)


@pytest.mark.parametrize(
    ("words", "error"),
    [
        ({}, "one of the arguments --conversation --phone --since --all is required"),
        ({"conversation": ""}, "one of the arguments --conversation --phone --since --all is required"),
        ({"conversation": "c-42", "everything": True}, "argument --all: not allowed with argument --conversation"),
        ({"phone": "12"}, "is not a phone number"),
        ({"since": "yesterday"}, "not an ISO 8601 date"),
    ],
)
def test_a_selection_of_nothing_or_of_two_things_is_refused(words, error):
    with pytest.raises(ValueError, match=error):
        recover_selection(**NOTHING | words)
