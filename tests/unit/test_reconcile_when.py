"""`reconcile --since WHEN`: an ISO 8601 date or date-time (no offset: UTC) or a duration back from now."""

from datetime import UTC, datetime, timedelta

import pytest

from daemon.params import BadParameter, reconcile_since

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2026-11-30", datetime(2026, 11, 30, tzinfo=UTC)),
        ("2026-11-30T08:00:00-03:00", datetime(2026, 11, 30, 11, 0, tzinfo=UTC)),
        ("2026-11-30T08:00", datetime(2026, 11, 30, 8, 0, tzinfo=UTC)),
        ("2026-11-30T08:00:00Z", datetime(2026, 11, 30, 8, 0, tzinfo=UTC)),
        ("90s", NOW - timedelta(seconds=90)),
        ("30m", NOW - timedelta(minutes=30)),
        ("2h", NOW - timedelta(hours=2)),
        ("7d", NOW - timedelta(days=7)),
        (" 2h ", NOW - timedelta(hours=2)),
    ],
)
def test_when_is_read(text, expected):
    assert reconcile_since(text, NOW) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "2h30m",
        "-2h",
        "0s",
        "2w",
        "h",
        "1.5h",
        "2026-13-01",
        "2026-12-04",
        "99999999d",
        "0001-01-01T00:00+05:00",
        "٣h",
    ],
)
def test_bad_when_is_refused_with_the_forms(text):
    with pytest.raises(BadParameter) as caught:
        reconcile_since(text, NOW)
    assert "--since" in str(caught.value)
