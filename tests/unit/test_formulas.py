"""Airtable formulas: every value is quoted by one function, so no value can change what a formula selects
(checked with the emulator's formula evaluator, the one the integration tests run against)."""

import pytest

from daemon.sinks.airtable_client import equals_formula, ids_formulas, phone_formula, since_formula
from daemon.testing.airtable.formula import evaluate, keeps, parse

HOSTILE = ["x' != 'y", 'x" != "y', "a\\", "a\\' , 'b", "'", "\\'", "} & {Other", "two\nlines", "ok"]


def selected(formula, records):
    node = parse(formula)
    return [record for record in records if keeps(evaluate(node, record))]


@pytest.mark.parametrize("value", HOSTILE)
def test_a_value_selects_exactly_itself(value):
    records = [{"ConversationId": v} for v in HOSTILE + ["x", "y", ""]] + [{"ConversationId": value + "x"}]
    assert selected(equals_formula("ConversationId", value), records) == [{"ConversationId": value}]
    [formula] = ids_formulas("ConversationId", [value, "y"])
    assert selected(formula, records) == [{"ConversationId": value}, {"ConversationId": "y"}]


def test_ids_are_chunked_and_each_chunk_quoted():
    ids = [f"id'{i}" for i in range(90)]
    formulas = ids_formulas("ConversationId", ids)
    assert len(formulas) == 3
    records = [{"ConversationId": i} for i in ids + ["other"]]
    assert sum(len(selected(f, records)) for f in formulas) == 90


def test_the_phone_formula_compares_digits_however_they_were_typed():
    records = [
        {"CustomerPhone": "+55 11 90000-0001"},
        {"CustomerPhone": 5511900000001},
        {"CustomerPhone": "5511900000002"},
        {},
    ]
    assert selected(phone_formula("CustomerPhone", "5511900000001"), records) == records[:2]


@pytest.mark.parametrize("phone", ["x' != 'y", "55' != '1", "", "+5511", "٥٥١١"])
def test_the_phone_formula_refuses_anything_but_digits(phone):
    with pytest.raises(ValueError):
        phone_formula("CustomerPhone", phone)


def test_since_is_a_date_or_nothing():
    records = [{"LastActivity": "2026-11-20T10:00:00.000Z"}, {"LastActivity": "2026-11-19T10:00:00.000Z"}]
    assert selected(since_formula("LastActivity", "2026-11-20T00:00:00.000Z"), records) == records[:1]
    with pytest.raises(ValueError):
        since_formula("LastActivity", "2026-11-20') , TRUE(), ('")
