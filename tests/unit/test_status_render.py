"""The readable status an operator reads at a glance."""

from daemon.status import render


def test_the_readable_status_lists_the_airtable_warnings():
    snapshot = {"sinks": {"airtable": {"state": "up", "pending": 0, "delivered": 3, "dead": 0, "tokens_left": 5,
                                       "warnings": ["Interactions.Content is missing: left out"]}}}
    assert "          warning: Interactions.Content is missing: left out" in render(snapshot).splitlines()
