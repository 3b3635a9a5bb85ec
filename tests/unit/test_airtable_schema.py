"""The write plan: the operator's field names, the form each field type takes, and what is left out."""

import pytest

from daemon.sinks.airtable_schema import (
    MAX_CELL_TEXT,
    SCOPE_WARNING,
    TABLES,
    BaseNames,
    cut_text,
    parse_field_mapping,
    plan_base,
    read_back,
)
from daemon.testing.airtable.bases import documented_base, formula_options
from daemon.testing.airtable.model import Base

NAMES = {"conversations": "Conversations", "interactions": "Interactions", "escalations": "Escalations"}


def documented(dates="date"):
    """The documented base's schema as the metadata API gives it, and its model to change first."""
    return documented_base(Base("appUNIT0000000001", "unit"), dates)


def schema(base):
    return [table.model() for table in base.tables]


def units(text):
    return len(text.encode("utf-16-le")) // 2


def test_a_text_a_cell_holds_is_left_alone_and_a_longer_one_is_cut_visibly():
    assert cut_text("x" * MAX_CELL_TEXT) == "x" * MAX_CELL_TEXT
    cut = cut_text("x" * (MAX_CELL_TEXT + 1))
    assert len(cut) <= MAX_CELL_TEXT and cut.startswith("x" * 99_000)
    kept = cut.index("\n\n[chatledger")
    assert cut.endswith(
        f"[chatledger: {MAX_CELL_TEXT + 1 - kept:,} more characters cut here; an Airtable cell "
        "holds at most 100,000; PostgreSQL has the whole text]"
    )
    # Airtable counts UTF-16 units: 60,000 emoji are 120,000 of them, and no pair is split
    emoji = cut_text("\U0001f600" * 60_000)
    assert units(emoji) <= MAX_CELL_TEXT and emoji.startswith("\U0001f600" * 49_000)
    assert "\ud83d" not in emoji and f"{60_000 - emoji.index(chr(10)):,} more characters" in emoji


def test_the_documented_base_takes_every_field_in_its_own_form():
    plan = plan_base(schema(documented()), NAMES)
    assert (plan.problems, plan.warnings) == ([], [])
    assert (
        "Escalations.Reason is a single select field: each new value becomes a choice (written with typecast)"
        in plan.notes
    )
    assert "Interactions.Timestamp is a date field without time: chatledger writes the date in UTC" in plan.notes
    row = plan.tables["interactions"].row(
        {
            "InteractionId": "i1",
            "Timestamp": "2026-11-25T23:30:00.000-05:00",
            "ProcessingTime": 120,
            "Content": "oi",
            "Status": "read",
        }
    )
    assert row == {
        "InteractionId": "i1",
        "Timestamp": "2026-11-26",
        "ProcessingTime": 120,
        "Content": "oi",
        "Status": "read",
    }
    with_time = plan_base(schema(documented("dateTime")), NAMES)
    assert with_time.tables["interactions"].row({"InteractionId": "i1", "Timestamp": "2026-11-25T23:30:00-05:00"}) == {
        "InteractionId": "i1",
        "Timestamp": "2026-11-26T04:30:00.000Z",
    }
    assert not any("date field" in note for note in with_time.notes)


def test_other_types_take_our_values_as_they_can_and_the_rest_is_left_out():
    base = documented()
    conversations, interactions = base.table("Conversations"), base.table("Interactions")
    for field in (conversations.field("Status"), interactions.field("Status")):
        field.type, field.options = "singleLineText", None
    conversations.field("MessageCount").type = "singleLineText"
    conversations.field("Tags").type, conversations.field("Tags").options = "multipleSelects", {"choices": []}
    interactions.field("ProcessingTime").type = "duration"
    interactions.field("Intent").type, interactions.field("Intent").options = "formula", formula_options()
    interactions.field("Response").type = "checkbox"
    interactions.field("CreatedAt").type = "createdTime"
    plan = plan_base(schema(base), NAMES)
    assert plan.problems == []
    assert plan.warnings == [
        "Interactions.Intent is a formula field, computed by Airtable: nothing can be written to it: left out of "
        "what chatledger writes",
        "Interactions.Response is a checkbox field, which cannot take text: left out of what chatledger writes",
        "Interactions.CreatedAt is a created time field, computed by Airtable: nothing can be written to it: left "
        "out of what chatledger writes",
    ]
    assert "Interactions.Status is a single line text field: written as text" in plan.notes
    assert "Conversations.MessageCount is a single line text field: a number is written as its text" in plan.notes
    assert plan.tables["conversations"].row(
        {"ConversationId": "c", "MessageCount": 12, "Tags": "vip, late", "Status": "closed"}
    ) == {"ConversationId": "c", "MessageCount": "12", "Tags": ["vip", "late"], "Status": "closed"}
    assert plan.tables["interactions"].row(
        {
            "InteractionId": "i",
            "ProcessingTime": 1500,
            "Intent": "x",
            "Response": "y",
            "CreatedAt": "2026-11-25T10:00:00Z",
        }
    ) == {"InteractionId": "i", "ProcessingTime": 1.5}
    assert plan.tables["interactions"].left_out == {
        "Intent": "is a formula field, computed by Airtable: nothing can be written to it",
        "Response": "is a checkbox field, which cannot take text",
        "CreatedAt": "is a created time field, computed by Airtable: nothing can be written to it",
    }


def test_missing_fields_are_left_out_and_a_renamed_twin_is_named_with_its_mapping():
    base = documented()
    interactions = base.table("Interactions")
    interactions.field("Content").name = "Message"
    interactions.remove_field("ProcessingTime")
    base.table("Conversations").field("CustomerName").name = "customer_name"
    plan = plan_base(schema(base), NAMES)
    assert plan.problems == []
    assert plan.warnings == [
        "Conversations.CustomerName is missing: left out of what chatledger writes; 'customer_name' looks like it "
        'renamed: map it with "Conversations.CustomerName" = "customer_name" under [airtable.fields]',
        "Interactions.Content is missing: left out of what chatledger writes; 'Message' looks like it renamed: map "
        'it with "Interactions.Content" = "Message" under [airtable.fields]',
        "Interactions.ProcessingTime is missing: left out of what chatledger writes (`chatledger airtable init` "
        "creates it)",
    ]
    assert [(m.name, m.twin) for m in plan.missing["interactions"]] == [
        ("Content", "Message"),
        ("ProcessingTime", None),
    ]
    mapped = BaseNames(
        NAMES, parse_field_mapping({"Interactions.Content": "Message", "Conversations.CustomerName": "customer_name"})
    )
    plan = plan_base(schema(base), mapped)
    assert plan.warnings == [
        "Interactions.ProcessingTime is missing: left out of what chatledger writes "
        "(`chatledger airtable init` creates it)"
    ]
    assert "Interactions.Content is written to Interactions.Message ([airtable.fields])" in plan.notes
    assert plan.tables["interactions"].row({"InteractionId": "i", "Content": "oi", "ProcessingTime": 3}) == {
        "InteractionId": "i",
        "Message": "oi",
    }
    assert mapped.logical("interactions", {"Message": "oi", "Other": 1, "InteractionId": "i"}) == {
        "InteractionId": "i",
        "Content": "oi",
    }


def test_a_twin_is_only_named_when_nothing_else_could_be_it():
    base = documented()
    interactions = base.table("Interactions")
    interactions.field("Content").name = "Body"
    interactions.add_field("Internal notes", "multilineText")
    plan = plan_base(schema(base), NAMES)
    assert [(m.name, m.twin) for m in plan.missing["interactions"]] == [("Content", None)]
    interactions.add_field("content text", "multilineText")  # a similar name wins over the others
    assert [(m.name, m.twin) for m in plan_base(schema(base), NAMES).missing["interactions"]] == [
        ("Content", "content text")
    ]
    other = documented()
    other.table("Interactions").field("Content").name = "Body"
    other.table("Interactions").remove_field("ErrorMessage")  # two long texts missing, one unexplained: whose?
    assert [(m.name, m.twin) for m in plan_base(schema(other), NAMES).missing["interactions"]] == [
        ("Content", None),
        ("ErrorMessage", None),
    ]
    other.table("Interactions").remove_field("Intent")  # Intent is single line text: Body is a long text's
    assert [(m.name, m.twin) for m in plan_base(schema(other), NAMES).missing["interactions"]] == [
        ("Content", None),
        ("Intent", None),
        ("ErrorMessage", None),
    ]


def test_a_missing_table_or_an_unusable_key_is_a_problem():
    base = documented()
    base.tables.remove(base.table("Escalations"))
    base.table("Interactions").field("InteractionId").name = "Id"
    base.table("Conversations").field("ConversationId").type = "phoneNumber"
    plan = plan_base(schema(base), NAMES)
    assert plan.problems == [
        "Conversations.ConversationId is a phone number field: the key chatledger upserts on must be single line text",
        "Interactions.InteractionId is missing: it is the key chatledger upserts on (single line text); 'Id' looks "
        'like it renamed: map it with "Interactions.InteractionId" = "Id" under [airtable.fields]',
        "table 'Escalations' (escalations) is missing",
    ]
    assert plan.tables == {} and plan.missing_tables == ["escalations"]


def test_without_the_schema_the_documented_base_is_assumed_and_said():
    plan = plan_base(None, BaseNames(NAMES, parse_field_mapping({"Interactions.Content": "Message"})))
    assert (plan.problems, plan.warnings) == ([], [SCOPE_WARNING])
    assert plan.notes == ["Interactions.Content is written to Interactions.Message ([airtable.fields])"]
    assert "schema.bases:read" in SCOPE_WARNING
    assert plan.tables["interactions"].row(
        {"InteractionId": "i", "Content": "oi", "Timestamp": "2026-11-25T10:00:00+00:00"}
    ) == {"InteractionId": "i", "Message": "oi", "Timestamp": "2026-11-25T10:00:00.000Z"}
    assert {kind: len(table.columns) for kind, table in plan.tables.items()} == {
        kind: len(specs) for kind, specs in TABLES.items()
    }


@pytest.mark.parametrize(
    "mapping, message",
    [
        ({"Interactions": "x"}, "a key is Table.Field"),
        ({"interactions.Content": "x"}, "a key is Table.Field"),
        ({"Interactions.content": "x"}, "Interactions has no field 'content'"),
        ({"Interactions.Content": ""}, "must not be empty"),
        (
            {"Interactions.Content": "Message", "Interactions.Response": "message"},
            "Interactions.Content and Interactions.Response would both be written to the field 'message'",
        ),
    ],
)
def test_a_mapping_that_cannot_be_meant_is_refused(mapping, message):
    with pytest.raises(ValueError, match=message):
        parse_field_mapping(mapping)


def test_each_field_type_reads_back_as_the_value_chatledger_wrote():
    base = documented("mixed")  # StartedAt / Timestamp with time, the other dates without
    conversations, interactions = base.table("Conversations"), base.table("Interactions")
    conversations.field("Tags").type, conversations.field("Tags").options = "multipleSelects", {"choices": []}
    conversations.field("MessageCount").type = "singleLineText"
    conversations.field("Status").type, conversations.field("Status").options = "multipleSelects", {"choices": []}
    interactions.field("ProcessingTime").type = "duration"
    interactions.field("Timestamp").type = "multilineText"
    plan = plan_base(schema(base), NAMES)
    ours = {
        "conversations": {
            "ConversationId": "c",
            "Tags": "vip, late",
            "MessageCount": 12,
            "Status": "closed",
            "StartedAt": "2026-11-25T23:30:00.000Z",
            "LastActivity": "2026-11-25T23:30:00.000Z",
            "CustomerName": "Ana",
        },
        "interactions": {
            "InteractionId": "i",
            "ProcessingTime": 350,
            "Timestamp": "2026-11-25T23:30:00.000Z",
            "CreatedAt": "2026-11-25T23:30:00.000Z",
        },
    }
    back = {kind: plan.tables[kind].values(plan.tables[kind].row(values)) for kind, values in ours.items()}
    assert back["conversations"] == {**ours["conversations"], "LastActivity": "2026-11-25"}  # the day only
    assert back["interactions"] == {**ours["interactions"], "CreatedAt": "2026-11-25"}
    assert type(back["interactions"]["ProcessingTime"]) is int  # milliseconds, from 0.35 s
    assert plan.tables["interactions"].values({"InteractionId": "i", "ProcessingTime": 1234.567}) == {
        "InteractionId": "i",
        "ProcessingTime": 1234567,
    }
    # what an operator typed that is not our form is left as it is, for the reader to judge
    for typed in ("a dozen", "nan", "1e400"):
        assert plan.tables["conversations"].values({"ConversationId": "c", "MessageCount": typed}) == {
            "ConversationId": "c",
            "MessageCount": typed,
        }
    # without the schema the documented base's forms apply: a number, the text, a date-time
    assumed = plan_base(None, NAMES).tables["interactions"]
    assert assumed.values({"InteractionId": "i", "ProcessingTime": 350, "Content": "oi"}) == {
        "InteractionId": "i",
        "ProcessingTime": 350,
        "Content": "oi",
    }


def test_a_field_left_out_of_the_writes_is_not_read_back_as_ours():
    base = documented()
    base.table("Interactions").field("Intent").type = "formula"
    base.table("Interactions").field("Intent").options = formula_options("'computed'")
    base.table("Conversations").remove_field("Sentiment")
    plan = plan_base(schema(base), NAMES)
    names = BaseNames(NAMES)
    cells = {"InteractionId": "i", "Intent": "computed", "Content": "oi"}
    assert read_back(plan, names, "interactions", cells) == {"InteractionId": "i", "Content": "oi"}
    assert read_back(None, names, "interactions", cells) == cells  # no plan: every cell as it is


def test_a_selection_on_a_field_the_base_does_not_hold_as_written_is_explained():
    base = documented()
    base.table("Interactions").remove_field("ConversationId")
    base.table("Conversations").field("CustomerPhone").type = "formula"
    base.table("Conversations").field("CustomerPhone").options = formula_options("'x'")
    plan = plan_base(schema(base), NAMES)
    names = BaseNames(NAMES)
    assert plan.unselectable(names, "interactions", "ConversationId") == "Interactions.ConversationId is missing"
    assert plan.unselectable(names, "conversations", "CustomerPhone").startswith(
        "Conversations.CustomerPhone is a formula field"
    )
    assert plan.unselectable(names, "escalations", "ConversationId") is None
    assert plan_base(None, names).unselectable(names, "interactions", "ConversationId") is None
    renamed = BaseNames(NAMES, parse_field_mapping({"Interactions.Timestamp": "When"}))
    assert (
        plan_base(schema(base), renamed).unselectable(renamed, "interactions", "Timestamp")
        == "Interactions.When (Interactions.Timestamp in [airtable.fields]) is missing"
    )


def test_base_names_are_the_same_when_tables_and_mapped_fields_are():
    mapped = BaseNames(NAMES, parse_field_mapping({"Interactions.Content": "Message"}))
    assert mapped.same(BaseNames(NAMES, parse_field_mapping({"Interactions.Content": "Message"})))
    assert not mapped.same(BaseNames(NAMES)) and not BaseNames(NAMES).same(mapped)
    assert BaseNames(NAMES).same(NAMES) and not BaseNames(NAMES).same({**NAMES, "escalations": "Tickets"})
